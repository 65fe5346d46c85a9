"""kura-hasync's pure core (kura.core.ha): every row of the state table and of
the decision table, and the actions a node takes on the way from one decision
to the next. The expected values are written out here, not read back from the
tables, so a wrong row fails."""

from __future__ import annotations

import dataclasses

import pytest

from kura.core.ha import (
    RULES,
    STATES,
    Decision,
    DropVip,
    HoldVip,
    LocalPg,
    Observation,
    Role,
    TellVault,
    Vip,
    decide,
    step,
)

FENCE = 20.0

# pg_auto_failover 2.2, src/monitor/replication_state.c (ReplicationStateGetName).
PG_AUTO_FAILOVER_2_2_STATES = (
    "init", "single", "wait_primary", "primary", "draining", "demote_timeout", "demoted",
    "catchingup", "secondary", "prepare_promotion", "stop_replication", "wait_standby",
    "maintenance", "join_primary", "apply_settings", "prepare_maintenance", "wait_maintenance",
    "report_lsn", "fast_forward", "join_secondary", "dropped",
)


def observe(
    goal: str | None = "primary",
    reported: str | None = None,
    *,
    reachable: bool = True,
    silent: float = 0.0,
    local: LocalPg = LocalPg.WRITABLE,
    streaming: bool = True,
    sync: bool | None = None,
) -> Observation:
    return Observation(
        goal=goal,
        reported=goal if reported is None else reported,
        monitor_reachable=reachable,
        monitor_silent_seconds=silent,
        local=local,
        standby_streaming=streaming,
        sync_standby=streaming if sync is None else sync,
    )


def test_every_pg_auto_failover_state_has_a_row() -> None:
    assert sorted(STATES) == sorted(PG_AUTO_FAILOVER_2_2_STATES)


# Each state with the monitor's goal and the keeper's report agreeing, the
# local PostgreSQL as it is in that state: does the node hold the VIP, and as what?
EXPECTED_BY_STATE = {
    "single": (LocalPg.WRITABLE, Vip.HOLD, Role.SINGLE),
    "wait_primary": (LocalPg.WRITABLE, Vip.HOLD, Role.PRIMARY_DEGRADED),
    "primary": (LocalPg.WRITABLE, Vip.HOLD, Role.PRIMARY),
    "join_primary": (LocalPg.WRITABLE, Vip.HOLD, Role.PRIMARY),
    "apply_settings": (LocalPg.WRITABLE, Vip.HOLD, Role.PRIMARY),
    # Still out of recovery while being demoted: the state alone drops the VIP.
    "draining": (LocalPg.WRITABLE, Vip.DROP, Role.DEMOTED),
    "demote_timeout": (LocalPg.WRITABLE, Vip.DROP, Role.DEMOTED),
    "demoted": (LocalPg.DOWN, Vip.DROP, Role.DEMOTED),
    "prepare_maintenance": (LocalPg.WRITABLE, Vip.DROP, Role.DEMOTED),
    "catchingup": (LocalPg.RECOVERY, Vip.DROP, Role.DEMOTED),
    "wait_standby": (LocalPg.DOWN, Vip.DROP, Role.DEMOTED),
    "secondary": (LocalPg.RECOVERY, Vip.DROP, Role.STANDBY),
    "prepare_promotion": (LocalPg.RECOVERY, Vip.DROP, Role.STANDBY),
    # Promoted, out of recovery, but writes are held back: no VIP yet.
    "stop_replication": (LocalPg.WRITABLE, Vip.DROP, Role.STANDBY),
    "report_lsn": (LocalPg.RECOVERY, Vip.DROP, Role.STANDBY),
    "fast_forward": (LocalPg.RECOVERY, Vip.DROP, Role.STANDBY),
    "join_secondary": (LocalPg.RECOVERY, Vip.DROP, Role.STANDBY),
    "wait_maintenance": (LocalPg.RECOVERY, Vip.DROP, Role.MAINTENANCE),
    "maintenance": (LocalPg.DOWN, Vip.DROP, Role.MAINTENANCE),
    "init": (LocalPg.DOWN, Vip.DROP, Role.UNKNOWN),
    "dropped": (LocalPg.DOWN, Vip.DROP, Role.UNKNOWN),
}


def test_expectations_cover_every_state() -> None:
    assert sorted(EXPECTED_BY_STATE) == sorted(PG_AUTO_FAILOVER_2_2_STATES)


@pytest.mark.parametrize("state", sorted(EXPECTED_BY_STATE))
def test_state_row(state: str) -> None:
    local, vip, role = EXPECTED_BY_STATE[state]
    decision = decide(observe(state, local=local), FENCE)
    assert (decision.vip, decision.status.role) == (vip, role)


