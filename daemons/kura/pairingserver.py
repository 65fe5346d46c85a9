"""The standby's end of the pairing's transport (``kura ha offer --serve``).

While a new standby waits to be paired it answers on one HTTPS port
(:data:`PORT`) with two things only:

- ``GET /kura-pairing/v1/offer``: its pending offer (public: name, address,
  nonce, expiry, public value; never the code or the scalar);
- ``POST /kura-pairing/v1/envelope``: the primary's envelope, opened and
  sealed exactly as ``kura ha accept`` does (:func:`kura.vault.pairing.accept`).

Nothing on this channel needs trusting: the offer is public, and the
envelope opens only for the standby that holds the code the DA typed on the
primary (kura.core.pairing). TLS here keeps the exchange private from
onlookers, with a certificate made for this one pairing; the primary does not
verify it, because the code, not the certificate, authenticates the standby.
The server stops once an envelope has opened, or when the offer expires or
has spent its attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import ssl
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from kura import tls
from kura.core import pairing as core_pairing
from kura.core.errors import BadRequest, KuraError, PairingOfferExpired
from kura.vault import pairing

log = logging.getLogger("kura.pairing")

PORT = 8444
OFFER_PATH = "/kura-pairing/v1/offer"
ENVELOPE_PATH = "/kura-pairing/v1/envelope"
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
MAX_BODY = 64 * 1024  # an envelope is a few kilobytes (with the formation's CA certificate)

Clock = Callable[[], datetime]


def endpoint(typed: str) -> tuple[str, int]:
    """A standby's pairing endpoint as typed or as its offer names it:
    ``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT`` (the port defaults to :data:`PORT`)."""
    text = typed.strip()
    host, port = text, PORT
    bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.%]+)\](?::(\d{1,5}))?", text)
    if bracketed:
        host, port = bracketed.group(1), int(bracketed.group(2) or PORT)
    elif text.count(":") == 1:
        host, _, digits = text.partition(":")
        port = int(digits) if digits.isdigit() else -1
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if not _HOST.fullmatch(host):
            port = -1
    if not 0 < port < 65536:
        raise BadRequest(en="Type the standby's IP address or host name (and :port if "
                            "it is not the pairing port).",
                         ja="待機系の IP アドレスまたはホスト名を入力してください"
                            "（ペアリング用ポート以外なら :ポート も）。")
    return host, port


def url(host: str, port: int, path: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}:{port}{path}"


def _error(exc: KuraError) -> web.Response:
    return web.json_response({"error": exc.to_json()}, status=exc.status)


class PairingServer:
    """The two endpoints above, for the offer in ``keys_dir``."""

    def __init__(self, keys_dir: Path, seal_mode: str | None = None, with_key: str = "auto",
                 clock: Clock | None = None) -> None:
        self.keys_dir = keys_dir
        self.seal_mode = seal_mode
        self.with_key = with_key
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.done = asyncio.Event()
        self.paired: core_pairing.PairingParams | None = None
        self._lock = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get(OFFER_PATH, self.offer)
        app.router.add_post(ENVELOPE_PATH, self.envelope)
        return app

    async def offer(self, request: web.Request) -> web.Response:
        pending = pairing.pending_offer(self.keys_dir, self.clock())
        if pending is None:
            self.done.set()
            return _error(PairingOfferExpired())
        return web.json_response(pending.offer.to_json())

    async def envelope(self, request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(BadRequest(en="The envelope is not JSON.",
                                     ja="封筒が JSON ではありません。"))
        async with self._lock:  # one envelope at a time: each spends an attempt
            try:
                params = pairing.accept(self.keys_dir, body, self.clock(),
                                        seal_mode=self.seal_mode, with_key=self.with_key)
            except KuraError as exc:
                log.warning("an envelope was refused: %s", exc.code)
                if pairing.pending_offer(self.keys_dir, self.clock()) is None:
                    self.done.set()  # expired or out of attempts: nothing left to serve
                return _error(exc)
        self.paired = params
        self.done.set()
        log.info("paired with %s", params.primary)
        return web.json_response({"paired": True, "standby_of": params.primary,
                                  "seal": self.seal_mode or params.seal_mode})


async def serve(server: PairingServer, host: str, port: int, names: list[str],
                expires: datetime, ready: Callable[[str], None] | None = None) -> bool:
    """Serve until paired or until the offer expires; True when paired.
    ``ready`` gets the certificate's fingerprint once the port listens."""
    with tempfile.TemporaryDirectory(prefix="kura-pairing-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        tls.make_self_signed(cert, key, names, days=1)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        runner = web.AppRunner(server.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=context).start()
            if ready is not None:
                ready(tls.fingerprint(cert))
            left = (expires - server.clock()).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.done.wait(), timeout=max(left, 0.0))
            await asyncio.sleep(0.2)  # let the last answer leave
        finally:
            await runner.cleanup()
    return server.paired is not None


def envelope_answer(status: int, text: str) -> dict[str, Any]:
    """The standby's answer to an envelope as the primary's console reads it:
    ``{"paired": True, ...}`` or ``{"error": {...}}``; anything else is an error."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and (body.get("paired") is True or "error" in body):
        return body
    return {"error": {"code": "bad_answer", "message": f"HTTP {status}"}}
