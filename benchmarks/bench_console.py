"""Console benchmark: what the console adds to the vault's own latency when
clerks search and reveal, with 1 and with 32 concurrent signed-in clerks
(each an MU account of its own), on a fresh appliance holding N generated
payees. Three ways to the same vault, measured in the same run:

- vault direct: the operation on the vault's Unix socket
  (kura.console.vaultclient.VaultClient), the baseline;
- API: the console's JSON API over HTTPS (aiohttp client, keep-alive, TLS
  verified against the appliance's certificate), bearer token;
- pages: the console's pages as a browser posts them (session cookie, CSRF
  token): POST /search and POST /subjects/{id}/reveal. A page also asks the
  vault who the visitor is, and the subject page reads the subject before
  revealing, so pages make two or three vault calls where the API makes one.

Operations: search by number (subject.lookup; the page's search by a
number is the same call), search by code (subject.lookup by code for the
API; the page's search box reads a code as a prefix and lists matches,
subject.list, which the vault-direct rows also measure), and reveal for the
payment-record purpose (subject.reveal, decrypts and writes an audit entry).

Closed loop: each clerk sends its next request when the last answer came,
so throughput is the appliance's capacity and latency at 32 clerks includes
queueing. The requests of each load are split into rounds in which the paths
take turns, so that whatever else the machine is doing weighs on them alike;
CPU time per request is measured for each part (client, console, vault,
PostgreSQL), which load elsewhere disturbs far less than latency. Every
answer is checked (one subject found, the number revealed); a wrong answer
counts as an error. Client and appliance share this machine.

Run: ``.venv/bin/python -m benchmarks.bench_console`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from benchmarks.bench_import import import_socket
from benchmarks.common import (
    CpuMeter,
    Stopwatch,
    _activate,
    appliance,
    machine,
    payee_rows,
    percentile,
    table,
    tls_context,
)
from kura.console.vaultclient import VaultClient, VaultError
from kura.console.web import security
from kura.devserver import LocalAppliance

PURPOSE = "payment_record"  # what a payee's number is for, by default
WARM_UP = 100

Request = Callable[[int, int], Awaitable[bool]]  # (clerk, pick) -> answer was right


@dataclass(frozen=True)
class Subject:
    id: str
    code: str
    number: str


@dataclass(frozen=True)
class Result:
    path: str
    op: str
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]  # seconds, sorted
    cpu: dict[str, float]  # CPU seconds by part (client, console, vault, postgres)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def ms(self, p: float) -> float:
        return percentile(self.latencies, p) * 1000


# --- set-up -------------------------------------------------------------------------


async def clerks(app: LocalAppliance, count: int) -> tuple[str, list[str]]:
    """The first DA's token and ``count`` signed-in MU clerks' tokens."""
    vault = VaultClient(app.socket, 8)
    try:
        first = await vault.call("bootstrap_da", {"username": "admin"}, None, "local")
        admin = await _activate(vault, "admin", first["password"])

        async def clerk(n: int) -> str:
            created = await vault.call(
                "user.create", {"username": f"clerk-{n:02d}", "role": "MU"}, admin
            )
            return await _activate(vault, f"clerk-{n:02d}", created["password"])

        tokens = await asyncio.gather(*(clerk(n) for n in range(count)))
    finally:
        await vault.close()
    return admin, list(tokens)


async def sample(
    app: LocalAppliance, token: str, rows: Sequence[dict[str, str]], count: int, seed: int
) -> list[Subject]:
    """``count`` registered subjects with their ids (the import does not
    return ids; a lookup by code does)."""
    rng = random.Random(seed)
    vault = VaultClient(app.socket, 4)
    try:
        picked = rng.sample(list(rows), min(count, len(rows)))
        found = await asyncio.gather(
            *(vault.call("subject.lookup", {"code": r["code"]}, token, "bench") for r in picked)
        )
    finally:
        await vault.close()
    return [
        Subject(str(f["subjects"][0]["id"]), r["code"], r["number"])
        for r, f in zip(picked, found, strict=True)
    ]


# --- the three ways in ---------------------------------------------------------------


def vault_requests(
    vault: VaultClient, tokens: Sequence[str], subjects: Sequence[Subject]
) -> dict[str, Request]:
    async def call(clerk: int, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return await vault.call(op, args, tokens[clerk], "bench")
        except VaultError:
            return None

    async def by_number(clerk: int, pick: int) -> bool:
        found = await call(clerk, "subject.lookup", {"number": subjects[pick].number})
        return found is not None and len(found["subjects"]) == 1

    async def by_code(clerk: int, pick: int) -> bool:
        found = await call(clerk, "subject.lookup", {"code": subjects[pick].code})
        return found is not None and len(found["subjects"]) == 1

    async def by_code_prefix(clerk: int, pick: int) -> bool:
        args = {"query": subjects[pick].code, "offset": 0, "limit": 51}
        found = await call(clerk, "subject.list", args)
        return found is not None and len(found["subjects"]) >= 1

    async def reveal(clerk: int, pick: int) -> bool:
        s = subjects[pick]
        shown = await call(clerk, "subject.reveal", {"id": s.id, "purpose": PURPOSE})
        return shown is not None and shown["number"] == s.number

    return {"search by number": by_number, "search by code": by_code,
            "search by code (list)": by_code_prefix, "reveal": reveal}


def api_requests(
    app: LocalAppliance, sessions: Sequence[aiohttp.ClientSession],
    subjects: Sequence[Subject],
) -> dict[str, Request]:
    base = app.url + "/api/v1"

    async def post(clerk: int, path: str, body: dict[str, str]) -> dict[str, Any] | None:
        async with sessions[clerk].post(base + path, json=body) as response:
            answer = await response.json()
            return answer if response.status == 200 else None

    async def by_number(clerk: int, pick: int) -> bool:
        found = await post(clerk, "/subjects/lookup", {"number": subjects[pick].number})
        return found is not None and len(found["subjects"]) == 1

    async def by_code(clerk: int, pick: int) -> bool:
        found = await post(clerk, "/subjects/lookup", {"code": subjects[pick].code})
        return found is not None and len(found["subjects"]) == 1

    async def reveal(clerk: int, pick: int) -> bool:
        s = subjects[pick]
        shown = await post(clerk, f"/subjects/{s.id}/reveal", {"purpose": PURPOSE})
        return shown is not None and shown["number"] == s.number

    return {"search by number": by_number, "search by code": by_code, "reveal": reveal}


def page_requests(
    app: LocalAppliance, sessions: Sequence[aiohttp.ClientSession], tokens: Sequence[str],
    subjects: Sequence[Subject],
) -> dict[str, Request]:
    csrf = [security.csrf_token(t) for t in tokens]

    async def post(clerk: int, path: str, fields: dict[str, str]) -> str | None:
        form = {security.CSRF_FIELD: csrf[clerk], **fields}
        async with sessions[clerk].post(app.url + path, data=form,
                                        allow_redirects=False) as response:
            text = await response.text()
            return text if response.status == 200 else None

    async def search(clerk: int, query: str, sid: str) -> bool:
        page = await post(clerk, "/search", {"query": query})
        return page is not None and f'data-subject-id="{sid}"' in page

    async def by_number(clerk: int, pick: int) -> bool:
        return await search(clerk, subjects[pick].number, subjects[pick].id)

    async def by_code(clerk: int, pick: int) -> bool:
        return await search(clerk, subjects[pick].code, subjects[pick].id)

    async def reveal(clerk: int, pick: int) -> bool:
        s = subjects[pick]
        page = await post(clerk, f"/subjects/{s.id}/reveal", {"purpose": PURPOSE})
        shown = f"{s.number[:4]}-{s.number[4:8]}-{s.number[8:]}"
        return page is not None and 'id="revealed-number"' in page and shown in page

    return {"search by number": by_number, "search by code": by_code, "reveal": reveal}


def http_sessions(
    app: LocalAppliance, tokens: Sequence[str], how: str
) -> list[aiohttp.ClientSession]:
    """One client session per clerk (its own connection, as each clerk's
    browser or integration has), signed in by bearer token or cookie."""
    sessions = []
    for token in tokens:
        headers = (
            {"Authorization": f"Bearer {token}"} if how == "api"
            else {"Cookie": f"{security.SESSION_COOKIE}={token}"}
        )
        sessions.append(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls_context(app), limit=1),
            headers=headers, cookie_jar=aiohttp.DummyCookieJar(),
        ))
    return sessions


async def pages_routed(app: LocalAppliance, token: str) -> bool:
    """Whether this console has the search and reveal pages yet."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls_context(app)),
        headers={"Cookie": f"{security.SESSION_COOKIE}={token}"},
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as http, http.get(app.url + "/search", allow_redirects=False) as response:
        return response.status == 200