def rule_of(obs: Observation, was_fenced: bool = False) -> Decision:
    return decide(obs, FENCE, was_fenced)


# One observation per decision-table row, and what it must decide.
ROW_CASES = {
    "stay-fenced": (
        observe("primary", reachable=False, silent=3.0, streaming=True), True,
        Vip.DROP, Role.FENCED,
    ),
    "fence": (
        observe("primary", reachable=False, silent=FENCE, streaming=False), False,
        Vip.DROP, Role.FENCED,
    ),
    "writable-primary": (observe("primary"), False, Vip.HOLD, Role.PRIMARY),
    "primary-in-recovery": (
        observe("primary", local=LocalPg.RECOVERY), False, Vip.DROP, Role.UNKNOWN,
    ),
    "primary-pg-down": (observe("primary", local=LocalPg.DOWN), False, Vip.DROP, Role.UNKNOWN),
    "not-primary": (observe("secondary", local=LocalPg.RECOVERY), False, Vip.DROP, Role.STANDBY),
}


def test_every_rule_has_a_case() -> None:
    assert [r.name for r in RULES] == list(ROW_CASES)


@pytest.mark.parametrize("name", list(ROW_CASES))
def test_rule_row(name: str) -> None:
    obs, was_fenced, vip, role = ROW_CASES[name]
    decision = rule_of(obs, was_fenced)
    assert (decision.status.rule, decision.vip, decision.status.role) == (name, vip, role)


def test_witness_gone_standby_streaming_keeps_the_vip() -> None:
    decision = decide(observe("primary", reachable=False, silent=FENCE * 10, streaming=True),
                      FENCE)
    assert decision.vip is Vip.HOLD
    assert decision.status.role is Role.PRIMARY
    assert decision.status.witness_reachable is False


def test_monitor_silent_shorter_than_fence_keeps_the_vip() -> None:
    decision = decide(observe("primary", reachable=False, silent=FENCE - 0.5, streaming=False),
                      FENCE)
    assert decision.vip is Vip.HOLD


@pytest.mark.parametrize("state", ["primary", "join_primary", "apply_settings"])
def test_isolated_primary_fences(state: str) -> None:
    decision = decide(observe(state, reachable=False, silent=FENCE, streaming=False), FENCE)
    assert (decision.vip, decision.status.role, decision.status.degraded) == (
        Vip.DROP, Role.FENCED, True)


@pytest.mark.parametrize(("state", "role"), [("single", Role.SINGLE),
                                             ("wait_primary", Role.PRIMARY_DEGRADED)])
def test_alone_with_no_promotable_standby_goes_on(state: str, role: Role) -> None:
    """Like the keeper: no standby could be promoted, so nobody else can take writes."""
    decision = decide(observe(state, reachable=False, silent=FENCE * 3, streaming=False), FENCE)
    assert (decision.vip, decision.status.role) == (Vip.HOLD, role)


def test_demotion_assigned_drops_the_vip_before_the_keeper_reports() -> None:
    decision = decide(observe("draining", reported="primary"), FENCE)
    assert (decision.vip, decision.status.role) == (Vip.DROP, Role.DEMOTED)


def test_promotion_takes_the_vip_only_once_reported_writable() -> None:
    midway = decide(observe("wait_primary", reported="stop_replication", streaming=False), FENCE)
    assert (midway.vip, midway.status.role) == (Vip.DROP, Role.STANDBY)
    done = decide(observe("wait_primary", streaming=False), FENCE)
    assert (done.vip, done.status.role, done.status.degraded) == (
        Vip.HOLD, Role.PRIMARY_DEGRADED, True)


def test_standby_lost_is_degraded_at_once() -> None:
    """The monitor has assigned wait_primary; the keeper has not reported it yet."""
    decision = decide(observe("wait_primary", reported="primary", streaming=False), FENCE)
    assert (decision.vip, decision.status.role, decision.status.degraded) == (
        Vip.HOLD, Role.PRIMARY_DEGRADED, True)


def test_told_to_go_on_alone_is_degraded_while_the_lost_standby_still_shows() -> None:
    """The monitor has assigned wait_primary; the cut-off standby's walsender is still
    listed (until wal_sender_timeout): the role and the degraded flag must agree at once,
    or the console would show "primary-degraded" without the alarm."""
    decision = decide(observe("wait_primary", reported="primary", streaming=True), FENCE)
    assert (decision.status.role, decision.status.degraded) == (Role.PRIMARY_DEGRADED, True)


