"""kura-policy's HTTPS and WebSocket side (docs/agents.md, "The wire").

Theory of operation: the ``Relay`` keeps what kura-policy knows between the
vault's answers — the agents connected on the stream (by profile and by
certificate serial), the newest envelope of each profile and the certificate
checks of the last second. One background task (``follow_vault``) long-polls
the vault's ``agents.watch``; a new serial for a profile fetches that bundle
once and sends it to every connected agent of the profile, a revoked serial
closes that agent's stream at once (close code 4003). When the vault is
sealed or away, the streams stay open, the agents keep enforcing what they
have, and the task tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from kura.config import Config
from kura.console.clientcert import terminal_serial
from kura.console.vaultclient import VaultClient, VaultError
from kura.core.errors import KuraError, NotFound, PayloadTooLarge, PermissionDenied
from kura.policy import wire
from kura.policy.identity import Agent, CheckCache, HeartbeatPace

log = logging.getLogger("kura.policy")

PREFIX = "/kura-agent/v1"
REVOKED_CLOSE = 4003
# An agent's stream: aiohttp pings it, so a vanished endpoint is noticed.
PING_SECONDS = 30.0
# Heartbeats of one agent passed on: one a second on average, a burst of five
# (they come every 30 s).
HEARTBEAT_GAP = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CertificateRequired(PermissionDenied):
    """A route for enrolled agents was called without a client certificate."""

    code = "certificate_required"
    status = 403
    ja = "登録済みエージェントのクライアント証明書が必要です。"
    en = "An enrolled agent's client certificate is required."


class TooManyHeartbeats(KuraError):
    """An agent sent heartbeats faster than kura-policy passes them on."""

    code = "too_many_heartbeats"
    status = 429
    ja = "ハートビートの間隔が短すぎます。"
    en = "Heartbeats come too often; about one a second is passed on."


class AgentRevoked(PermissionDenied):
    """The certificate was revoked; kura-policy knows without asking the vault."""

    code = "agent_revoked"
    status = 403
    ja = "このエージェントの証明書は失効しています。"
    en = "This agent's certificate has been revoked."


@dataclass(eq=False)
class Stream:
    """One agent's open WebSocket and the newest serial it was sent."""

    agent: Agent
    ws: web.WebSocketResponse
    sent: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The close the relay started (a revocation); the handler waits for it
    # before it returns, so the 4003 frame is written before the connection ends.
    closing: asyncio.Task[bool] | None = None

    def close_revoked(self) -> None:
        if self.closing is None:
            self.closing = asyncio.get_running_loop().create_task(
                self.ws.close(code=REVOKED_CLOSE, message=b"revoked"))

    async def offer(self, serial: int, envelope: dict[str, Any]) -> None:
        """Send a bundle unless this agent already has it or a newer one (a
        push and the first bundle may race; an agent would refuse the older)."""
        async with self.lock:
            if serial <= self.sent or self.ws.closed or self.closing is not None:
                return
            self.sent = serial
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_json(wire.bundle_message(envelope))


