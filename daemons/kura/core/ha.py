"""The HA node's role life: what kura-hasync decides from what it observes.

Theory of operation. pg_auto_failover decides which data node is primary: its
monitor (on the witness) assigns each node a goal state and each node's keeper
reports the state it has reached. kura-hasync never decides that itself; it
only follows, and owns the one thing pg_auto_failover has no hook for, the
floating address (VIP). Every second, and at once on each of the monitor's
``state`` notifications, the shell gathers an ``Observation`` and ``step``
returns the node's new ``Decision`` and the ``Action``s to carry out, in order.

The rules, as data below:

* ``STATES`` says, for each of pg_auto_failover 2.2's 21 replication states,
  whether a node in it takes writes, which role it means for Kura, and whether
  the monitor could promote the peer while this node sits in it (then an
  isolated node must fence itself).
* ``RULES`` is the decision table, read top to bottom, first match wins. The
  VIP is held only when the monitor has both assigned a writable state and
  seen the keeper reach one, AND the local PostgreSQL is out of recovery.
* Fencing mirrors the keeper's own ``network_partition_timeout``
  (pg_autoctl's service_keeper.c ``is_network_healthy``): a primary that has
  heard neither the monitor for ``fence_seconds`` nor has a standby streaming
  from it must assume the others are failing over without it, so it drops the
  VIP. Losing only the witness while the standby still streams is not a
  partition: the VIP stays. In ``single`` and ``wait_primary`` there is no
  standby the monitor could promote (it only promotes a node that was a
  synchronous ``secondary``), so, like the keeper, the node goes on alone.
* Once fenced, a node stays fenced until the monitor is heard again: a
  standby reappearing on a fenced node proves nothing about what the monitor
  decided meanwhile.

Actions come out in a fixed order: dropping the VIP is always first, so a node
that stops being primary gives the address up before it does anything else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class Role(enum.StrEnum):
    """What this node is, as Kura shows it (console, vault, health page)."""

    SINGLE = "single"  # the only data node of the formation, writable
    PRIMARY = "primary"  # writable, a synchronous standby follows
    PRIMARY_DEGRADED = "primary-degraded"  # writable alone: the standby is down (loudly)
    STANDBY = "standby"  # follows the primary (incl. being promoted, not yet writable)
    FENCED = "fenced"  # cut off from the monitor and the standby: VIP dropped
    DEMOTED = "demoted"  # demoted or rejoining as a standby (rewind, base backup)
    MAINTENANCE = "maintenance"  # put in maintenance by an operator
    UNKNOWN = "unknown"  # not (yet) known to the monitor, or facts disagree


class Monitor(enum.StrEnum):
    """The monitor as this node sees it."""

    UP = "up"  # heard within the last poll
    SILENT = "silent"  # not heard, for less than fence_seconds
    LOST = "lost"  # not heard for fence_seconds or more


class LocalPg(enum.StrEnum):
    """The local PostgreSQL as this node sees it."""

    WRITABLE = "writable"  # answers, pg_is_in_recovery() is false
    RECOVERY = "recovery"  # answers, in recovery (a standby)
    DOWN = "down"  # does not answer


@dataclass(frozen=True)
class StateRow:
    writable: bool  # PostgreSQL takes writes in this state
    role: Role  # what the state means for Kura
    fence_on_partition: bool  # the monitor may promote the peer: fence when isolated


# pg_auto_failover 2.2's replication states (src/monitor/replication_state.c).
# "writable" follows pg_autoctl's own get_coordinator() (single, wait_primary,
# primary) plus the two primary-side states that keep taking writes while a
# standby is added or settings change; stop_replication is promoted but holds
# writes back until the old primary is known demoted, so it is not writable.
STATES: Final[dict[str, StateRow]] = {
    #                      writable  role                     fence_on_partition
    "single": StateRow(True, Role.SINGLE, False),
    "wait_primary": StateRow(True, Role.PRIMARY_DEGRADED, False),
    "primary": StateRow(True, Role.PRIMARY, True),
    "join_primary": StateRow(True, Role.PRIMARY, True),
    "apply_settings": StateRow(True, Role.PRIMARY, True),
    "draining": StateRow(False, Role.DEMOTED, False),
    "demote_timeout": StateRow(False, Role.DEMOTED, False),
    "demoted": StateRow(False, Role.DEMOTED, False),
    "prepare_maintenance": StateRow(False, Role.DEMOTED, False),
    "catchingup": StateRow(False, Role.DEMOTED, False),
    "wait_standby": StateRow(False, Role.DEMOTED, False),
    "secondary": StateRow(False, Role.STANDBY, False),
    "prepare_promotion": StateRow(False, Role.STANDBY, False),
    "stop_replication": StateRow(False, Role.STANDBY, False),
    "report_lsn": StateRow(False, Role.STANDBY, False),
    "fast_forward": StateRow(False, Role.STANDBY, False),
    "join_secondary": StateRow(False, Role.STANDBY, False),
    "wait_maintenance": StateRow(False, Role.MAINTENANCE, False),
    "maintenance": StateRow(False, Role.MAINTENANCE, False),
    "init": StateRow(False, Role.UNKNOWN, False),
    "dropped": StateRow(False, Role.UNKNOWN, False),
}

_UNKNOWN_STATE: Final = StateRow(False, Role.UNKNOWN, False)



@dataclass(frozen=True)
class Observation:
    """What the shell saw, at one instant."""

    goal: str | None  # the monitor's assigned state for this node (None: not known)
    reported: str | None  # the state the monitor last had from this node's keeper
    monitor_reachable: bool
    monitor_silent_seconds: float  # since the monitor last answered (0 when reachable)
    local: LocalPg
    standby_streaming: bool  # pg_stat_replication has a streaming standby
    sync_standby: bool  # ... and it is synchronous (sync or quorum)


@dataclass(frozen=True)
class Facts:
    """The observation reduced to what the decision table reads."""

    was_fenced: bool
    monitor: Monitor
    writer: bool  # goal and reported both writable states
    fence_on_partition: bool  # the last known state is one the peer could be promoted from
    streaming: bool
    local: LocalPg


class Vip(enum.Enum):
    HOLD = "hold"
    DROP = "drop"


# Role columns: a Role, or STATE for "the role the monitor's states mean".
STATE: Final = "state"

ANY: Final = None


@dataclass(frozen=True)
class Rule:
    name: str
    was_fenced: bool | None
    monitor: frozenset[Monitor] | None
    writer: bool | None
    fence_on_partition: bool | None
    streaming: bool | None
    local: LocalPg | None
    vip: Vip
    role: Role | str

    def matches(self, f: Facts) -> bool:
        return (
            (self.was_fenced is None or self.was_fenced == f.was_fenced)
            and (self.monitor is None or f.monitor in self.monitor)
            and (self.writer is None or self.writer == f.writer)
            and (self.fence_on_partition is None or self.fence_on_partition == f.fence_on_partition)
            and (self.streaming is None or self.streaming == f.streaming)
            and (self.local is None or self.local == f.local)
        )


_NOT_UP: Final = frozenset({Monitor.SILENT, Monitor.LOST})
_LOST: Final = frozenset({Monitor.LOST})
_W, _R, _D = LocalPg.WRITABLE, LocalPg.RECOVERY, LocalPg.DOWN
_HOLD, _DROP = Vip.HOLD, Vip.DROP

# The decision table: first match wins; the last row matches everything.
RULES: Final[tuple[Rule, ...]] = (
    #    name                   fenced  monitor  writer fence  stream local vip    role
    Rule("stay-fenced",         True,   _NOT_UP, ANY,   ANY,   ANY,   ANY,  _DROP, Role.FENCED),
    Rule("fence",               ANY,    _LOST,   True,  True,  False, ANY,  _DROP, Role.FENCED),
    Rule("writable-primary",    ANY,    ANY,     True,  ANY,   ANY,   _W,   _HOLD, STATE),
    Rule("primary-in-recovery", ANY,    ANY,     True,  ANY,   ANY,   _R,   _DROP, Role.UNKNOWN),
    Rule("primary-pg-down",     ANY,    ANY,     True,  ANY,   ANY,   _D,   _DROP, Role.UNKNOWN),
    Rule("not-primary",         ANY,    ANY,     False, ANY,   ANY,   ANY,  _DROP, STATE),
)


def state_row(state: str | None) -> StateRow:
    return STATES.get(state, _UNKNOWN_STATE) if state is not None else _UNKNOWN_STATE


def monitor_status(obs: Observation, fence_seconds: float) -> Monitor:
    if obs.monitor_reachable:
        return Monitor.UP
    return Monitor.LOST if obs.monitor_silent_seconds >= fence_seconds else Monitor.SILENT


def facts(obs: Observation, fence_seconds: float, was_fenced: bool) -> Facts:
    goal, reported = state_row(obs.goal), state_row(obs.reported)
    return Facts(
        was_fenced=was_fenced,
        monitor=monitor_status(obs, fence_seconds),
        writer=goal.writable and reported.writable,
        fence_on_partition=goal.fence_on_partition or reported.fence_on_partition,
        streaming=obs.standby_streaming,
        local=obs.local,
    )


def state_role(goal: str | None, reported: str | None) -> Role:
    """The role the monitor's two states mean: the reported one (where the
    keeper is), except that bad news the monitor has assigned shows at once,
    before the keeper reports having reached it: a node told to demote is
    demoted, and a writable primary told to go on alone is degraded. (A
    standby being promoted to wait_primary stays a standby until it reports.)"""
    assigned, current = state_row(goal), state_row(reported)
    if assigned.role is Role.DEMOTED:
        return Role.DEMOTED
    if assigned.role is Role.PRIMARY_DEGRADED and current.writable:
        return Role.PRIMARY_DEGRADED
    return current.role


def match(f: Facts) -> Rule:
    for rule in RULES:
        if rule.matches(f):
            return rule
    raise AssertionError("RULES ends with a catch-all row")  # pragma: no cover


@dataclass(frozen=True)
class Status:
    """What the vault and the console are told (the TellVault action)."""

    role: Role
    vip_held: bool
    degraded: bool  # running without a synchronous standby, or fenced
    witness_reachable: bool
    standby_streaming: bool
    sync_standby: bool
    goal: str | None
    reported: str | None
    rule: str  # the RULES row that decided, for the log and the health page


@dataclass(frozen=True)
class Decision:
    vip: Vip
    status: Status


@dataclass(frozen=True)
class DropVip:
    """Remove the VIP from the interface. Always the first action."""


@dataclass(frozen=True)
class HoldVip:
    """Add the VIP to the interface and announce it (gratuitous ARP)."""


@dataclass(frozen=True)
class TellVault:
    """The role or its health changed: tell the vault (and through it the console)."""

    status: Status


Action = DropVip | HoldVip | TellVault


def decide(obs: Observation, fence_seconds: float, was_fenced: bool = False) -> Decision:
    f = facts(obs, fence_seconds, was_fenced)
    rule = match(f)
    role = state_role(obs.goal, obs.reported) if rule.role == STATE else Role(rule.role)
    # Degraded: fenced, told by the monitor to go on alone (even while the lost standby's
    # walsender lingers, up to wal_sender_timeout), or a primary without a sync standby.
    degraded = role in (Role.FENCED, Role.PRIMARY_DEGRADED) or (
        role is Role.PRIMARY and not obs.sync_standby
    )
    return Decision(
        vip=rule.vip,
        status=Status(
            role=role,
            vip_held=rule.vip is Vip.HOLD,
            degraded=degraded,
            witness_reachable=f.monitor is Monitor.UP,
            standby_streaming=obs.standby_streaming,
            sync_standby=obs.sync_standby,
            goal=obs.goal,
            reported=obs.reported,
            rule=rule.name,
        ),
    )


def step(
    previous: Decision | None, obs: Observation, fence_seconds: float
) -> tuple[Decision, list[Action]]:
    """The next decision and the actions that get there from ``previous``
    (None at start-up, when the VIP may be left over from a crashed run)."""
    was_fenced = previous is not None and previous.status.role is Role.FENCED
    decision = decide(obs, fence_seconds, was_fenced)
    actions: list[Action] = []
    held_before = previous is None or previous.vip is Vip.HOLD
    if decision.vip is Vip.DROP and held_before:
        actions.append(DropVip())
    if decision.vip is Vip.HOLD and (previous is None or previous.vip is Vip.DROP):
        actions.append(HoldVip())
    if previous is None or _told(previous.status) != _told(decision.status):
        actions.append(TellVault(decision.status))
    return decision, actions


def _told(s: Status) -> tuple[object, ...]:
    """What the vault hears about: not the rule name or the raw states."""
    return (s.role, s.vip_held, s.degraded, s.witness_reachable, s.standby_streaming,
            s.sync_standby)