def test_primary_with_sync_standby_is_not_degraded() -> None:
    assert decide(observe("primary"), FENCE).status.degraded is False
    assert decide(observe("primary", sync=False), FENCE).status.degraded is True


def test_unknown_to_the_monitor() -> None:
    decision = decide(observe(None, reported=None), FENCE)
    assert (decision.vip, decision.status.role) == (Vip.DROP, Role.UNKNOWN)
    strange = decide(observe("no_such_state"), FENCE)
    assert (strange.vip, strange.status.role) == (Vip.DROP, Role.UNKNOWN)


# --- step(): the actions between decisions ---------------------------------


def test_start_up_drops_a_leftover_vip_first() -> None:
    _, actions = step(None, observe("secondary", local=LocalPg.RECOVERY), FENCE)
    assert actions[0] == DropVip()
    assert isinstance(actions[1], TellVault)
    assert actions[1].status.role is Role.STANDBY


def test_start_up_as_primary_holds() -> None:
    decision, actions = step(None, observe("primary"), FENCE)
    assert [type(a) for a in actions] == [HoldVip, TellVault]
    assert decision.status.vip_held


def test_nothing_changes_nothing_happens() -> None:
    first, _ = step(None, observe("primary"), FENCE)
    again, actions = step(first, observe("primary"), FENCE)
    assert actions == []
    assert again == first


def test_demotion_drops_first_then_tells() -> None:
    held, _ = step(None, observe("primary"), FENCE)
    _, actions = step(held, observe("draining", reported="primary"), FENCE)
    assert [type(a) for a in actions] == [DropVip, TellVault]


def test_failover_on_the_standby_side() -> None:
    # A standby has nobody streaming from it.
    standby, _ = step(None, observe("secondary", local=LocalPg.RECOVERY, streaming=False), FENCE)
    obs = observe("prepare_promotion", reported="secondary", local=LocalPg.RECOVERY,
                  streaming=False)
    promoting, actions = step(standby, obs, FENCE)
    assert actions == []  # still a standby, nothing to tell
    obs = observe("wait_primary", reported="stop_replication", streaming=False)
    promoting, actions = step(promoting, obs, FENCE)
    assert actions == []
    primary, actions = step(promoting, observe("wait_primary", streaming=False), FENCE)
    assert [type(a) for a in actions] == [HoldVip, TellVault]
    assert primary.status.role is Role.PRIMARY_DEGRADED


def test_partition_fences_and_stays_fenced_until_the_monitor_returns() -> None:
    held, _ = step(None, observe("primary"), FENCE)
    silent = observe("primary", reachable=False, silent=FENCE / 2, streaming=False)
    waiting, actions = step(held, silent, FENCE)
    assert waiting.vip is Vip.HOLD
    assert [type(a) for a in actions] == [TellVault]  # witness unreachable, degraded
    fenced, actions = step(waiting, dataclasses.replace(silent, monitor_silent_seconds=FENCE),
                           FENCE)
    assert [type(a) for a in actions] == [DropVip, TellVault]
    assert fenced.status.role is Role.FENCED
    # A standby streaming again proves nothing while the monitor is still silent.
    back = observe("primary", reachable=False, silent=FENCE * 2, streaming=True)
    still, actions = step(fenced, back, FENCE)
    assert still.status.role is Role.FENCED
    assert [type(a) for a in actions] == [TellVault]  # it streams, but no VIP
    # The monitor is heard: it has demoted this node meanwhile.
    demoted, actions = step(still, observe("demote_timeout", local=LocalPg.DOWN), FENCE)
    assert demoted.status.role is Role.DEMOTED
    assert [type(a) for a in actions] == [TellVault]


def test_witness_loss_and_return_keep_the_vip() -> None:
    held, _ = step(None, observe("primary"), FENCE)
    alone, actions = step(held, observe("primary", reachable=False, silent=FENCE * 5), FENCE)
    assert alone.vip is Vip.HOLD
    assert [type(a) for a in actions] == [TellVault]
    assert actions[0] == TellVault(alone.status)
    assert alone.status.witness_reachable is False
    back, actions = step(alone, observe("primary"), FENCE)
    assert back.vip is Vip.HOLD and back.status.witness_reachable
    assert [type(a) for a in actions] == [TellVault]


def test_local_postgresql_crash_drops_the_vip() -> None:
    held, _ = step(None, observe("primary"), FENCE)
    down, actions = step(held, observe("primary", local=LocalPg.DOWN), FENCE)
    assert [type(a) for a in actions] == [DropVip, TellVault]
    assert down.status.role is Role.UNKNOWN
    _, actions = step(down, observe("primary"), FENCE)
    assert [type(a) for a in actions] == [HoldVip, TellVault]
