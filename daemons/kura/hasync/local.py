"""This node's own PostgreSQL: is it out of recovery, and does a standby
stream from it? And, for the health page, how far behind each standby is
(on a primary) or how far this standby has replayed. (The role in local_dsn
needs pg_monitor to see pg_stat_replication's state and position columns;
that is why the vault, which has no such role, reads these from the status
file rather than asking PostgreSQL itself.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from kura.core.ha import LocalPg

log = logging.getLogger("kura.hasync")

CHECK_SQL = (
    "SELECT pg_is_in_recovery() AS in_recovery,"
    " count(*) FILTER (WHERE state = 'streaming') AS streaming,"
    " count(*) FILTER (WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))"
    " AS sync"
    " FROM pg_stat_replication"
)
# On a primary: each standby, its state and how far behind its replay is.
STANDBYS_SQL = (
    "SELECT application_name AS name, state, sync_state,"
    " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes,"
    " extract(epoch FROM replay_lag)::float8 AS lag_seconds"
    " FROM pg_stat_replication ORDER BY application_name"
)
# On a standby: how far it has received and replayed the primary's WAL.
REPLAY_SQL = (
    "SELECT pg_last_wal_replay_lsn()::text AS replay_lsn,"
    " pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint"
    " AS lag_bytes,"
    " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS lag_seconds"
)


@dataclass(frozen=True)
class LocalFacts:
    pg: LocalPg
    streaming: bool
    sync: bool
    # For the health page only (the core decides nothing from it): on a
    # primary {"standbys": [...]}, on a standby {"replay_lsn": ..., ...}.
    replication: dict[str, Any] = field(default_factory=dict, compare=False)


DOWN = LocalFacts(LocalPg.DOWN, False, False)


class LocalCheck:
    def __init__(self, dsn: str, timeout: float = 2.0) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
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
                self.dsn, autocommit=True, connect_timeout=max(2, int(self.timeout)),
                row_factory=dict_row)
        cur = await self._conn.execute(CHECK_SQL)
        row = await cur.fetchone()
        assert row is not None
        in_recovery, streaming, sync = row["in_recovery"], row["streaming"], row["sync"]
        replication: dict[str, Any]
        if in_recovery:
            cur = await self._conn.execute(REPLAY_SQL)
            replication = dict(await cur.fetchone() or {})
        else:
            cur = await self._conn.execute(STANDBYS_SQL)
            replication = {"standbys": [dict(r) for r in await cur.fetchall()]}
        return LocalFacts(LocalPg.RECOVERY if in_recovery else LocalPg.WRITABLE,
                          streaming > 0, sync > 0, replication)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=1)