class Relay:
    def __init__(self, vault: VaultClient, check_seconds: float, retry_seconds: float,
                 clock: Callable[[], float] = time.monotonic,
                 watch_vault: VaultClient | None = None) -> None:
        self.vault = vault
        # The watch holds its connection up to 25 s: its own, so that it
        # never waits behind the agents' calls nor they behind it.
        self.watch_vault = watch_vault or vault
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.checks = CheckCache(check_seconds)
        self.pace = HeartbeatPace(HEARTBEAT_GAP)
        self.by_profile: dict[str, set[Stream]] = {}
        self.by_serial: dict[str, set[Stream]] = {}
        self.bundles: dict[str, tuple[int, dict[str, Any]]] = {}
        self._fetching: dict[str, asyncio.Lock] = {}
        self.ca: dict[str, Any] = {}
        self.vault_ok = True

    # --- who is calling ---------------------------------------------------------

    async def identify(self, request: web.Request) -> Agent:
        """The agent behind the request's client certificate, checked by the vault
        (or by a check of the last second); refused if none, unknown or revoked."""
        # The verified client certificate's serial, as the console reads a terminal's.
        serial = terminal_serial(request)
        if not serial:
            raise CertificateRequired()
        if self.checks.is_revoked(serial):
            raise AgentRevoked()
        cached = self.checks.get(serial, self.clock())
        if cached is not None:
            return cached
        try:
            result = await self.vault.call("agents.check", {"serial": serial},
                                           client=request.remote or "")
        except VaultError as exc:
            if exc.vault_code == "agent_revoked":
                self.revoke([serial])
            raise
        agent = Agent(serial=serial, agent_id=str(result["agent_id"]),
                      profile=str(result["profile"]))
        self.checks.put(agent, self.clock())
        return agent

    # --- bundles -------------------------------------------------------------------

    async def newest(self, profile: str, at_least: int = 0) -> tuple[int, dict[str, Any]]:
        """The newest envelope of ``profile``: the one kept, or fetched once
        from the vault however many ask at the same moment."""
        lock = self._fetching.setdefault(profile, asyncio.Lock())
        async with lock:
            kept = self.bundles.get(profile)
            if kept is not None and kept[0] >= max(at_least, 1):
                return kept
            result = await self.vault.call("agents.bundle", {"profile": profile})
            fetched = (int(result["serial"]), dict(result["envelope"]))
            if kept is None or fetched[0] > kept[0]:
                self.bundles[profile] = fetched
            return self.bundles[profile]

    async def publish(self, profile: str, serial: int) -> None:
        """A new bundle for ``profile``: fetch it once, send it to its agents."""
        newest, envelope = await self.newest(profile, at_least=serial)
        streams = list(self.by_profile.get(profile, ()))
        await asyncio.gather(*(s.offer(newest, envelope) for s in streams))
        if streams:
            log.info("bundle %d of %s sent to %d agent(s)", newest, profile, len(streams))

    # --- streams ---------------------------------------------------------------------

    def attach(self, stream: Stream) -> None:
        self.by_profile.setdefault(stream.agent.profile, set()).add(stream)
        self.by_serial.setdefault(stream.agent.serial, set()).add(stream)

    def detach(self, stream: Stream) -> None:
        for index, key in ((self.by_profile, stream.agent.profile),
                           (self.by_serial, stream.agent.serial)):
            found = index.get(key)
            if found is not None:
                found.discard(stream)
                if not found:
                    del index[key]

    def revoke(self, serials: list[str]) -> None:
        """Refuse these certificates from now on and close their streams at once."""
        for serial in self.checks.revoke(serials):
            for stream in list(self.by_serial.get(serial, ())):
                log.info("agent %s revoked: closing its stream", stream.agent.agent_id)
                stream.close_revoked()

    def connected(self) -> int:
        return sum(len(s) for s in self.by_profile.values())

    # --- the vault's watch -------------------------------------------------------------

    async def follow_vault(self) -> None:
        """Long-poll ``agents.watch`` for ever. After any failure (the vault
        restarted, sealed, away) start again from generation 0, which answers
        at once with the whole state."""
        after = 0
        while True:
            try:
                result = await self.watch_vault.call("agents.watch", {"after": after})
                after = int(result["generation"])
                self.revoke([str(s) for s in result.get("revoked", [])])
                for profile, serial in dict(result.get("serials", {})).items():
                    kept = self.bundles.get(str(profile))
                    if int(serial) > 0 and (kept is None or int(serial) > kept[0]):
                        await self.publish(str(profile), int(serial))
                if not self.vault_ok:
                    log.info("the vault answers again")
                    self.vault_ok = True
            except asyncio.CancelledError:
                raise
            except (KuraError, OSError, ValueError, KeyError, TypeError) as exc:
                if self.vault_ok:
                    log.warning("the vault's watch failed (%s); agents keep what they have, "
                                "retrying every %g s", getattr(exc, "message_en", exc),
                                self.retry_seconds)
                    self.vault_ok = False
                after = 0
                await asyncio.sleep(self.retry_seconds)


RELAY = web.AppKey("relay", Relay)
LIMIT = web.AppKey("max_body_bytes", int)


# --- the routes -------------------------------------------------------------------------


