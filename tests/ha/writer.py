"""A client of the HA lab, run inside the client namespace (`ip netns exec`).

Two modes, one line of text per event on stdout, flushed at once so that a test can read
them while the process runs:

- writer: one INSERT at a time into lab_writes with synchronous commit, against the first
  target that takes it; "ack ID START END TARGET" for each commit that returned, "fail ID
  START END TARGET" otherwise. Only an "ack" counts as acknowledged.
- probe: every round, one INSERT into lab_probe on every target at the same time; "probe
  START TARGET1=0|1 TARGET2=0|1". Two 1s in one round would be two writable primaries.

A commit that does not return in time is abandoned, never counted: PostgreSQL makes a
cancelled synchronous-commit wait visible locally (with a warning) although no standby has
it, so a client that counted it would claim a write the pair may lose. A commit that comes
back with that warning is not counted either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

import psycopg

CONNECT_TIMEOUT = 1.0
COMMIT_TIMEOUT = 2.0
SYNC_WARNING = "synchronous replication"


class Target:
    def __init__(self, host: str, ca: str) -> None:
        self.host = host
        self.ca = ca
        self.conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self.warned = False

    async def connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self.conn is None or self.conn.closed:
            conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(
                host=self.host, port=5432, dbname="postgres", user="kura_lab",
                sslmode="verify-full", sslrootcert=self.ca, connect_timeout=1,
                autocommit=True), CONNECT_TIMEOUT + 0.5)
            conn.add_notice_handler(self._notice)
            self.conn = conn
        return self.conn

    def _notice(self, diag: psycopg.errors.Diagnostic) -> None:
        if SYNC_WARNING in (diag.message_primary or "") + (diag.message_detail or ""):
            self.warned = True

    async def insert(self, sql: str, params: tuple[object, ...]) -> bool:
        """True only when the commit returned, in time and without the local-only warning."""
        try:
            conn = await self.connect()
            self.warned = False
            await asyncio.wait_for(conn.execute(sql, params), COMMIT_TIMEOUT)
            return not self.warned
        except (psycopg.Error, OSError, TimeoutError):
            await self.drop()
            return False

    async def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                await asyncio.wait_for(conn.close(), 0.5)


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def writer(targets: list[Target], start_id: int, pause: float) -> None:
    current = 0
    next_id = start_id
    while True:
        for step in range(len(targets)):
            target = targets[(current + step) % len(targets)]
            began = time.time()
            ok = await target.insert(
                "INSERT INTO lab_writes (id, node) VALUES (%s, inet_server_addr()::text)",
                (next_id,))
            emit(f"{'ack' if ok else 'fail'} {next_id} {began:.3f} {time.time():.3f} "
                 f"{target.host}")
            next_id += 1
            if ok:
                current = (current + step) % len(targets)
                break
        else:
            await asyncio.sleep(0.05)
        await asyncio.sleep(pause)


async def probe(targets: list[Target], period: float) -> None:
    while True:
        began = time.time()
        results = await asyncio.gather(*(
            t.insert("INSERT INTO lab_probe (node) VALUES (%s)", (t.host,)) for t in targets))
        emit(f"probe {began:.3f} " + " ".join(
            f"{t.host}={int(ok)}" for t, ok in zip(targets, results, strict=True)))
        await asyncio.sleep(max(0.0, period - (time.time() - began)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["writer", "probe"])
    parser.add_argument("--ca", required=True)
    parser.add_argument("--start-id", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.02)
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    targets = [Target(host, args.ca) for host in args.targets]
    job = (writer(targets, args.start_id, args.pause) if args.mode == "writer"
           else probe(targets, 0.25))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(job)


if __name__ == "__main__":
    main()
