"""Lookup-by-number benchmark: latency (p50, p99) and throughput with 1 and
with 32 concurrent clients, on a fresh appliance holding N imported subjects.

- HTTPS: POST /api/v1/subjects/lookup {"number": ...} through kura-console,
  one aiohttp ClientSession (keep-alive, TLS verified against the appliance's
  own certificate), as a payroll integration calls it.
- vault direct: the same operation on the vault's Unix socket
  (kura.console.vaultclient.VaultClient), to show what the console adds.

Two ways to load it:

- saturating (closed loop): each client sends its next lookup the moment the
  answer comes; throughput is then the appliance's capacity and, by Little's
  law, latency is clients / throughput, whatever the per-request cost;
- paced (open loop, ``--paced``): 32 clients between them offer a steady rate
  (e.g. 300 lookups/s), each lookup due at its own time and timed from then,
  so a late answer also counts the wait behind it; this is the latency a
  user sees at that load.

Every lookup is a real one: a random registered number, answered with one
subject (number masked) after its audit entry has committed. The client runs
on the same machine as the appliance and takes its share of the cores.

Run: ``.venv/bin/python -m benchmarks.bench_lookup`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import aiohttp

from benchmarks.bench_import import import_socket
from benchmarks.common import (
    Check,
    CpuMeter,
    Stopwatch,
    appliance,
    cpu_line,
    machine,
    payee_rows,
    percentile,
    print_checks,
    sign_in_mu,
    table,
    tls_context,
)
from kura.console.vaultclient import VaultClient, VaultError
from kura.devserver import LocalAppliance

TARGET_P99_MS = 20.0  # at 32 concurrent clients, over HTTPS
WARM_UP = 200

Lookup = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class Result:
    path: str
    clients: int
    offered: float | None  # lookups/s offered when paced; None when saturating
    requests: int
    errors: int
    seconds: float
    latencies: list[float]  # seconds, sorted
    cpu: dict[str, float] = field(default_factory=dict)  # seconds by part, warm-up included

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def ms(self, p: float) -> float:
        return percentile(self.latencies, p) * 1000


async def drive(
    lookup: Lookup,
    numbers: Sequence[str],
    clients: int,
    count: int,
    seed: int,
    rate: float | None = None,
) -> tuple[int, float, list[float]]:
    """``count`` lookups of random registered numbers by ``clients`` concurrent
    workers. Without ``rate`` each worker sends its next request as soon as its
    answer came; with it, lookup k is due at k / rate seconds (worker k mod
    clients sends it) and its latency runs from then, not from when it was sent."""
    rng = random.Random(seed)
    picks = [rng.choice(numbers) for _ in range(count)]
    todo = iter(picks)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for number in todo:
            start = time.perf_counter()
            ok = await lookup(number)
            latencies.append(time.perf_counter() - start)
            errors += not ok

    async def paced_worker(first: int, start: float, interval: float) -> None:
        nonlocal errors
        for k in range(first, count, clients):
            due = start + k * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ok = await lookup(picks[k])
            latencies.append(time.perf_counter() - due)
            errors += not ok

    watch = Stopwatch()
    if rate is None:
        await asyncio.gather(*(worker() for _ in range(clients)))
    else:
        begin = time.perf_counter() + 0.05
        await asyncio.gather(*(paced_worker(i, begin, 1 / rate) for i in range(clients)))
    return errors, watch.elapsed, sorted(latencies)


async def lookup_http(
    app: LocalAppliance,
    token: str,
    numbers: Sequence[str],
    clients: int,
    count: int,
    seed: int = 1,
    rate: float | None = None,
) -> Result:
    connector = aiohttp.TCPConnector(ssl=tls_context(app), limit=clients)
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{app.url}/api/v1/subjects/lookup"
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def lookup(number: str) -> bool:
            async with http.post(url, json={"number": number}) as response:
                body = await response.json()
                return response.status == 200 and len(body["subjects"]) == 1

        await drive(lookup, numbers, clients, min(WARM_UP, count), seed + 1000)
        errors, seconds, latencies = await drive(lookup, numbers, clients, count, seed, rate)
    return Result("HTTPS (console)", clients, rate, count, errors, seconds, latencies)


async def lookup_vault(
    app: LocalAppliance,
    token: str,
    numbers: Sequence[str],
    clients: int,
    count: int,
    seed: int = 1,
    rate: float | None = None,
) -> Result:
    vault = VaultClient(app.socket, clients)

    async def lookup(number: str) -> bool:
        try:
            result = await vault.call("subject.lookup", {"number": number}, token, "bench")
        except VaultError:
            return False
        return len(result["subjects"]) == 1

    try:
        await drive(lookup, numbers, clients, min(WARM_UP, count), seed + 1000)
        errors, seconds, latencies = await drive(lookup, numbers, clients, count, seed, rate)
    finally:
        await vault.close()
    return Result("vault direct (socket)", clients, rate, count, errors, seconds, latencies)


async def bench(app: LocalAppliance, args: argparse.Namespace) -> list[Result]:
    token = await sign_in_mu(app)
    rows = payee_rows(args.subjects, seed=args.seed)
    print(f"  importing {len(rows):,} subjects…", file=sys.stderr, flush=True)
    await import_socket(app, token, rows, 10_000)
    numbers = [r["number"] for r in rows]
    del rows
    # The generated subjects are a few hundred thousand objects: keep the
    # client's garbage collector from walking them in the middle of a run.
    gc.collect()
    gc.freeze()
    results = []
    meter = CpuMeter(app)
    for path in args.paths.split(","):
        run = {"http": lookup_http, "vault": lookup_vault}.get(path)
        if run is None:
            raise SystemExit(f"unknown path {path!r}")
        loads: list[tuple[int, int, float | None]] = [
            (1, args.single, None),
            (args.clients, args.concurrent, None),
        ]
        loads += [(args.clients, round(r * args.paced_seconds), r) for r in paced(args)]
        for clients, count, rate in loads:
            meter.start()
            result = await run(app, token, numbers, clients, count, args.seed, rate)
            result = replace(result, cpu=meter.stop())
            print(
                f"  {result.path}, {clients} client(s), {load_name(result)}:"
                f" p99 {result.ms(99):.1f} ms",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    return results


def paced(args: argparse.Namespace) -> list[float]:
    return [float(r) for r in args.paced.split(",") if r.strip()]


def load_name(r: Result) -> str:
    return "saturating" if r.offered is None else f"paced {r.offered:,.0f}/s"


def report(results: Sequence[Result], args: argparse.Namespace) -> bool:
    print(f"\nLookup by number among {args.subjects:,} subjects, on {machine()}")
    print()
    print(
        table(
            (
                "path",
                "clients",
                "load",
                "requests",
                "errors",
                "p50 ms",
                "p99 ms",
                "max ms",
                "lookups/s",
            ),
            [
                (
                    r.path,
                    r.clients,
                    load_name(r),
                    r.requests,
                    r.errors,
                    r.ms(50),
                    r.ms(99),
                    r.ms(100),
                    r.rate,
                )
                for r in results
            ],
        )
    )
    print()
    for r in results:
        warm = r.requests + min(WARM_UP, r.requests)
        print(f"{r.path}, {r.clients}, {load_name(r)}: {cpu_line(r.cpu, warm, 'lookup')}")
    checks = [
        Check(
            f"lookup p99, HTTPS, {r.clients} clients, {load_name(r)}",
            f"<= {TARGET_P99_MS:.0f} ms",
            f"{r.ms(99):.1f} ms",
            r.ms(99) <= TARGET_P99_MS and not r.errors,
        )
        for r in results
        if r.path.startswith("HTTPS") and r.clients == 32
    ]
    print_checks(checks)
    return all(c.met for c in checks) and not any(r.errors for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_lookup",
        description="Lookup by number over HTTPS and on the vault's socket, with 1 and with "
        "32 concurrent clients, on a fresh local appliance (started and removed by this "
        "script).",
    )
    parser.add_argument(
        "--subjects",
        type=int,
        default=100_000,
        help="subjects to import before measuring (default 100,000)",
    )
    parser.add_argument(
        "--single", type=int, default=2_000, help="requests with one client (default 2,000)"
    )
    parser.add_argument(
        "--concurrent",
        type=int,
        default=10_000,
        help="requests with --clients concurrent clients (default 10,000)",
    )
    parser.add_argument(
        "--clients", type=int, default=32, help="concurrent clients for the second run (default 32)"
    )
    parser.add_argument(
        "--paths",
        default="http,vault",
        help="what to measure, in order: http, vault (default http,vault)",
    )
    parser.add_argument(
        "--paced",
        default="100,200,300,400",
        help="offered rates (lookups/s, comma-separated) for paced runs with --clients "
        "clients; empty for none (default 100,200,300,400)",
    )
    parser.add_argument(
        "--paced-seconds",
        type=float,
        default=10.0,
        help="how long each paced run lasts (default 10 s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for subjects and lookups")
    args = parser.parse_args(argv)
    try:
        rates = paced(args)
    except ValueError:
        parser.error("--paced takes rates such as 100,200,300")
    if any(not 1 <= r * args.paced_seconds <= 100_000 for r in rates):
        parser.error("each paced run must be 1..100,000 requests (rate x --paced-seconds)")
    if not 1 <= args.subjects <= 1_000_000:
        parser.error("--subjects must be 1..1,000,000")
    if not (1 <= args.single <= 100_000 and 1 <= args.concurrent <= 100_000):
        parser.error("--single and --concurrent must be 1..100,000")
    if not 1 <= args.clients <= 256:
        parser.error("--clients must be 1..256")
    print("starting a local appliance…", file=sys.stderr, flush=True)
    with appliance("lookup") as app:
        results = asyncio.run(bench(app, args))
    met = report(results, args)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
