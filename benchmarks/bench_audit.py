"""The cost of the audit head check and of tight checkpoints: audit appends
per second and lookup latency at 32 clients, before and after, in one run on
one appliance.

- before: ``[vault] audit_head_check = false`` (no check of the trusted head
  before each append, no head file, no integrity sweep) and checkpoints every
  300 s, as the vault was;
- after: the defaults -- the head check in the same round trip as the chain
  lock, checkpoints every few seconds (``checkpoint_seconds``), the signed
  head file rewritten at each, and a sweep of the whole chain every
  ``integrity_sweep_seconds``.

The vault is restarted with the other configuration between runs; with
``--rounds`` above 1 the two alternate, so drift on a shared machine falls
on both. Every lookup writes one audit entry, so saturating lookups on the
vault's socket measure appends per second (counted from the chain's head
before and after, not from the requests); the HTTPS runs are what a payroll
integration sees.

Run: ``.venv/bin/python -m benchmarks.bench_audit`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.bench_import import import_socket
from benchmarks.bench_lookup import Result, lookup_http, lookup_vault
from benchmarks.common import appliance, machine, payee_rows, sign_in_mu, table
from kura.devserver import LocalAppliance

CONFIGS: dict[str, dict[str, object]] = {
    "before": {"audit_head_check": False, "checkpoint_seconds": 300.0},
    "after": {"audit_head_check": True},  # the defaults: checkpoints every few seconds
}


@dataclass(frozen=True)
class Round:
    config: str
    appends_per_s: float
    vault: Result
    https: Result
    paced: Result | None


def head(app: LocalAppliance) -> int:
    return int(app.cluster.psql("kura_owner", "SELECT max(seq) FROM audit").strip())


def checkpoints(app: LocalAppliance) -> int:
    return int(app.cluster.psql("kura_owner", "SELECT count(*) FROM audit_checkpoints").strip())


def configure(app: LocalAppliance, name: str, sweep: float) -> None:
    settings = dict(CONFIGS[name])
    if name == "after":
        settings["integrity_sweep_seconds"] = sweep
    app.extra_config = {"vault": settings}
    app.write_config()
    app.stop_daemon("vault")
    app.start_daemon("vault")


async def one_round(
    app: LocalAppliance, token: str, name: str, numbers: Sequence[str], args: argparse.Namespace
) -> Round:
    before = head(app)
    vault = await lookup_vault(app, token, numbers, args.clients, args.concurrent, args.seed)
    appended = head(app) - before
    # The warm-up's lookups are appended too, and timed by nobody: count only
    # what the measured part wrote (one entry per lookup) over its time.
    appends = min(appended, vault.requests) / vault.seconds
    https = await lookup_http(app, token, numbers, args.clients, args.concurrent, args.seed)
    paced = None
    if args.paced:
        paced = await lookup_http(app, token, numbers, args.clients,
                                  round(args.paced * args.paced_seconds), args.seed, args.paced)
    print(f"  {name}: {appends:,.0f} appends/s, HTTPS p99 {https.ms(99):.1f} ms",
          file=sys.stderr, flush=True)
    return Round(name, appends, vault, https, paced)


async def bench(app: LocalAppliance, args: argparse.Namespace) -> list[Round]:
    token = await sign_in_mu(app)
    rows = payee_rows(args.subjects, seed=args.seed)
    print(f"  importing {len(rows):,} subjects…", file=sys.stderr, flush=True)
    await import_socket(app, token, rows, 10_000)
    numbers = [r["number"] for r in rows]
    del rows
    gc.collect()
    gc.freeze()
    rounds = []
    for i in range(args.rounds):
        for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
            configure(app, name, args.sweep)
            cps = checkpoints(app)
            # The session lives in the database: it outlasts the vault's restart.
            result = await one_round(app, token, name, numbers, args)
            print(f"  {name}: {checkpoints(app) - cps} checkpoints signed during the round",
                  file=sys.stderr, flush=True)
            rounds.append(result)
    return rounds


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(rounds: Sequence[Round], args: argparse.Namespace) -> None:
    print(f"\nAudit head check and tight checkpoints, {args.subjects:,} subjects, "
          f"{args.clients} clients, on {machine()}")
    print()
    rows = []
    for r in rounds:
        rows.append((
            r.config,
            r.appends_per_s,
            r.vault.ms(99),
            r.https.rate,
            r.https.ms(50),
            r.https.ms(99),
            r.paced.ms(99) if r.paced else float("nan"),
            r.vault.errors + r.https.errors + (r.paced.errors if r.paced else 0),
        ))
    print(table(
        ("config", "appends/s (vault)", "vault p99 ms", "HTTPS lookups/s", "HTTPS p50 ms",
         "HTTPS p99 ms", f"paced {args.paced:,.0f}/s p99 ms", "errors"),
        rows,
    ))

    def med(name: str, pick: str) -> float:
        values = {
            "appends": [r.appends_per_s for r in rounds if r.config == name],
            "p99": [r.https.ms(99) for r in rounds if r.config == name],
            "paced": [r.paced.ms(99) for r in rounds if r.config == name and r.paced],
        }[pick]
        return _median(values)

    print()
    print(table(
        ("after / before", "ratio"),
        [
            ("audit appends per second", med("after", "appends") / med("before", "appends")),
            ("lookup p99, HTTPS, saturating", med("after", "p99") / med("before", "p99")),
            (f"lookup p99, HTTPS, paced {args.paced:,.0f}/s",
             med("after", "paced") / med("before", "paced")),
        ],
    ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_audit",
        description="Audit appends per second and lookup p99 at 32 clients with the audit "
        "head check off and checkpoints every 300 s (before) and with the head check on and "
        "checkpoints every few seconds (after), on one fresh local appliance.",
    )
    parser.add_argument("--subjects", type=int, default=20_000,
                        help="subjects to import first (default 20,000)")
    parser.add_argument("--concurrent", type=int, default=5_000,
                        help="lookups per saturating run (default 5,000)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--paced", type=float, default=200.0,
                        help="offered lookups/s for a paced HTTPS run; 0 for none (default 200)")
    parser.add_argument("--paced-seconds", type=float, default=10.0,
                        help="how long the paced run lasts (default 10 s)")
    parser.add_argument("--sweep", type=float, default=60.0,
                        help="integrity_sweep_seconds for 'after' (default 60, the default)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="before/after pairs, alternating in order (default 1)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 1 <= args.subjects <= 1_000_000 or not 1 <= args.concurrent <= 100_000:
        parser.error("--subjects must be 1..1,000,000 and --concurrent 1..100,000")
    if not 1 <= args.clients <= 256 or not 1 <= args.rounds <= 10:
        parser.error("--clients must be 1..256 and --rounds 1..10")
    if args.paced < 0 or args.paced * args.paced_seconds > 100_000:
        parser.error("the paced run must be 0..100,000 requests (rate x --paced-seconds)")
    print("starting a local appliance…", file=sys.stderr, flush=True)
    with appliance("audit") as app:
        rounds = asyncio.run(bench(app, args))
    report(rounds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
