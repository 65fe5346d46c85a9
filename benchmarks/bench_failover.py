"""Failover benchmark of the HA pair, in the namespace lab of tests/ha (root, the raw image).

For each fault scenario of tests/ha/faults.py, repeated ``--reps`` times under a clerk's
writes through the floating address: the recovery time from the fault to the first write
acknowledged through the floating address (p50, p99, max) and the acknowledged writes lost
(must be 0). Then the planned switchover (the monitor's ``pgautofailover.perform_failover``,
what ``pg_autoctl perform switchover`` calls) to the first write acknowledged by the new
primary through the floating address (target at most 5 s).

The price of synchronous replication, in the same run, on the same node: ``--clients``
clerks write without pause for ``--seconds`` seconds through the floating address to the
pair, then to the same appliance alone (its standby powered off, so its PostgreSQL no
longer waits for a standby: pg_auto_failover's wait_primary, a single appliance in all but
name); write latency (the POST alone, p50/p99) and throughput, and their ratios.

Run: ``PYTHONPATH=$PWD/daemons:$PWD .venv/bin/python -m benchmarks.bench_failover``
(``--help`` for options; KURA_RAW_IMAGE for another image).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from tests.ha import faults
from tests.ha.appliances import KuraPair, install
from tests.ha.lab import lab_with_formation
from tests.ha.test_pg_failover import _unavailable

from benchmarks.common import Check, machine, percentile, print_checks, table

SWITCHOVER_TARGET = 5.0


@dataclass(frozen=True)
class Throughput:
    name: str
    writes: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.writes / self.seconds

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies), q) * 1000


def measure(pair: KuraPair, name: str, clients: int, seconds: float,
            start_id: int) -> Throughput:
    """``clients`` clerks writing without pause; only the middle ``seconds`` count (the
    sign-in of each clerk is not a write)."""
    with ExitStack() as stack:
        writers = [pair.writer(start_id + n * 1_000_000, pause=0.0) for n in range(clients)]
        for w in writers:
            stack.callback(w.stop)
        faults.wait(lambda: all(len(w.acked()) >= 3 for w in writers), 60 + 35 * clients,
                    f"{name}: every clerk writing")
        began = time.time()
        time.sleep(seconds)
        ended = time.time()
    latencies = [lat for w in writers for end, lat in w.latencies() if began <= end < ended]
    return Throughput(name, len(latencies), ended - began, latencies)


def price_of_sync(pair: KuraPair, clients: int, seconds: float) -> list[Throughput]:
    lab = pair.lab
    primary = lab.wait_stable(faults.STABLE_TIMEOUT)
    standby = lab.other(primary)
    results = [measure(pair, "pair (synchronous standby)", clients, seconds, 10_000_000)]
    lab.nodes[standby].power_off()
    try:
        faults.wait(lambda: faults.hasync_status(lab, primary).get("role")
                    == "primary-degraded", 60, "the primary alone")
        results.append(measure(pair, "one appliance alone", clients, seconds, 50_000_000))
    finally:
        lab.nodes[standby].power_on()
    lab.wait_stable(faults.STABLE_TIMEOUT)
    return results


def switchover(running: faults.Load) -> float:
    """The monitor's planned switchover to the first write the new primary acknowledged
    through the floating address."""
    lab = running.pair.lab
    before = lab.wait_stable(faults.STABLE_TIMEOUT)
    after = lab.other(before)
    faults.wait(lambda: running.pair.vip_holder() == [before], 30, "the address on the primary")
    t0 = time.time()
    lab.nodes["witness"].psql("SELECT pgautofailover.perform_failover('default', 0)",
                              "pg_auto_failover")

    def first() -> float | None:
        return next((end for _id, start, end, node in running.writer.acks()
                     if start >= t0 and node == after), None)

    faults.wait(lambda: first() is not None, 60, "a write on the new primary")
    seconds = first()
    assert seconds is not None
    lab.wait_stable(faults.STABLE_TIMEOUT)
    faults.check_healthy(running, after)
    return seconds - t0


def stats(values: Sequence[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return percentile(ordered, 50), percentile(ordered, 99), ordered[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5,
                        help="runs of each fault (default 5; 0: throughput only)")
    parser.add_argument("--switchovers", type=int, default=5,
                        help="planned switchovers (default 5)")
    parser.add_argument("--clients", type=int, default=1,
                        help="clerks writing at once for the throughput (default 1; they "
                        "share the one MU, whose TOTP code is good once per 30 s step, so "
                        "more than one clerk may wait a step or more to sign in)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long each throughput run counts (default 20 s)")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario numbers (1-7) to run; default all")
    args = parser.parse_args(argv)
    if not 0 <= args.reps <= 100 or not 0 <= args.switchovers <= 100:
        parser.error("--reps and --switchovers must be 0..100")
    if not 1 <= args.clients <= 16:
        parser.error("--clients must be 1..16")
    reason = _unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    chosen = [faults.SCENARIOS[int(n) - 1] for n in args.only.split(",") if n] or list(
        faults.SCENARIOS)
    print("building the lab and the pair…", file=sys.stderr, flush=True)
    outcomes: dict[str, list[faults.Outcome]] = {s.name: [] for s in chosen if args.reps}
    with lab_with_formation() as lab:
        pair = install(lab)
        throughput = price_of_sync(pair, args.clients, args.seconds)
        print_throughput(args, throughput)
        with faults.load(pair) as running:
            for rep in range(args.reps):
                for scenario in chosen:
                    outcome = faults.run(scenario, running)
                    print(f"  run {rep + 1}: {outcome.line()}", file=sys.stderr, flush=True)
                    outcomes[scenario.name].append(outcome)
            if outcomes:
                print_faults(args, outcomes)  # already, in case a switchover fails
            switchovers = []
            for n in range(args.switchovers):
                switchovers.append(switchover(running))
                print(f"  switchover {n + 1}: {switchovers[-1]:.2f} s", file=sys.stderr,
                      flush=True)
    return report(args, outcomes, throughput, switchovers)


def print_faults(args: argparse.Namespace,
                 outcomes: dict[str, list[faults.Outcome]]) -> tuple[float, int]:
    """The fault table; returns the worst p99 recovery and the writes lost."""
    print(f"\nHA pair failover, {args.reps} runs per fault, on {machine()}")
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    rows = []
    worst = 0.0
    lost = 0
    for name, runs in outcomes.items():
        p50, p99, top = stats([o.recovery for o in runs])
        worst = max(worst, p99)
        lost += sum(o.lost for o in runs)
        failovers = sum(o.before != o.after for o in runs)
        rows.append((name, len(runs), failovers, p50, p99, top,
                     statistics.median(o.stable for o in runs), sum(o.lost for o in runs),
                     sum(o.acknowledged for o in runs[-1:])))
    print(table(("fault", "runs", "failovers", "recovery p50 s", "p99 s", "max s",
                 "in sync again s (p50)", "lost", "acknowledged"), rows), flush=True)
    return worst, lost


def print_throughput(args: argparse.Namespace, throughput: list[Throughput]) -> None:
    pair, alone = throughput
    print(f"\nWrites through the floating address, {args.clients} clerks without pause, "
          f"{args.seconds:.0f} s each:\n")
    print(table(("", "writes/s", "latency p50 ms", "p99 ms"),
                [(t.name, t.per_second, t.p(50), t.p(99)) for t in throughput]
                + [("pair / alone", pair.per_second / alone.per_second,
                    pair.p(50) / alone.p(50), pair.p(99) / alone.p(99))]), flush=True)


def report(args: argparse.Namespace, outcomes: dict[str, list[faults.Outcome]],
           throughput: list[Throughput], switchovers: list[float]) -> int:
    worst = max((stats([o.recovery for o in runs])[1] for runs in outcomes.values()),
                default=0.0)
    lost = sum(o.lost for runs in outcomes.values() for o in runs)
    if switchovers:
        p50, p99, top = stats(switchovers)
        print(f"\nplanned switchover → first write through the floating address on the new "
              f"primary: p50 {p50:.2f} s, p99 {p99:.2f} s, max {top:.2f} s "
              f"({len(switchovers)} runs)")
    print_throughput(args, throughput)
    checks = [
        Check("failover recovery p99 (worst fault)", f"≤ {faults.RECOVERY_TARGET:.0f} s",
              f"{worst:.2f} s", worst <= faults.RECOVERY_TARGET),
        Check("acknowledged writes lost", "0", str(lost), lost == 0),
    ] if outcomes else []
    if switchovers:
        top = max(switchovers)
        checks.append(Check("planned switchover (max)", f"≤ {SWITCHOVER_TARGET:.0f} s",
                            f"{top:.2f} s", top <= SWITCHOVER_TARGET))
    print_checks(checks)
    return 0 if all(c.met for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
