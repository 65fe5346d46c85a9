"""The pg_auto_failover monitor as kura-hasync sees it: one connection that
LISTENs on the monitor's ``state`` channel (the monitor NOTIFYs there each time
it assigns a goal state or a keeper reports one, src/monitor/notifications.c)
and reads ``pgautofailover.node`` once per poll interval besides, so a missed
notification (a reconnection, a restart of the monitor) cannot leave a stale
state behind. The monitor counts as heard whenever a query or a notification
comes back; the core judges silence by that time alone, so a connection that
hangs on a cut network is treated like one that failed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import make_conninfo

log = logging.getLogger("kura.hasync")

CHANNEL = "state"
NODES_SQL = (
    "SELECT nodename, goalstate::text, reportedstate::text, health"
    " FROM pgautofailover.node WHERE formationid = %s"
)
# libpq settings that make a dead TCP link to the witness show up in seconds
# rather than the kernel's default two hours.
TCP_SETTINGS = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
}


@dataclass(frozen=True)
class NodeState:
    goal: str
    reported: str
    health: int  # the monitor's health check: 1 good, 0 bad, -1 unknown


class MonitorWatcher:
    def __init__(self, dsn: str, formation: str, node: str, poll_seconds: float,
                 wake: asyncio.Event) -> None:
        self.dsn = dsn
        self.formation = formation
        self.node = node
        self.poll_seconds = poll_seconds
        self.wake = wake
        self.nodes: dict[str, NodeState] = {}
        self.started = asyncio.get_running_loop().time()
        self.last_heard: float | None = None

    @property
    def own(self) -> NodeState | None:
        return self.nodes.get(self.node)

    def reachable(self, now: float) -> bool:
        """Heard within two poll intervals (and a second for the round trip)."""
        return self.last_heard is not None and now - self.last_heard <= 2 * self.poll_seconds + 1

    def silent_seconds(self, now: float) -> float:
        return now - (self.last_heard if self.last_heard is not None else self.started)

    def _heard(self) -> None:
        self.last_heard = asyncio.get_running_loop().time()

    def _set(self, name: str, state: NodeState) -> None:
        before = self.nodes.get(name)
        self.nodes[name] = state
        if before != state:
            log.info("monitor: %s goal=%s reported=%s health=%d%s", name, state.goal,
                     state.reported, state.health, " (this node)" if name == self.node else "")
            self.wake.set()

    def notified(self, payload: str) -> None:
        """One of the monitor's notifications, e.g. {"type": "state", "formation":
        "default", "groupId": 0, "nodeId": 1, "name": "node_1", "host": "...",
        "port": 5432, "reportedState": "primary", "goalState": "primary",
        "health":"good"}. Anything else on the channel is ignored."""
        try:
            event = json.loads(payload)
            if event.get("type") != "state" or event.get("formation") != self.formation:
                return
            health = {"good": 1, "bad": 0}.get(str(event.get("health")), -1)
            state = NodeState(str(event["goalState"]), str(event["reportedState"]), health)
            name = str(event["name"])
        except (ValueError, KeyError, AttributeError):
            log.warning("monitor: a notification on %r was not understood", CHANNEL)
            return
        self._set(name, state)

    async def poll(self, conn: psycopg.AsyncConnection[tuple[str, str, str, int]]) -> None:
        cur = await conn.execute(NODES_SQL, (self.formation,))
        rows = await cur.fetchall()
        self._heard()
        seen = set()
        for name, goal, reported, health in rows:
            seen.add(name)
            self._set(name, NodeState(goal, reported, health))
        for gone in set(self.nodes) - seen:
            log.warning("monitor: %s is no longer in formation %s", gone, self.formation)
            del self.nodes[gone]
            self.wake.set()

    async def run(self) -> None:
        """Forever: connect, LISTEN, poll, wait for notifications; reconnect on failure."""
        while True:
            try:
                await self._session()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("monitor unreachable: %s", str(exc).splitlines()[0] if str(exc)
                            else type(exc).__name__)
            self.wake.set()  # the core judges the silence
            await asyncio.sleep(1.0)

    async def _session(self) -> None:
        conn: psycopg.AsyncConnection[tuple[str, str, str, int]] = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(make_conninfo(self.dsn, **TCP_SETTINGS),
                                            autocommit=True),
            timeout=TCP_SETTINGS["connect_timeout"] + 2,
        )
        try:
            await asyncio.wait_for(conn.execute(f"LISTEN {CHANNEL}"), timeout=self.poll_seconds)
            while True:
                await asyncio.wait_for(self.poll(conn), timeout=self.poll_seconds + 1)
                async for notice in conn.notifies(timeout=self.poll_seconds):
                    self._heard()
                    self.notified(notice.payload)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)