async def ca(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    if not relay.ca:
        relay.ca = await relay.vault.call("agents.ca", {})
    return web.Response(text=str(relay.ca["ca_pem"]), content_type="application/x-pem-file")


async def _body(request: web.Request) -> bytes:
    if (request.content_length or 0) > request.app[LIMIT]:
        raise PayloadTooLarge()
    return await request.read()


async def enrol(request: web.Request) -> web.Response:
    enrolment = wire.enrolment(await _body(request))
    result = await request.app[RELAY].vault.call(
        "agents.enrol",
        {"token": enrolment.token, "csr_pem": enrolment.csr, "hostname": enrolment.hostname,
         # The address the connection came from, never one the agent claims.
         "address": request.remote or ""},
        client=request.remote or "",
    )
    return web.json_response(result)


async def bundle(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    agent = await relay.identify(request)
    _, envelope = await relay.newest(agent.profile)
    return web.json_response(envelope)


async def _heartbeat(relay: Relay, agent: Agent, address: str,
                     heartbeat: wire.Heartbeat) -> dict[str, Any]:
    if not relay.pace.allow(agent.serial, relay.clock()):
        raise TooManyHeartbeats()
    try:
        result = await relay.vault.call(
            "agents.heartbeat",
            {"serial": agent.serial, "address": address, "report": heartbeat.report},
            client=address,
        )
    except VaultError as exc:
        if exc.vault_code == "agent_revoked":
            relay.revoke([agent.serial])
        raise
    return wire.ack_message(int(result["newest_serial"]))


async def heartbeat(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    agent = await relay.identify(request)
    message = wire.heartbeat_body(await _body(request))
    return web.json_response(await _heartbeat(relay, agent, request.remote or "", message))


async def stream(request: web.Request) -> web.WebSocketResponse:
    relay = request.app[RELAY]
    agent = await relay.identify(request)
    ws = web.WebSocketResponse(heartbeat=PING_SECONDS, max_msg_size=request.app[LIMIT])
    await ws.prepare(request)
    current = Stream(agent, ws)
    relay.attach(current)
    try:
        try:
            await current.offer(*await relay.newest(agent.profile))
        except VaultError as exc:
            if exc.vault_status != 404:  # 404: no bundle yet; the watch sends the first
                await ws.send_json(wire.error_message(exc.message_en))
        except KuraError as exc:  # the vault is away: the watch sends it later
            await ws.send_json(wire.error_message(exc.message_en))
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                break
            if message.type != WSMsgType.TEXT:
                answer = wire.error_message("only text (JSON) messages are defined")
            else:
                try:
                    parsed = wire.stream_message(message.data)
                    answer = await _heartbeat(relay, agent, request.remote or "", parsed)
                except KuraError as exc:
                    answer = wire.error_message(exc.message_en)
            if ws.closed or current.closing is not None or relay.checks.is_revoked(agent.serial):
                break
            try:
                await ws.send_json(answer)
            except ConnectionError:
                break
    finally:
        relay.detach(current)
        if relay.checks.is_revoked(agent.serial):
            current.close_revoked()
        if current.closing is not None:
            await current.closing
    return ws


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Domain errors to HTTP at the edge, as JSON ``{code, message, message_en}``."""
    try:
        return await handler(request)
    except KuraError as exc:
        return web.json_response(exc.to_json(), status=exc_status(exc))
    except web.HTTPRequestEntityTooLarge:
        return web.json_response(PayloadTooLarge().to_json(), status=413)
    except web.HTTPNotFound:
        error = NotFound("no such route", "そのような経路はありません。")
        return web.json_response(error.to_json(), status=404)


def exc_status(exc: KuraError) -> int:
    return exc.http_status if isinstance(exc, VaultError) else exc.status


def init_app(config: Config, ca_answer: dict[str, Any] | None = None,
             vault: VaultClient | None = None) -> web.Application:
    """The application; ``ca_answer`` is the vault's ``agents.ca`` from start-up."""
    limit = config.policy.max_body_bytes
    app = web.Application(middlewares=[errors], client_max_size=limit)
    app[LIMIT] = limit

    async def relay_and_watch(app: web.Application) -> AsyncIterator[None]:
        client = vault or VaultClient(config.vault.socket, config.policy.vault_connections)
        watcher = vault or VaultClient(config.vault.socket, 1)
        relay = Relay(client, config.policy.check_seconds, config.policy.retry_seconds,
                      watch_vault=watcher)
        relay.ca = dict(ca_answer or {})
        app[RELAY] = relay
        watch = asyncio.create_task(relay.follow_vault())
        yield
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await client.close()
        await watcher.close()

    async def close_streams(app: web.Application) -> None:
        """On SIGTERM, before the server waits for its handlers: an open stream
        would otherwise hold the stop for aiohttp's whole shutdown timeout.
        Agents reconnect (or pull) by themselves."""
        relay = app[RELAY]
        streams = [s for group in relay.by_profile.values() for s in group]
        await asyncio.gather(*(s.ws.close(code=WSCloseCode.GOING_AWAY,
                                          message=b"kura-policy stops") for s in streams),
                             return_exceptions=True)

    app.cleanup_ctx.append(relay_and_watch)
    app.on_shutdown.append(close_streams)
    app.router.add_get(f"{PREFIX}/ca", ca)
    app.router.add_post(f"{PREFIX}/enrol", enrol)
    app.router.add_get(f"{PREFIX}/stream", stream)
    app.router.add_get(f"{PREFIX}/bundle", bundle)
    app.router.add_post(f"{PREFIX}/heartbeat", heartbeat)
    return app
