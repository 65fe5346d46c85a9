"""Client certificates: which enrolled clerk PC a browser is on.

kura-console asks every browser for a client certificate (optional at the
TLS layer: a browser without one works as before) and verifies it against
the agent CA (docs/agents.md). That CA lives in the vault, so it is known
only once the vault is unsealed: until then the context trusts nothing and
no certificate can be verified (a browser that presents one anyway fails
the handshake; browsers present one only when asked for a CA they hold).
A background task asks the vault (``agents.ca``, public) until it answers
and loads the CA into the live context; new handshakes use it at once.

The verified certificate's serial (lower-case hex) goes to the vault with
every call as ``terminal``; the vault decides what it means
(kura.core.terminals). Never the system's CAs: a certificate from any
other issuer must not name a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from kura.console.vaultclient import VaultClient
from kura.core import terminals
from kura.core.errors import KuraError

log = logging.getLogger("kura.console.clientcert")

RETRY_SECONDS = 5.0


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The console's TLS context: its own certificate, and a request for a
    client certificate that nothing can satisfy until the agent CA is loaded
    (``load_agent_ca``). Built from scratch, not ``create_default_context``:
    that would trust the system's CAs for clients too."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def terminal_serial(request: web.Request) -> str:
    """The serial of the certificate the browser presented and the context
    verified (lower-case hex, as the vault stores it), or "" (none, or no TLS)."""
    transport = request.transport
    if transport is None:
        return ""
    peer: Any = transport.get_extra_info("peercert")
    if not isinstance(peer, dict):
        return ""
    return terminals.normalise_serial(str(peer.get("serialNumber", "")))


def load_agent_ca(context: ssl.SSLContext, ca_pem: str) -> None:
    context.load_verify_locations(cadata=ca_pem)


def trust_agent_ca(
    context: ssl.SSLContext, vault: Callable[[], VaultClient], retry: float = RETRY_SECONDS
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context for the application: ask the vault for the agent CA
    in the background until it answers, then load it into ``context``."""

    async def fetch() -> None:
        log.info(
            "client certificates cannot be verified until the agent CA is known"
            " (the vault must be unsealed): browsers sign in without one meanwhile"
        )
        while True:
            try:
                found = await vault().call("agents.ca")
                load_agent_ca(context, str(found["ca_pem"]))
            except (KuraError, KeyError, ValueError, ssl.SSLError) as exc:
                log.debug("agent CA not available yet: %s", exc)
                await asyncio.sleep(retry)
                continue
            log.info("agent CA loaded: clerk PCs' client certificates are verified now")
            return

    async def owned(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(fetch())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return owned
