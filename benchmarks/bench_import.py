"""Bulk import benchmark: N generated payees through the vault's own import
path, against a plain COPY of the same rows as the baseline, in one run on one
fresh appliance.

1. vault (socket): the Unix-socket operation ``subject.import`` with JSON rows,
   one chunk per call, as kura-console would forward them: schema check, the
   importer's per-row validation, blind index, a data key per subject,
   AES-256-GCM, COPY into ``subjects`` and one audit entry per batch.
2. baseline: the same rows (code, name, kana, number as text) COPY'd by
   psycopg as kura_owner into a plaintext table with a unique index on the
   number, same cluster, one transaction per chunk. No encryption, no checks.
   It takes a fraction of a second, so it runs three times (a fresh table
   each time) and the median run is reported.
3. schema: PostgreSQL alone, the same rows already sealed (random bytes of the
   real sizes) COPY'd into a copy of ``subjects`` with its indexes and foreign
   keys: the most any import into this schema can do here.
4. vault (HTTPS): the same rows again, POST /api/v1/subjects/import through
   kura-console (the subjects table is emptied first so both start alike).

Run: ``.venv/bin/python -m benchmarks.bench_import`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import psycopg

from benchmarks.common import (
    Check,
    CpuMeter,
    Stopwatch,
    appliance,
    chunks,
    cpu_line,
    machine,
    payee_rows,
    print_checks,
    sign_in_mu,
    table,
    tls_context,
)
from kura.console.vaultclient import VaultClient
from kura.devserver import LocalAppliance

TARGET_RATE = 10_000  # subjects/s on the 2-core build machine
TARGET_SHARE = 0.25  # of the plaintext COPY baseline


@dataclass(frozen=True)
class Run:
    path: str
    rows: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # seconds by part

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def _check_result(path: str, results: Sequence[dict[str, Any]], expected: int) -> int:
    created = sum(int(r["created"]) for r in results)
    rejected = sum(len(r["rejected"]) for r in results)
    if created != expected or rejected:
        raise SystemExit(f"{path}: created {created} of {expected}, rejected {rejected}")
    return created


async def import_socket(
    app: LocalAppliance, token: str, rows: Sequence[dict[str, str]], chunk: int
) -> Run:
    vault = VaultClient(app.socket, 1)
    try:
        results = []
        watch = Stopwatch()
        for part in chunks(rows, chunk):
            results.append(await vault.call("subject.import", {"rows": list(part)}, token, "bench"))
        seconds = watch.elapsed
    finally:
        await vault.close()
    return Run(
        "vault, Unix socket (subject.import)", _check_result("socket", results, len(rows)), seconds
    )


async def import_http(
    app: LocalAppliance, token: str, rows: Sequence[dict[str, str]], chunk: int
) -> Run:
    connector = aiohttp.TCPConnector(ssl=tls_context(app), limit=1)
    headers = {"Authorization": f"Bearer {token}"}
    results = []
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        watch = Stopwatch()
        for part in chunks(rows, chunk):
            async with http.post(
                f"{app.url}/api/v1/subjects/import", json={"rows": list(part)}
            ) as response:
                body = await response.json()
                if response.status != 200:
                    raise SystemExit(f"HTTP import: {response.status} {json.dumps(body)[:300]}")
                results.append(body)
        seconds = watch.elapsed
    return Run(
        "vault, HTTPS (POST /api/v1/subjects/import)",
        _check_result("http", results, len(rows)),
        seconds,
    )


def copy_baseline(app: LocalAppliance, rows: Sequence[dict[str, str]], chunk: int) -> Run:
    with psycopg.connect(app.cluster.dsn("kura_owner"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_plain")
        conn.execute(
            "CREATE TABLE bench_plain (code text NOT NULL, name text NOT NULL,"
            " name_kana text NOT NULL, number text NOT NULL)"
        )
        conn.execute("CREATE UNIQUE INDEX bench_plain_number ON bench_plain (number)")
        try:
            watch = Stopwatch()
            for part in chunks(rows, chunk):
                with (
                    conn.transaction(),
                    conn.cursor() as cur,
                    cur.copy("COPY bench_plain (code, name, name_kana, number) FROM STDIN") as copy,
                ):
                    for r in part:
                        copy.write_row((r["code"], r["name"], r["name_kana"], r["number"]))
            seconds = watch.elapsed
            row = conn.execute("SELECT count(*) FROM bench_plain").fetchone()
            count = int(row[0]) if row else 0
        finally:
            conn.execute("DROP TABLE IF EXISTS bench_plain")
    if count != len(rows):
        raise SystemExit(f"baseline: {count} rows of {len(rows)}")
    return Run("baseline: plain COPY, no encryption", count, seconds)


def copy_presealed(app: LocalAppliance, rows: Sequence[dict[str, str]], chunk: int) -> Run:
    """PostgreSQL's own ceiling for the subjects schema: rows already sealed
    (random bytes of the real sizes stand in for the ciphertexts) COPY'd into a
    copy of ``subjects`` with its six indexes and three foreign keys."""
    sealed = [
        (
            str(uuid.uuid4()),
            "payee",
            r["code"],
            r["name"],
            r["name_kana"],
            None,
            None,
            "{payment_record}",
            "last_payment",
            1,
            os.urandom(72),
            os.urandom(40),
            os.urandom(32),
            "bench",
        )
        for r in rows
    ]
    columns = (
        "id, kind, code, name, name_kana, employee_id, birth_date, purposes,"
        " retention_basis, kek_version, wrapped_key, number_ct, number_bidx, created_by"
    )
    with psycopg.connect(app.cluster.dsn("kura_owner"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_sealed")
        conn.execute("CREATE TABLE bench_sealed (LIKE subjects INCLUDING ALL)")
        conn.execute(
            "ALTER TABLE bench_sealed"
            " ADD FOREIGN KEY (employee_id) REFERENCES bench_sealed (id),"
            " ADD FOREIGN KEY (retention_basis) REFERENCES retention_rules (basis),"
            " ADD FOREIGN KEY (kek_version) REFERENCES keyring (version)"
        )
        try:
            watch = Stopwatch()
            for part in chunks(sealed, chunk):
                with (
                    conn.transaction(),
                    conn.cursor() as cur,
                    cur.copy(f"COPY bench_sealed ({columns}) FROM STDIN") as copy,
                ):
                    for row in part:
                        copy.write_row(row)
            seconds = watch.elapsed
        finally:
            conn.execute("DROP TABLE IF EXISTS bench_sealed")
    return Run("PostgreSQL alone: pre-sealed rows, subjects schema", len(sealed), seconds)


def empty_subjects(app: LocalAppliance) -> None:
    """Start the next path from an empty table, and from a fresh checkpoint."""
    with psycopg.connect(app.cluster.dsn("kura_owner"), autocommit=True) as conn:
        conn.execute("TRUNCATE subjects CASCADE")
    checkpoint(app)


def checkpoint(app: LocalAppliance) -> None:
    app.cluster.psql("postgres", "CHECKPOINT;")


async def bench(app: LocalAppliance, args: argparse.Namespace) -> list[Run]:
    rows = payee_rows(args.subjects, seed=args.seed)
    token = await sign_in_mu(app)
    runs: list[Run] = []
    meter = CpuMeter(app)
    dirty = False  # whether the subjects table holds rows from an earlier path
    for path in args.paths.split(","):
        if dirty:
            empty_subjects(app)
        checkpoint(app)
        meter.start()
        if path == "socket":
            run = replace(await import_socket(app, token, rows, args.chunk), cpu=meter.stop())
        elif path == "baseline":
            # It takes a fraction of a second, so one run is at the mercy of the
            # machine's moods: the median of three.
            tries = []
            for _ in range(3):
                meter.start()
                tries.append(replace(copy_baseline(app, rows, args.chunk), cpu=meter.stop()))
            run = sorted(tries, key=lambda r: r.seconds)[1]
        elif path == "http":
            run = replace(await import_http(app, token, rows, args.chunk), cpu=meter.stop())
        elif path == "schema":
            run = replace(copy_presealed(app, rows, args.chunk), cpu=meter.stop())
        else:
            raise SystemExit(f"unknown path {path!r}")
        runs.append(run)
        dirty = dirty or path in ("socket", "http")
        print(f"  {runs[-1].path}: {runs[-1].rate:,.0f} rows/s", file=sys.stderr, flush=True)
    return runs


def report(runs: Sequence[Run], args: argparse.Namespace) -> bool:
    baseline = next((r for r in runs if r.path.startswith("baseline")), None)
    print(
        f"\nBulk import: {args.subjects:,} generated payees, {args.chunk:,} rows per call,"
        f" on {machine()}"
    )
    print()
    print(
        table(
            ("path", "rows", "seconds", "rows/s", "of baseline"),
            [
                (
                    r.path,
                    r.rows,
                    r.seconds,
                    r.rate,
                    f"{r.rate / baseline.rate:.0%}" if baseline else "-",
                )
                for r in runs
            ],
        )
    )
    print()
    for r in runs:
        print(f"{r.path}: {cpu_line(r.cpu, r.rows, 'row')}")
    vault = next((r for r in runs if r.path.startswith("vault, Unix")), None)
    checks = []
    if vault:
        checks.append(
            Check(
                "import via the vault",
                f">= {TARGET_RATE:,} rows/s",
                f"{vault.rate:,.0f} rows/s",
                vault.rate >= TARGET_RATE,
            )
        )
        if baseline:
            share = vault.rate / baseline.rate
            checks.append(
                Check(
                    "import / plain COPY",
                    f">= {TARGET_SHARE:.0%}",
                    f"{share:.0%}",
                    share >= TARGET_SHARE,
                )
            )
    print_checks(checks)
    return all(c.met for c in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_import",
        description="Bulk import through the vault versus a plain COPY of the same rows, "
        "on a fresh local appliance (started and removed by this script).",
    )
    parser.add_argument(
        "--subjects",
        type=int,
        default=100_000,
        help="generated payees to import (default 100,000; at most 1,000,000)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=10_000,
        help="rows per import call and per baseline COPY (default 10,000)",
    )
    parser.add_argument(
        "--paths",
        default="socket,baseline,schema,http",
        help="what to run, in order: socket, baseline, schema, http"
        " (default socket,baseline,schema,http)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for the generated subjects")
    args = parser.parse_args(argv)
    if not 1 <= args.subjects <= 1_000_000 or not 1 <= args.chunk <= 100_000:
        parser.error("--subjects must be 1..1,000,000 and --chunk 1..100,000")
    print(
        f"starting a local appliance; importing {args.subjects:,} subjects…",
        file=sys.stderr,
        flush=True,
    )
    with appliance("import") as app:
        runs = asyncio.run(bench(app, args))
    met = report(runs, args)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
