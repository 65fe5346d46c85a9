"""The vault's one way into PostgreSQL. Every query the vault makes is here;
``Store.transaction()`` hands out a ``Tx`` whose methods run inside one
transaction, and ``Tx.append_audit`` adds the audit entry to that same
transaction, so an action and its record commit together or not at all.

The audit chain needs one writer at a time: ``append_audit`` takes a
transaction-scoped advisory lock, reads the head and inserts the next entry
with the next sequence number. The lock is released at commit, so the
critical section is the insert and the commit, nothing else. Lock and head go
in one round trip (two statements in one simple query: the second takes its
snapshot after the first holds the lock), because every round trip inside the
critical section waits its turn in a busy event loop."""

from __future__ import annotations

import functools
import json
import select
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from kura.core import audit
from kura.core.errors import Unavailable

AUDIT_LOCK = 0x6B757261  # "kura"
_LOCK_AND_HEAD = (
    f"SELECT pg_advisory_xact_lock({AUDIT_LOCK});"
    " SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
).encode()

SUBJECT_COLUMNS = (
    "id, kind, code, name, name_kana, employee_id, birth_date, purposes, retention_basis,"
    " retention_event, kek_version, wrapped_key, number_ct, created_at, created_by, updated_at"
)
COPY_COLUMNS = (
    "id",
    "kind",
    "code",
    "name",
    "name_kana",
    "employee_id",
    "birth_date",
    "purposes",
    "retention_basis",
    "kek_version",
    "wrapped_key",
    "number_ct",
    "number_bidx",
    "created_by",
)

Row = dict[str, Any]


class Store:
    def __init__(self, dsn: str, min_size: int = 2, max_size: int = 16) -> None:
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=10.0,
            kwargs={"row_factory": dict_row},
            # After PostgreSQL restarts, idle connections are dead without knowing
            # it; checking each one as it is handed out spares the first requests
            # a 503 (see _check_connection: no round trip when nothing is amiss).
            check=_check_connection,
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield Tx(conn)
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            raise Unavailable(
                "the database is unavailable", "データベースに接続できません。"
            ) from exc


