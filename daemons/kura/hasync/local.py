"""This node's own PostgreSQL: is it out of recovery, and does a standby
stream from it? (The role in local_dsn needs pg_monitor to see
pg_stat_replication's state columns.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import psycopg

from kura.core.ha import LocalPg

log = logging.getLogger("kura.hasync")

CHECK_SQL = (
    "SELECT pg_is_in_recovery(),"
    " count(*) FILTER (WHERE state = 'streaming'),"
    " count(*) FILTER (WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))"
    " FROM pg_stat_replication"
)


@dataclass(frozen=True)
class LocalFacts:
    pg: LocalPg
    streaming: bool
    sync: bool


DOWN = LocalFacts(LocalPg.DOWN, False, False)


class LocalCheck:
    def __init__(self, dsn: str, timeout: float = 2.0) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._conn: psycopg.AsyncConnection[tuple[bool, int, int]] | None = None
        self._said_down = False

    async def check(self) -> LocalFacts:
        try:
            facts = await asyncio.wait_for(self._query(), timeout=self.timeout)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if not self._said_down:
                log.warning("local PostgreSQL does not answer: %s",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self._said_down = True
            await self.close()
            return DOWN
        self._said_down = False
        return facts

    async def _query(self) -> LocalFacts:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(2, int(self.timeout)))
        cur = await self._conn.execute(CHECK_SQL)
        row = await cur.fetchone()
        assert row is not None
        in_recovery, streaming, sync = row
        return LocalFacts(LocalPg.RECOVERY if in_recovery else LocalPg.WRITABLE,
                          streaming > 0, sync > 0)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=1)
