"""``kura-agent run``: the long-lived connection to kura-policy.

Theory of operation: the agent keeps one mTLS WebSocket open
(``/kura-agent/v1/stream``). The server sends the newest bundle at once and
every new one after; the agent sends a heartbeat with its report every
``heartbeat_seconds``. When the stream drops, the agent reconnects with
backoff (1 s doubling to 30 s) and meanwhile pulls ``/kura-agent/v1/bundle``
and posts its heartbeat every ``pull_seconds``. Whatever happens on the
network, the last good bundle stays enforced: nothing here ever removes
rules, it only offers new bundles to ``Enforcer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from kura.agent import posture, usb
from kura.agent.enforce import Enforcer
from kura.agent.enrol import pinned_context
from kura.agent.errors import AgentError
from kura.agent.state import State
from kura.core import bundle

log = logging.getLogger("kura-agent")
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
UPDATES_EVERY = 3600.0  # apt's simulation is slow: count pending updates hourly
DEFAULT_HEARTBEAT, DEFAULT_PULL = 30, 60


class Notifier:
    """systemd notifications (READY, WATCHDOG): through sdnotify when it is
    installed (Kura's own dependency, not the agent's), else the same one
    datagram to $NOTIFY_SOCKET from the standard library; silent outside systemd."""

    def __init__(self) -> None:
        self._n: Any = None
        try:
            import sdnotify  # optional on endpoints
            self._n = sdnotify.SystemdNotifier()
        except ImportError:
            pass

    def send(self, state: str) -> None:
        if self._n is not None:
            self._n.notify(state)
            return
        address = os.environ.get("NOTIFY_SOCKET", "")
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        with contextlib.suppress(OSError), \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)


class Agent:
    """One enrolled agent's connection: the stream, the pull, the reports."""

    def __init__(self, state: State, enforcer: Enforcer) -> None:
        self.state = state
        self.enforcer = enforcer
        self.identity = state.identity()
        self.connected = asyncio.Event()
        self.usb_events: list[dict[str, Any]] = []
        self._updates: tuple[float, int | None] = (0.0, None)
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- what the agent knows -------------------------------------------------
    def _setting(self, name: str, default: int) -> int:
        current = self.enforcer.current()
        value = current.body.get(name) if current else None
        return value if isinstance(value, int) and value > 0 else default

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = pinned_context(self.state.ca.read_text())
            # cert.pem holds the leaf and the intermediate, so the server can
            # build the chain to the root it trusts.
            context.load_cert_chain(self.state.cert, self.state.key)
        except (OSError, ssl.SSLError) as exc:
            raise AgentError(f"the enrolment files in {self.state.root} are unusable ({exc}); "
                             "enrol again") from exc
        return context

    def _usb_event(self, action: str, properties: dict[str, str]) -> None:
        current = self.enforcer.current()
        blocked = bool(current and current.body.get("usb_mass_storage") == "block"
                       and self.enforcer.usbguard == "enforced")
        entry = usb.event(action, properties, blocked)
        if self._loop is not None:  # called from pyudev's thread
            self._loop.call_soon_threadsafe(self.usb_events.append, entry)

    async def report(self) -> dict[str, Any]:
        checked, count = self._updates
        if time.monotonic() - checked > UPDATES_EVERY or checked == 0.0:
            count = await asyncio.to_thread(posture.security_updates)
            self._updates = (time.monotonic(), count)
        current = self.enforcer.current()
        events, self.usb_events = self.usb_events, []
        return {
            "policy_serial": current.serial if current else None,
            "os_release": posture.os_release(),
            "security_updates": count,
            "disk_encrypted": posture.disk_encrypted(),
            "usb_events": events,
            "refused": self.enforcer.take_refused(),
            "usbguard": self.enforcer.usbguard,
        }

    def unsent(self, report: dict[str, Any]) -> None:
        """A report that did not get through: its events and refusals go
        into the next one instead of being lost."""
        self.usb_events[:0] = report["usb_events"]
        self.enforcer.refused[:0] = report["refused"]

    def _touch(self) -> None:
        self.state.save_contact(datetime.now(UTC).isoformat(timespec="seconds"))

    def offer(self, envelope: Any) -> None:
        try:
            verdict = self.enforcer.offer(envelope)
        except bundle.Refused:
            return  # recorded by the enforcer for the next report
        except AgentError as exc:
            log.error("bundle not applied, the last good one stays: %s", exc)
            return
        if verdict == bundle.ACCEPT:
            current = self.enforcer.current()
            log.info("enforcing bundle %s", current.serial if current else "?")

    # --- the wire ---------------------------------------------------------------
    async def stream(self, session: aiohttp.ClientSession, context: ssl.SSLContext) -> None:
        url = f"{self.identity.server}/kura-agent/v1/stream"
        async with session.ws_connect(url, ssl=context, heartbeat=20.0) as ws:
            self.connected.set()
            log.info("connected to %s", self.identity.server)
            beats = asyncio.create_task(self._heartbeats(ws))
            try:
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    data = json.loads(message.data)
                    self._touch()
                    if isinstance(data, dict) and data.get("type") == "bundle":
                        self.offer(data.get("bundle"))
            finally:
                self.connected.clear()
                beats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beats

    async def _heartbeats(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            report = await self.report()
            try:
                await ws.send_json({"type": "heartbeat", "report": report})
            except (aiohttp.ClientError, OSError, RuntimeError):
                self.unsent(report)
                raise
            await asyncio.sleep(self._setting("heartbeat_seconds", DEFAULT_HEARTBEAT))

    async def pull(self, session: aiohttp.ClientSession, context: ssl.SSLContext) -> None:
        """The fallback: the newest bundle and a heartbeat over plain HTTPS."""
        base = f"{self.identity.server}/kura-agent/v1"
        async with session.get(f"{base}/bundle", ssl=context) as answer:
            answer.raise_for_status()
            envelope = await answer.json()
        self._touch()
        self.offer(envelope)
        report = await self.report()
        try:
            async with session.post(f"{base}/heartbeat", json={"report": report},
                                    ssl=context) as answer:
                answer.raise_for_status()
        except BaseException:
            self.unsent(report)
            raise

    async def _pull_while_away(self, session: aiohttp.ClientSession,
                               context: ssl.SSLContext) -> None:
        while True:
            if not self.connected.is_set():
                try:
                    await self.pull(session, context)
                except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                    log.info("pull failed (the last good bundle stays): %s", exc)
            await asyncio.sleep(self._setting("pull_seconds", DEFAULT_PULL))

    async def _watchdog(self, notifier: Notifier) -> None:
        while True:
            notifier.send("WATCHDOG=1")
            await asyncio.sleep(10)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        notifier = Notifier()
        observer = usb.watch(self._usb_event)
        context = self.ssl_context()
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            background = [asyncio.create_task(self._pull_while_away(session, context)),
                          asyncio.create_task(self._watchdog(notifier))]
            notifier.send("READY=1")
            backoff = BACKOFF_FIRST
            try:
                while True:
                    began = time.monotonic()
                    try:
                        await self.stream(session, context)
                    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                        log.info("stream down (%s); retrying in %.0f s", exc, backoff)
                    if time.monotonic() - began > BACKOFF_MAX:
                        backoff = BACKOFF_FIRST  # it was up for a while: start over
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                for task in background:
                    task.cancel()
                if observer is not None:
                    observer.stop()


def main(state: State, enforcer: Enforcer) -> int:
    agent = Agent(state, enforcer)
    agent.ssl_context()  # unusable enrolment files: one line and exit 1, not a loop
    try:
        # Enforce what is on disk first: the appliance may be away for long.
        enforcer.restore()
    except AgentError as exc:
        log.info("nothing restored before connecting: %s", exc)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(agent.run())
    return 0