# --- driving and reporting ---------------------------------------------------------------


async def drive(
    request: Request, clients: int, picks: Sequence[int]
) -> tuple[int, float, list[float]]:
    """Each of ``clients`` clerks sends its next request as soon as its last
    answer came, until ``picks`` are used up."""
    todo = iter(picks)
    latencies: list[float] = []
    errors = 0

    async def clerk(n: int) -> None:
        nonlocal errors
        for pick in todo:
            start = time.perf_counter()
            try:
                ok = await request(n, pick)
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    watch = Stopwatch()
    await asyncio.gather(*(clerk(n) for n in range(clients)))
    return errors, watch.elapsed, sorted(latencies)


async def measure(
    app: LocalAppliance, rows: Sequence[tuple[str, str, Request]], clients: int, count: int,
    rounds: int, subjects: int, rng: random.Random,
) -> list[Result]:
    """``count`` requests for each row, in ``rounds`` rounds that take the
    rows in turn (forwards, then backwards), so that load from elsewhere on
    the machine falls on every row alike; latencies and CPU time are pooled."""
    meter = CpuMeter(app)
    pooled: dict[int, tuple[int, float, list[float], dict[str, float]]] = {}
    for _, _, request in rows:
        await drive(request, clients, [rng.randrange(subjects) for _ in range(WARM_UP)])
    for turn in range(rounds):
        order = list(enumerate(rows))
        for index, (_, _, request) in order if turn % 2 == 0 else order[::-1]:
            picks = [rng.randrange(subjects) for _ in range(count // rounds)]
            meter.start()
            errors, seconds, latencies = await drive(request, clients, picks)
            cpu = meter.stop()
            e, spent, pooled_latencies, c = pooled.get(index, (0, 0.0, [], {}))
            pooled[index] = (e + errors, spent + seconds, pooled_latencies + latencies,
                             {k: c.get(k, 0.0) + v for k, v in cpu.items()})
    results = []
    for index, (path, op, _) in enumerate(rows):
        errors, seconds, latencies, cpu = pooled[index]
        result = Result(path, op, clients, len(latencies), errors, seconds, sorted(latencies),
                        cpu)
        print(f"  {path}, {op}, {clients} clerk(s): p50 {result.ms(50):.1f} ms,"
              f" p99 {result.ms(99):.1f} ms", file=sys.stderr, flush=True)
        results.append(result)
    return results


# Each operation's rows, measured one after the other (vault direct first),
# so that whatever else the machine does weighs on the paths alike.
ROWS = {
    "search by number": [("vault direct", "search by number"), ("API", "search by number"),
                         ("pages", "search by number")],
    "search by code": [("vault direct", "search by code"), ("API", "search by code"),
                       ("vault direct", "search by code (list)"), ("pages", "search by code")],
    "reveal": [("vault direct", "reveal"), ("API", "reveal"), ("pages", "reveal")],
}


async def bench(app: LocalAppliance, args: argparse.Namespace) -> tuple[list[Result], bool]:
    print(f"  signing in {args.clients} clerks…", file=sys.stderr, flush=True)
    _, tokens = await clerks(app, args.clients)
    payees = payee_rows(args.subjects, seed=args.seed, prefix="C")
    print(f"  importing {len(payees):,} payees…", file=sys.stderr, flush=True)
    await import_socket(app, tokens[0], payees, 10_000)
    subjects = await sample(app, tokens[0], payees, args.sample, args.seed)
    pages = await pages_routed(app, tokens[0])
    vault = VaultClient(app.socket, args.clients)
    api_sessions = http_sessions(app, tokens, "api")
    page_sessions = http_sessions(app, tokens, "pages")
    requests = {
        "vault direct": vault_requests(vault, tokens, subjects),
        "API": api_requests(app, api_sessions, subjects),
        "pages": page_requests(app, page_sessions, tokens, subjects) if pages else {},
    }
    rng = random.Random(args.seed)
    results: list[Result] = []
    try:
        for rows_of_op in ROWS.values():
            rows = [(path, op, requests[path][op]) for path, op in rows_of_op
                    if op in requests[path]]
            for clients, count in ((1, args.single), (args.clients, args.concurrent)):
                results += await measure(app, rows, clients, count, args.rounds,
                                         len(subjects), rng)
    finally:
        await vault.close()
        for session in api_sessions + page_sessions:
            await session.close()
    return results, pages


def baseline_op(path: str, op: str) -> str:
    """The vault-direct operation a console row is compared with."""
    if path == "pages" and op == "search by code":
        return "search by code (list)"
    return op


def report(results: Sequence[Result], args: argparse.Namespace, pages: bool) -> bool:
    print(f"\nSearch and reveal among {args.subjects:,} payees, {args.clients} clerks,"
          f" on {machine()}")
    print()
    print(table(
        ("path", "operation", "clerks", "requests", "errors", "p50 ms", "p99 ms", "max ms",
         "req/s"),
        [(r.path, r.op, r.clients, r.requests, r.errors, r.ms(50), r.ms(99), r.ms(100), r.rate)
         for r in results],
    ))
    direct = {(r.op, r.clients): r for r in results if r.path == "vault direct"}
    ratios = []
    for r in results:
        if r.path == "vault direct":
            continue
        base = direct[(baseline_op(r.path, r.op), r.clients)]
        ratios.append((
            r.path, r.op, r.clients, base.op,
            f"{r.ms(50) / base.ms(50):.2f}", f"{r.ms(99) / base.ms(99):.2f}",
            f"{r.rate / base.rate:.2f}",
        ))
    print("\nConsole path / vault direct, measured in this run (latency: lower is better;"
          " throughput: 1.00 means none lost):")
    print()
    print(table(("path", "operation", "clerks", "compared with", "p50 ratio", "p99 ratio",
                 "throughput ratio"), ratios))
    print("\nCPU milliseconds per request, by part (the console's share is what it adds):")
    print()
    parts = ("client", "console", "vault", "postgres")
    print(table(
        ("path", "operation", "clerks", *parts),
        [(r.path, r.op, r.clients, *(f"{r.cpu.get(k, 0.0) * 1000 / r.requests:.2f}"
                                     for k in parts)) for r in results],
    ))
    if not pages:
        print("\nThe pages were not measured: this console has no POST /search and"
              " POST /subjects/{id}/reveal pages yet.")
    return not any(r.errors for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_console",
        description="Search and reveal through the console (JSON API and pages) and on the "
        "vault's socket, with 1 and with 32 concurrent clerks, on a fresh local appliance "
        "(started and removed by this script).",
    )
    parser.add_argument("--subjects", type=int, default=10_000,
                        help="payees to import before measuring (default 10,000)")
    parser.add_argument("--clients", type=int, default=32,
                        help="concurrent clerks, each an MU account of its own (default 32)")
    parser.add_argument("--single", type=int, default=300,
                        help="requests per operation with one clerk (default 300)")
    parser.add_argument("--concurrent", type=int, default=2_000,
                        help="requests per operation with all clerks (default 2,000)")
    parser.add_argument("--sample", type=int, default=500,
                        help="distinct subjects the requests pick from (default 500)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds the requests are split into, the paths taking turns "
                        "(default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed for subjects and picks")
    args = parser.parse_args(argv)
    if not 1 <= args.subjects <= 1_000_000:
        parser.error("--subjects must be 1..1,000,000")
    if not 2 <= args.clients <= 128:
        parser.error("--clients must be 2..128")
    if not (1 <= args.single <= 100_000 and 1 <= args.concurrent <= 100_000):
        parser.error("--single and --concurrent must be 1..100,000")
    if not 1 <= args.rounds <= min(args.single, 20):
        parser.error("--rounds must be 1..20 and at most --single")
    if not 1 <= args.sample <= args.subjects:
        parser.error("--sample must be 1..--subjects")
    print("starting a local appliance…", file=sys.stderr, flush=True)
    with appliance("console") as app:
        results, pages = asyncio.run(bench(app, args))
    return 0 if report(results, args, pages) else 1


if __name__ == "__main__":
    sys.exit(main())
