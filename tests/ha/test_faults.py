"""The fault matrix through the floating address, as clerks meet it: Kura's vault,
console and kura-hasync on both data nodes, a clerk's client that reaches them only
through the floating address and records every payee it was told was registered, and a
probe that writes to both nodes directly all along (tests/ha/faults.py has the scenarios
and the checks after each). One lab and one pair serve the whole module; each scenario
leaves the pair healthy for the next, and the last test fails the pair over ten times in
a row, whichever node is primary.

Needs root and the raw image; skipped without them, failed without them when
KURA_IMAGE_TESTS=1. benchmarks/bench_failover.py repeats the same scenarios for figures.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator

import pytest

from tests.ha import faults
from tests.ha.appliances import KuraPair, install
from tests.ha.lab import lab_with_formation
from tests.ha.test_pg_failover import _unavailable

FAILOVERS_IN_A_ROW = 10


@pytest.fixture(scope="module")
def running() -> Iterator[faults.Load]:
    reason = _unavailable()
    if reason:
        if os.environ.get("KURA_IMAGE_TESTS") == "1":
            pytest.fail(f"{reason}; KURA_IMAGE_TESTS=1 requires the image tests to run",
                        pytrace=False)
        pytest.skip(reason)
    with lab_with_formation() as lab:
        began = time.monotonic()
        pair: KuraPair = install(lab)
        print(f"\nlab {lab.timings['machines']:.1f} s, formation "
              f"{lab.timings['formation']:.1f} s, Kura on the pair "
              f"{time.monotonic() - began:.1f} s")
        with faults.load(pair) as load:
            yield load


@pytest.mark.parametrize("scenario", faults.SCENARIOS, ids=lambda s: s.name)
def test_fault(running: faults.Load, scenario: faults.Scenario) -> None:
    outcome = faults.run(scenario, running)
    print(f"\n{outcome.line()}")
    assert outcome.lost == 0
    assert outcome.recovery <= faults.RECOVERY_TARGET, outcome.line()


def test_a_lagging_standby_is_never_promoted(running: faults.Load) -> None:
    """The standby is cut off and the primary goes on alone (degraded), so the standby
    lacks acknowledged writes; then the primary dies. The standby, back on the network,
    must not be promoted (it would lose those writes): no node takes writes and the
    floating address answers nowhere until the old primary is back, which then holds
    every acknowledged write."""
    pair, lab = running.pair, running.pair.lab
    primary = lab.wait_stable(faults.STABLE_TIMEOUT)
    standby = lab.other(primary)
    faults.wait(lambda: pair.vip_holder() == [primary], 30, f"the floating address on {primary}")
    lab.cut(standby)
    faults._degraded_alone(running, primary)  # writes the standby does not have
    lab.nodes[primary].power_off()
    dead = time.time()
    try:
        lab.heal(standby)
        # Long enough for the monitor to have promoted it, were it going to: its timers
        # and kura-hasync's fence three times over.
        time.sleep(3 * faults.FENCE_WAIT)
        states = lab.states()
        assert lab.in_recovery(standby) is True, states
        # The monitor keeps the lost primary's role (nobody to hand it to) and holds
        # the standby at catching up: not a candidate.
        assert states[standby][1] not in ("prepare_promotion", "stop_replication",
                                          "wait_primary", "primary"), states
        assert pair.vip_holder() == []
        late = [a for a in running.writer.acks() if a[2] > dead + 1]
        assert not late, f"writes acknowledged with the primary powered off: {late[:3]}"
    finally:
        lab.heal(standby)
        lab.nodes[primary].power_on()
    try:
        after = lab.wait_stable(faults.STABLE_TIMEOUT)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{faults.diagnosis(lab)}") from exc
    assert after == primary
    acknowledged, lost = faults.check_healthy(running, after)
    print(f"\nlagging standby not promoted; {primary} back after {time.time() - dead:.1f} s;"
          f" {lost} of {acknowledged} acknowledged writes lost")
    assert lost == 0


def test_ten_failovers_in_a_row_alternate_sides_and_lose_nothing(
    running: faults.Load,
) -> None:
    primaries = []
    recoveries = []
    for _ in range(FAILOVERS_IN_A_ROW):
        outcome = faults.run(faults.POWER_OFF, running)
        primaries.append(outcome.after)
        recoveries.append(outcome.recovery)
        assert outcome.lost == 0
    print(f"\n{FAILOVERS_IN_A_ROW} power-offs of the primary in a row: recovery "
          + ", ".join(f"{r:.2f}" for r in recoveries) + f" s; primaries {primaries}")
    assert all(a != b for a, b in itertools.pairwise(primaries))
    assert max(recoveries) <= faults.RECOVERY_TARGET