async def _check_connection(conn: psycopg.AsyncConnection[Row]) -> None:
    """The pool's check, without a round trip for a healthy connection: an idle
    connection has nothing to read unless the server closed it (a restart, a
    terminated backend) or sent a notice; only then does it get the usual check,
    an empty query, which raises if the connection is dead."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    if select.select([conn.fileno()], [], [], 0)[0]:
        await AsyncConnectionPool.check_connection(conn)


class Tx:
    """Queries inside one transaction."""

    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self.conn = conn

    async def one(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Row | None:
        cur = await self.conn.execute(sql.encode(), params)
        return await cur.fetchone()

    async def all(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Row]:
        cur = await self.conn.execute(sql.encode(), params)
        return await cur.fetchall()

    async def run(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> int:
        cur = await self.conn.execute(sql.encode(), params)
        return cur.rowcount

    # --- the audit chain -------------------------------------------------

    async def append_audit(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        outcome: str = "ok",
        target: str = "",
        purpose: str = "",
        client: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> audit.AuditEntry:
        cur = await self.conn.execute(_LOCK_AND_HEAD)
        if not cur.nextset():  # the second statement's result: the head
            raise RuntimeError("the audit head query returned no result")
        head = await cur.fetchone()
        prev = audit.ChainHead(int(head["seq"]), bytes(head["hash"])) if head else None
        # make_entry refuses anything that looks like a My Number.
        entry = audit.make_entry(
            prev,
            at=datetime.now(UTC),
            actor=actor,
            role=role,
            action=action,
            outcome=outcome,
            target=target,
            purpose=purpose,
            client=client,
            detail=detail,
        )
        await self.conn.execute(
            "INSERT INTO audit (seq, at, actor, role, action, outcome, target, purpose, client,"
            " detail, prev_hash, hash) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                entry.seq,
                entry.at,
                actor,
                role,
                action,
                outcome,
                target,
                purpose,
                client,
                json.dumps(entry.detail, ensure_ascii=False, default=dict),
                entry.prev_hash,
                entry.hash,
            ),
        )
        return entry

    async def audit_head(self) -> Row | None:
        return await self.one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")

    async def last_checkpoint(self) -> Row | None:
        return await self.one("SELECT seq, at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")

    async def insert_checkpoint(self, cp: audit.Checkpoint) -> None:
        await self.run(
            "INSERT INTO audit_checkpoints (seq, hash, at, signature, public_key)"
            " VALUES (%s,%s,%s,%s,%s) ON CONFLICT (seq) DO NOTHING",
            (cp.seq, cp.hash, cp.at, cp.signature, cp.public_key),
        )

    async def audit_entries(self) -> list[audit.AuditEntry]:
        rows = await self.all("SELECT * FROM audit ORDER BY seq")
        return [entry_from_row(r) for r in rows]

    async def checkpoints(self) -> list[audit.Checkpoint]:
        rows = await self.all("SELECT * FROM audit_checkpoints ORDER BY seq")
        return [
            audit.Checkpoint(
                seq=int(r["seq"]),
                hash=bytes(r["hash"]),
                at=r["at"],
                signature=bytes(r["signature"]),
                public_key=bytes(r["public_key"]),
            )
            for r in rows
        ]

    # --- keyring -------------------------------------------------------------

    async def keyring(self) -> dict[int, bytes]:
        rows = await self.all("SELECT version, wrapped FROM keyring ORDER BY version")
        return {int(r["version"]): bytes(r["wrapped"]) for r in rows}

    async def add_keyring_version(self, version: int, wrapped: bytes) -> None:
        await self.run("INSERT INTO keyring (version, wrapped) VALUES (%s, %s)", (version, wrapped))

    # --- settings ------------------------------------------------------------

    async def setting(self, key: str) -> Any:
        row = await self.one("SELECT value FROM settings WHERE key = %s", (key,))
        return row["value"] if row else None

    async def set_setting(self, key: str, value: Any) -> None:
        await self.run(
            "INSERT INTO settings (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, json.dumps(value, ensure_ascii=False)),
        )

    # --- users and sessions --------------------------------------------------

    async def user_by_name(self, username: str, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT * FROM users WHERE username = %s" + (" FOR UPDATE" if lock else ""),
            (username,),
        )

    async def user_by_id(self, user_id: int, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT * FROM users WHERE id = %s" + (" FOR UPDATE" if lock else ""), (user_id,)
        )

    async def count_users(self, lock: bool = False) -> int:
        """How many accounts exist; ``lock`` keeps others from adding one until commit
        (so that only one first DA can ever be made)."""
        if lock:
            await self.run("LOCK TABLE users IN EXCLUSIVE MODE")
        row = await self.one("SELECT count(*) AS n FROM users")
        return int(row["n"]) if row else 0

    async def list_users(self) -> list[Row]:
        return await self.all(
            "SELECT username, display_name, role, disabled, must_change_password,"
            " totp_secret_ct IS NOT NULL AS totp, locked_until, last_login_at, created_at"
            " FROM users ORDER BY username"
        )

    async def update_user(self, user_id: int, changes: Mapping[str, Any]) -> None:
        """``changes`` maps fixed column names (role, disabled, display_name) to values."""
        sets = ", ".join(f"{column} = %s" for column in changes)
        await self.run(f"UPDATE users SET {sets} WHERE id = %s", [*changes.values(), user_id])

    async def begin_totp(
        self, user_id: int, kek_version: int, wrapped_key: bytes, pending_ct: bytes
    ) -> None:
        await self.run(
            "UPDATE users SET totp_kek_version = %s, totp_wrapped_key = %s, totp_pending_ct = %s"
            " WHERE id = %s",
            (kek_version, wrapped_key, pending_ct, user_id),
        )

    async def confirm_totp(
        self, user_id: int, secret_ct: bytes, step: int, session_digest: bytes
    ) -> None:
        await self.run(
            "UPDATE users SET totp_secret_ct = %s, totp_pending_ct = NULL, totp_last_step = %s"
            " WHERE id = %s",
            (secret_ct, step, user_id),
        )
        await self.run(
            "UPDATE sessions SET mfa_done = true WHERE token_digest = %s", (session_digest,)
        )

    async def set_totp_last_step(self, user_id: int, step: int) -> None:
        await self.run("UPDATE users SET totp_last_step = %s WHERE id = %s", (step, user_id))

    async def clear_totp(self, user_id: int) -> None:
        await self.run(
            "UPDATE users SET totp_secret_ct = NULL, totp_pending_ct = NULL,"
            " totp_last_step = NULL WHERE id = %s",
            (user_id,),
        )

    async def insert_user(
        self, username: str, role: str, display_name: str, password_hash: str
    ) -> int:
        row = await self.one(
            "INSERT INTO users (username, role, display_name, password_hash)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (username, role, display_name, password_hash),
        )
        assert row is not None
        await self.run(
            "INSERT INTO password_history (user_id, hash) VALUES (%s, %s)",
            (row["id"], password_hash),
        )
        return int(row["id"])

    async def set_password(self, user_id: int, password_hash: str, must_change: bool) -> None:
        await self.run(
            "UPDATE users SET password_hash = %s, password_changed_at = now(),"
            " must_change_password = %s, failed_logins = 0, locked_until = NULL WHERE id = %s",
            (password_hash, must_change, user_id),
        )
        await self.run(
            "INSERT INTO password_history (user_id, hash) VALUES (%s, %s)",
            (user_id, password_hash),
        )

    async def password_history(self, user_id: int, count: int) -> list[str]:
        rows = await self.all(
            "SELECT hash FROM password_history WHERE user_id = %s"
            " ORDER BY created_at DESC LIMIT %s",
            (user_id, count),
        )
        return [str(r["hash"]) for r in rows]

    async def record_login_failure(
        self, user_id: int, failures: int, locked: datetime | None
    ) -> None:
        await self.run(
            "UPDATE users SET failed_logins = %s, locked_until = %s WHERE id = %s",
            (failures, locked, user_id),
        )

    async def record_login_success(self, user_id: int) -> None:
        await self.run(
            "UPDATE users SET failed_logins = 0, locked_until = NULL, last_login_at = now()"
            " WHERE id = %s",
            (user_id,),
        )

    async def insert_session(
        self, digest: bytes, user_id: int, client: str, mfa_done: bool, at: datetime
    ) -> Row:
        # ``at`` is the vault's clock, the one that later judges the session's age.
        row = await self.one(
            "INSERT INTO sessions (token_digest, user_id, client, mfa_done, created_at, last_seen)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING created_at, last_seen",
            (digest, user_id, client, mfa_done, at, at),
        )
        assert row is not None
        return row

    async def session(self, digest: bytes) -> Row | None:
        return await self.one(
            "SELECT s.token_digest, s.created_at, s.last_seen, s.client, s.mfa_done,"
            " u.id AS user_id, u.username, u.role, u.disabled, u.must_change_password,"
            " u.password_changed_at, u.totp_secret_ct IS NOT NULL AS totp_enrolled,"
            " u.language, u.display_name"
            " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_digest = %s",
            (digest,),
        )

    async def touch_session(self, digest: bytes, seen: datetime) -> None:
        await self.run("UPDATE sessions SET last_seen = %s WHERE token_digest = %s", (seen, digest))

    async def delete_session(self, digest: bytes) -> None:
        await self.run("DELETE FROM sessions WHERE token_digest = %s", (digest,))

    async def delete_user_sessions(self, user_id: int) -> None:
        await self.run("DELETE FROM sessions WHERE user_id = %s", (user_id,))

    # --- subjects ------------------------------------------------------------

    async def subject(self, subject_id: str, lock: bool = False) -> Row | None:
        return await self.one(
            f"SELECT {SUBJECT_COLUMNS} FROM subjects WHERE id = %s"
            + (" FOR UPDATE" if lock else ""),
            (subject_id,),
        )

    async def subject_by_bidx(self, bidx: bytes) -> Row | None:
        return await self.one(
            f"SELECT {SUBJECT_COLUMNS} FROM subjects WHERE number_bidx = %s", (bidx,)
        )

    async def subject_by_code(self, kind: str, code: str) -> Row | None:
        """The employee or payee with ``code`` (dependents' codes are not unique: the first)."""
        return await self.one(
            f"SELECT {SUBJECT_COLUMNS} FROM subjects WHERE kind = %s AND code = %s"
            " ORDER BY created_at LIMIT 1",
            (kind, code),
        )

    async def subjects_matching(self, bidxs: Sequence[bytes], codes: Sequence[str]) -> list[Row]:
        # Binary parameters: two lists of 2,000 values dump four times faster.
        # Never prepared: a generic plan cannot hash the arrays and, once the
        # table's statistics are stale (emptied, then refilled), compares every
        # row with every value. Every kind is named so that the (kind, code)
        # index can serve a big table.
        cur = await self.conn.execute(
            "SELECT id, kind, code, employee_id, number_bidx FROM subjects"
            " WHERE number_bidx = ANY(%b)"
            " OR (kind = ANY('{employee,dependent,payee}') AND code = ANY(%b))",
            (list(bidxs), list(codes)),
            prepare=False,
        )
        return await cur.fetchall()

    async def employee_ids(self, codes: Sequence[str]) -> dict[str, uuid.UUID]:
        rows = await self.all(
            "SELECT id, code FROM subjects WHERE kind = 'employee' AND code = ANY(%s)",
            (list(codes),),
        )
        return {str(r["code"]): r["id"] for r in rows}

    async def list_subjects(
        self,
        kind: str | None,
        query: str | None,
        offset: int,
        limit: int,
        ids: Sequence[str] | None = None,
    ) -> list[Row]:
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if kind:
            where.append("kind = %s")
            params.append(kind)
        if query:
            like = _like_prefix(query)
            where.append("(name LIKE %s OR name_kana LIKE %s OR code LIKE %s)")
            params += [like, like, like]
        if ids is not None:
            where.append("id = ANY(%s::uuid[])")
            params.append(list(ids))
        params += [limit, offset]
        return await self.all(
            f"SELECT {SUBJECT_COLUMNS} FROM subjects WHERE {' AND '.join(where)}"
            " ORDER BY kind, code LIMIT %s OFFSET %s",
            params,
        )

    async def insert_subject(self, values: Mapping[str, Any]) -> None:
        await self.run(
            f"INSERT INTO subjects ({', '.join(COPY_COLUMNS)})"
            f" VALUES ({', '.join(['%s'] * len(COPY_COLUMNS))})",
            [values[c] for c in COPY_COLUMNS],
        )

    async def copy_subjects(self, rows: Iterable[Sequence[Any]]) -> None:
        purposes = COPY_COLUMNS.index("purposes")
        async with (
            self.conn.cursor() as cur,
            cur.copy(f"COPY subjects ({', '.join(COPY_COLUMNS)}) FROM STDIN".encode()) as copy,
        ):
            for row in rows:
                cells = list(row)
                cells[purposes] = _array_literal(tuple(cells[purposes]))
                await copy.write_row(cells)

    async def update_subject(self, subject_id: str, changes: Mapping[str, Any]) -> None:
        sets = ", ".join(f"{column} = %s" for column in changes)
        await self.run(
            f"UPDATE subjects SET {sets}, updated_at = now() WHERE id = %s",
            [*changes.values(), subject_id],
        )

    async def subject_keys(self, after: str | None, batch: int) -> list[Row]:
        return await self.all(
            "SELECT id, kek_version, wrapped_key FROM subjects"
            " WHERE (%s::uuid IS NULL OR id > %s::uuid) ORDER BY id LIMIT %s FOR UPDATE",
            (after, after, batch),
        )

    async def set_subject_key(self, subject_id: Any, version: int, wrapped: bytes) -> None:
        await self.run(
            "UPDATE subjects SET kek_version = %s, wrapped_key = %s WHERE id = %s",
            (version, wrapped, subject_id),
        )

    # --- audit queries -------------------------------------------------------

    async def search_audit(
        self,
        actor: str | None,
        action: str | None,
        since: datetime | None,
        until: datetime | None,
        offset: int,
        limit: int,
    ) -> list[Row]:
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if actor:
            where.append("actor = %s")
            params.append(actor)
        if action:
            where.append("action LIKE %s")
            params.append(_like_prefix(action))
        if since:
            where.append("at >= %s")
            params.append(since)
        if until:
            where.append("at < %s")
            params.append(until)
        params += [limit, offset]
        return await self.all(
            "SELECT seq, at, actor, role, action, outcome, target, purpose, client, detail"
            f" FROM audit WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT %s OFFSET %s",
            params,
        )


@functools.lru_cache(maxsize=64)

    # --- registration requests and their documents (kura.vault.requests) ------

    # --- export requests (kura.vault.exports) ---------------------------------

    # --- retention rules and disposal (kura.vault.disposals) ------------------

    # --- reports (kura.vault.reports) -----------------------------------------


def _array_literal(items: tuple[str, ...]) -> str:
    """A text[] in PostgreSQL's input syntax, for COPY: psycopg's list dumper
    costs more than the rest of the row, and an import repeats a few lists."""
    quoted = ('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items)
    return "{" + ",".join(quoted) + "}"


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def entry_from_row(r: Row) -> audit.AuditEntry:
    return audit.AuditEntry(
        seq=int(r["seq"]),
        at=r["at"],
        actor=r["actor"],
        role=r["role"],
        action=r["action"],
        outcome=r["outcome"],
        target=r["target"],
        purpose=r["purpose"],
        client=r["client"],
        detail=r["detail"],
        prev_hash=bytes(r["prev_hash"]),
        hash=bytes(r["hash"]),
    )
