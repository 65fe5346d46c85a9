"""Who an agent is: its client certificate's serial, checked by the vault.

Every request that carries a certificate is checked (``agents.check``). The
answer is kept for at most ``ttl`` seconds so a burst of requests costs one
call, and dropped at once when the vault's watch reports the serial revoked:
a revoked agent is refused within a second either way. Pure: the clock is
passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Agent:
    """An enrolled agent as the vault last confirmed it."""

    serial: str  # the client certificate's serial, lower-case hex
    agent_id: str
    profile: str


def serial_hex(serial: int) -> str:
    return format(serial, "x")


class CheckCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._seen: dict[str, tuple[Agent, float]] = {}
        self.revoked: set[str] = set()

    def get(self, serial: str, now: float) -> Agent | None:
        """The cached answer, if it is young enough; a revoked serial never has one."""
        found = self._seen.get(serial)
        if found is None or serial in self.revoked:
            return None
        agent, when = found
        if now - when > self.ttl:
            del self._seen[serial]
            return None
        return agent

    def put(self, agent: Agent, now: float) -> None:
        if agent.serial not in self.revoked:
            self._seen[agent.serial] = (agent, now)

    def revoke(self, serials: Iterable[str]) -> set[str]:
        """Forget these serials and refuse them from now on; returns the new ones."""
        new = {s for s in serials if s not in self.revoked}
        self.revoked |= new
        for serial in new:
            self._seen.pop(serial, None)
        return new

    def is_revoked(self, serial: str) -> bool:
        return serial in self.revoked


class HeartbeatPace:
    """At most one heartbeat a ``gap`` seconds from each certificate: every one
    is a write in the vault, and a looping or hostile agent must not turn
    kura-policy into a way to flood the database. Agents send one every
    ``heartbeat_seconds`` (30), so an honest one never meets the limit."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self._last: dict[str, float] = {}

    def allow(self, serial: str, now: float) -> bool:
        last = self._last.get(serial)
        if last is not None and now - last < self.gap:
            return False
        self._last[serial] = now
        if len(self._last) > 100_000:  # forget the long gone
            self._last = {s: t for s, t in self._last.items() if now - t < self.gap}
        return True
