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
    """Heartbeats of one certificate passed on at one a ``gap`` seconds on
    average, with a burst of ``burst`` (a pull's heartbeat followed at once by
    the stream's, a reconnection): every one is a write in the vault, and a
    looping or hostile agent must not turn kura-policy into a way to flood
    the database. Agents send one every ``heartbeat_seconds`` (30), so an
    honest one never meets the limit (a refused report would be lost)."""

    def __init__(self, gap: float, burst: int = 5) -> None:
        self.gap = gap
        self.burst = burst
        self._credit: dict[str, tuple[float, float]] = {}  # serial -> (credit, when)

    def allow(self, serial: str, now: float) -> bool:
        credit, when = self._credit.get(serial, (float(self.burst), now))
        credit = min(float(self.burst), credit + (now - when) / self.gap)
        if credit < 1:
            self._credit[serial] = (credit, now)
            return False
        self._credit[serial] = (credit - 1, now)
        if len(self._credit) > 100_000:  # forget the long gone
            horizon = self.gap * self.burst
            self._credit = {k: v for k, v in self._credit.items() if now - v[1] < horizon}
        return True
