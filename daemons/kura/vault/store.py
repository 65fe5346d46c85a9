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
critical section waits its turn in a busy event loop.

The same round trip checks that the chain still extends the head the vault
trusts (``Store.trusted``: the last entry this process committed, or the
signed head file read at start): the row at the trusted seq must still hold
the trusted hash. An intruder who deleted or replaced the newest rows makes
``append_audit`` raise ``ChainDiverged`` before anything is chained onto the
shortened log; the vault then goes into its audit-integrity state."""

from __future__ import annotations

import functools
import json
import select
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from kura.core import audit
from kura.core.errors import NotReplicated, Standby, Unavailable

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

# The disposal views of a subject (s) and its employee (e): never a number.
_DISPOSAL_COLUMNS = (
    "s.id, s.kind, s.code, s.name, s.employee_id, s.retention_basis, s.retention_event,"
    " e.code AS employee_code, e.retention_basis AS employee_basis,"
    " e.retention_event AS employee_event"
)
DISPOSAL_LOCK = 0x6B757264  # "kurd": proposals and decisions of disposals
POLICY_LOCK = 0x6B757270  # "kurp": changes to the security policy
AGENTS_LOCK = 0x6B757261 + 0x100  # agents, their tokens, policies and bundles

Row = dict[str, Any]


def _lock_head_and_trusted(trusted_seq: int) -> bytes:
    # A literal int (no parameters in a two-statement simple query).
    return (
        f"SELECT pg_advisory_xact_lock({AUDIT_LOCK});"
        " SELECT seq, hash, (SELECT hash FROM audit WHERE seq ="
        f" {int(trusted_seq)}) AS trusted_hash FROM audit ORDER BY seq DESC LIMIT 1"
    ).encode()


class ChainDiverged(Exception):
    """The database's chain no longer extends the trusted head."""

    def __init__(self, trusted: audit.ChainHead, head: audit.ChainHead | None,
                 at_trusted: bytes | None) -> None:
        super().__init__(f"the audit chain no longer extends entry {trusted.seq}")
        self.trusted = trusted
        self.head = head
        self.at_trusted = at_trusted


# PostgreSQL's warning when a commit stops waiting for its synchronous standby
# ("canceling wait for synchronous replication ..."; the detail says the
# transaction "has already committed locally, but might not have been
# replicated to the standby").
SYNC_WAIT_CANCELLED = "wait for synchronous replication"


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
            configure=self._configure,
        )
        # Connections whose last commit came back with PostgreSQL's warning that
        # it stopped waiting for the synchronous standby: committed here only.
        self._unconfirmed: weakref.WeakSet[psycopg.AsyncConnection[Row]] = weakref.WeakSet()
        # The head the vault trusts; None until the vault has verified the chain
        # (or with [vault] audit_head_check off).
        self.trusted: audit.ChainHead | None = None
        self.head_check = True
        # Set when a write was refused as read-only (SQLSTATE 25006) or the
        # connection dropped: PostgreSQL may have changed role under us (HA
        # pair), and the vault asks it again (kura.vault.roles).
        self.role_suspect = False

    def advance(self, entry: audit.ChainHead) -> None:
        """After a commit: the entry just committed is the trusted head (commits
        of different tasks may finish in any order: keep the highest)."""
        if self.head_check and (self.trusted is None or entry.seq > self.trusted.seq):
            self.trusted = entry

    async def _configure(self, conn: psycopg.AsyncConnection[Row]) -> None:
        ref = weakref.ref(conn)

        def notice(diag: psycopg.errors.Diagnostic) -> None:
            text = (diag.message_primary or "") + (diag.message_detail or "")
            held = ref()
            if held is not None and SYNC_WAIT_CANCELLED in text:
                self._unconfirmed.add(held)

        conn.add_notice_handler(notice)

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        try:
            async with self.pool.connection() as conn:
                self._unconfirmed.discard(conn)
                async with conn.transaction():
                    tx = Tx(conn, self)
                    yield tx
                if tx.appended is not None:
                    # Committed here either way: the head outside follows it.
                    self.advance(tx.appended)
                if conn in self._unconfirmed:
                    # Committed locally, not confirmed by the standby: the
                    # caller gets an error, never an acknowledgement.
                    self._unconfirmed.discard(conn)
                    self.role_suspect = True
                    raise NotReplicated()
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            # The database is a standby now (demoted, or never promoted).
            self.role_suspect = True
            raise Standby() from exc
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            self.role_suspect = True
            raise Unavailable(
                "the database is unavailable", "データベースに接続できません。"
            ) from exc

    async def replication(self) -> Row:
        """Whether PostgreSQL is in recovery (a standby), and how far its
        replay has come: what the vault's role and its status rest on."""
        async with self.transaction() as tx:
            row = await tx.one(
                "SELECT pg_is_in_recovery() AS in_recovery,"
                " pg_last_wal_replay_lsn()::text AS replay_lsn,"
                " pg_last_xact_replay_timestamp() AS replayed_at,"
                " now() - pg_last_xact_replay_timestamp() AS lag"
            )
        assert row is not None
        return row


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

    def __init__(self, conn: psycopg.AsyncConnection[Row], store: Store | None = None) -> None:
        self.conn = conn
        self.store = store
        self.appended: audit.ChainHead | None = None  # the last entry this transaction added

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
        after: audit.ChainHead | None = None,
    ) -> audit.AuditEntry:
        """Append the next entry. ``after`` chains it from that head instead of
        the database's (only the integrity-fault entry does, from the trusted
        head, so the entries an intruder removed stay a visible gap)."""
        trusted = self.store.trusted if self.store is not None and after is None else None
        query = _LOCK_AND_HEAD if trusted is None else _lock_head_and_trusted(trusted.seq)
        cur = await self.conn.execute(query)
        if not cur.nextset():  # the second statement's result: the head
            raise RuntimeError("the audit head query returned no result")
        head = await cur.fetchone()
        prev = audit.ChainHead(int(head["seq"]), bytes(head["hash"])) if head else None
        if trusted is not None and trusted.seq > 0:
            at_trusted = bytes(head["trusted_hash"]) if head and head["trusted_hash"] else None
            if prev is None or prev.seq < trusted.seq or at_trusted != trusted.hash:
                raise ChainDiverged(trusted, prev, at_trusted)
        if after is not None:
            prev = after
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
        self.appended = audit.ChainHead(entry.seq, entry.hash)
        return entry

    async def audit_head_and(self, seq: int) -> tuple[Row | None, bytes | None]:
        """The head, and the hash of entry ``seq`` (None if there is none)."""
        head = await self.one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        row = await self.one("SELECT hash FROM audit WHERE seq = %s", (seq,))
        return head, bytes(row["hash"]) if row else None

    async def audit_link_breaks(self) -> frozenset[int]:
        """The seqs whose entry does not follow the stored entry before it (a
        deleted, moved or re-hashed neighbour), found by PostgreSQL without
        sending the chain over: what the sweep compares between full scans."""
        # One ordered scan with lag() is about twice as fast as a self-join
        # (0.44 s against 0.8 s for a million entries on the build VM).
        rows = await self.all(
            "SELECT seq FROM (SELECT seq, prev_hash, lag(seq) OVER w AS before_seq,"
            " lag(hash) OVER w AS before_hash FROM audit WINDOW w AS (ORDER BY seq)) t"
            " WHERE CASE WHEN before_seq IS NULL THEN seq <> 1 OR prev_hash <> %s"
            " ELSE before_seq <> seq - 1 OR before_hash <> prev_hash END"
            " ORDER BY seq LIMIT 10000",
            (audit.GENESIS,),
        )
        return frozenset(int(r["seq"]) for r in rows)

    async def checkpoint_mismatches(self) -> frozenset[int]:
        """The seqs of signed checkpoints whose entry is gone or holds another hash."""
        rows = await self.all(
            "SELECT c.seq FROM audit_checkpoints c LEFT JOIN audit a USING (seq)"
            " WHERE a.hash IS DISTINCT FROM c.hash ORDER BY c.seq LIMIT 10000"
        )
        return frozenset(int(r["seq"]) for r in rows)

    async def audit_range(self, first: int, last: int) -> list[audit.AuditEntry]:
        rows = await self.all(
            "SELECT * FROM audit WHERE seq BETWEEN %s AND %s ORDER BY seq", (first, last)
        )
        return [entry_from_row(r) for r in rows]

    async def checkpoints_after(self, seq: int) -> list[audit.Checkpoint]:
        rows = await self.all(
            "SELECT * FROM audit_checkpoints WHERE seq > %s ORDER BY seq", (seq,)
        )
        return [_checkpoint_from_row(r) for r in rows]

    async def insert_export(self, cp: audit.Checkpoint, sha256: str, actor: str) -> None:
        await self.run(
            "INSERT INTO audit_exports (seq, hash, at, signature, public_key, sha256, actor)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s)",
            (cp.seq, cp.hash, cp.at, cp.signature, cp.public_key, sha256, actor),
        )

    async def audit_exports(self, limit: int = 20) -> list[Row]:
        return await self.all(
            "SELECT seq, hash, at, sha256, actor FROM audit_exports ORDER BY id DESC LIMIT %s",
            (limit,),
        )

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
        return [_checkpoint_from_row(r) for r in rows]

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

    # --- security policy changes (kura.vault.policy) -------------------------

    async def lock_policy(self) -> None:
        """One policy change at a time, so that two admins' edits cannot both
        start from the same policy and the later one silently undo the other."""
        await self.run("SELECT pg_advisory_xact_lock(%s)", (POLICY_LOCK,))

    async def insert_policy_change(
        self,
        change_id: str,
        state: str,
        proposed_by: str,
        at: datetime,
        changes: Mapping[str, Any],
        base: Mapping[str, Any],
    ) -> None:
        """A new change; an 'applied' one is decided by its proposer at once."""
        decided = (proposed_by, at) if state != "proposed" else (None, None)
        await self.run(
            "INSERT INTO policy_changes (id, state, proposed_by, proposed_at, changes, base,"
            " decided_by, decided_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                change_id,
                state,
                proposed_by,
                at,
                json.dumps(changes, ensure_ascii=False),
                json.dumps(base, ensure_ascii=False),
                *decided,
            ),
        )

    async def policy_change(self, change_id: str, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT * FROM policy_changes WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (change_id,),
        )

    async def policy_changes(self, since: datetime) -> list[Row]:
        """The change waiting for a second person, if any, and every change
        applied, rejected or cancelled since ``since``; newest first."""
        return await self.all(
            "SELECT * FROM policy_changes WHERE state = 'proposed'"
            " OR (state <> 'superseded' AND decided_at >= %s)"
            " ORDER BY state <> 'proposed', coalesce(decided_at, proposed_at) DESC LIMIT 50",
            (since,),
        )

    async def finish_policy_change(
        self, change_id: Any, state: str, by: str, at: datetime, reason: str = ""
    ) -> None:
        await self.run(
            "UPDATE policy_changes SET state = %s, decided_by = %s, decided_at = %s, reason = %s"
            " WHERE id = %s",
            (state, by, at, reason, change_id),
        )

    async def count_active(self, role: str) -> int:
        row = await self.one(
            "SELECT count(*) AS n FROM users WHERE role = %s AND NOT disabled", (role,)
        )
        return int(row["n"]) if row else 0

    # --- endpoint agents (kura.vault.agents) ------------------------------------

    async def lock_agents(self) -> None:
        """One change to agents, tokens, policies or bundles at a time: a
        bundle's body is made from all of them, and two made at once from the
        same state would race for the next serial."""
        await self.run("SELECT pg_advisory_xact_lock(%s)", (AGENTS_LOCK,))

    async def insert_agent_token(self, row: Mapping[str, Any]) -> None:
        await self.run(
            "INSERT INTO agent_tokens (id, digest, profile, label, created_by, created_at,"
            " expires) VALUES (%(id)s, %(digest)s, %(profile)s, %(label)s, %(created_by)s,"
            " %(created_at)s, %(expires)s)",
            row,
        )

    async def agent_token_by_digest(self, digest: bytes) -> Row | None:
        return await self.one(
            "SELECT * FROM agent_tokens WHERE digest = %s FOR UPDATE", (digest,)
        )

    async def agent_token(self, token_id: str) -> Row | None:
        return await self.one("SELECT * FROM agent_tokens WHERE id = %s FOR UPDATE", (token_id,))

    async def agent_tokens(self, since: datetime) -> list[Row]:
        return await self.all(
            "SELECT id, profile, label, created_by, created_at, expires, used_at, agent_id,"
            " withdrawn_at, withdrawn_by FROM agent_tokens WHERE created_at >= %s"
            " OR (used_at IS NULL AND withdrawn_at IS NULL AND expires > %s)"
            " ORDER BY created_at DESC LIMIT 200",
            (since, since),
        )

    async def use_agent_token(self, token_id: Any, at: datetime, agent_id: str) -> None:
        await self.run(
            "UPDATE agent_tokens SET used_at = %s, agent_id = %s WHERE id = %s",
            (at, agent_id, token_id),
        )

    async def withdraw_agent_token(self, token_id: Any, at: datetime, by: str) -> None:
        await self.run(
            "UPDATE agent_tokens SET withdrawn_at = %s, withdrawn_by = %s WHERE id = %s",
            (at, by, token_id),
        )

    async def insert_agent(self, row: Mapping[str, Any]) -> None:
        await self.run(
            "INSERT INTO agents (agent_id, serial, profile, label, hostname, certificate,"
            " token_id, enrolled_at, address, last_seen) VALUES (%(agent_id)s, %(serial)s,"
            " %(profile)s, %(label)s, %(hostname)s, %(certificate)s, %(token_id)s,"
            " %(enrolled_at)s, %(address)s, %(enrolled_at)s)",
            row,
        )

    async def agent(self, agent_id: str, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT * FROM agents WHERE agent_id = %s" + (" FOR UPDATE" if lock else ""),
            (agent_id,),
        )

    async def agent_by_serial(self, serial: str, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT * FROM agents WHERE serial = %s" + (" FOR UPDATE" if lock else ""),
            (serial,),
        )

    async def agents(self, state: str | None = None) -> list[Row]:
        if state is None:
            return await self.all("SELECT * FROM agents ORDER BY enrolled_at")
        return await self.all(
            "SELECT * FROM agents WHERE state = %s ORDER BY enrolled_at", (state,)
        )

    async def revoked_agent_serials(self) -> list[str]:
        rows = await self.all("SELECT serial FROM agents WHERE state = 'revoked'")
        return [str(r["serial"]) for r in rows]

    async def revoke_agent(self, agent_id: str, at: datetime, by: str, reason: str) -> None:
        await self.run(
            "UPDATE agents SET state = 'revoked', revoked_at = %s, revoked_by = %s,"
            " revoke_reason = %s WHERE agent_id = %s",
            (at, by, reason, agent_id),
        )

    async def agent_heard(
        self, agent_id: str, at: datetime, address: str, policy_serial: int | None,
        posture: Mapping[str, Any] | None,
    ) -> None:
        """A heartbeat; without a report (None) the last one's serial and posture stay."""
        await self.run(
            "UPDATE agents SET last_seen = %s, address = %s,"
            " policy_serial = coalesce(%s, policy_serial), posture = coalesce(%s, posture)"
            " WHERE agent_id = %s",
            (at, address, policy_serial,
             None if posture is None else json.dumps(posture, ensure_ascii=False), agent_id),
        )

    async def agent_judged(
        self, agent_id: str, compliant: bool, problems: Sequence[Mapping[str, Any]]
    ) -> None:
        await self.run(
            "UPDATE agents SET compliant = %s, problems = %s WHERE agent_id = %s",
            (compliant, json.dumps(list(problems), ensure_ascii=False), agent_id),
        )

    async def agent_policy(self, profile: str) -> Row | None:
        return await self.one(
            "SELECT * FROM agent_policies WHERE profile = %s ORDER BY version DESC LIMIT 1",
            (profile,),
        )

    async def insert_agent_policy(
        self, profile: str, version: int, policy: Mapping[str, Any],
        tests: Sequence[Mapping[str, Any]], by: str, at: datetime,
    ) -> None:
        await self.run(
            "INSERT INTO agent_policies (profile, version, policy, tests, saved_by, saved_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (profile, version, json.dumps(policy, ensure_ascii=False),
             json.dumps(list(tests), ensure_ascii=False), by, at),
        )

    async def newest_bundle(self, profile: str) -> Row | None:
        return await self.one(
            "SELECT * FROM agent_bundles WHERE profile = %s ORDER BY serial DESC LIMIT 1",
            (profile,),
        )

    async def next_bundle_serial(self) -> int:
        row = await self.one("SELECT nextval('agent_bundles_serial_seq') AS serial")
        assert row is not None
        return int(row["serial"])

    async def insert_bundle(
        self, serial: int, profile: str, version: int, issued: datetime, body: bytes,
        signature: bytes,
    ) -> None:
        await self.run(
            "INSERT INTO agent_bundles (serial, profile, version, issued, body, signature)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (serial, profile, version, issued, body, signature),
        )

    async def open_alerts(self) -> list[Row]:
        return await self.all(
            "SELECT * FROM alerts WHERE cleared IS NULL ORDER BY raised DESC LIMIT 500"
        )

    async def recent_alerts(self, since: datetime) -> list[Row]:
        return await self.all(
            "SELECT * FROM alerts WHERE cleared IS NULL OR cleared >= %s"
            " ORDER BY cleared IS NOT NULL, raised DESC LIMIT 500",
            (since,),
        )

    async def raise_alert(
        self, kind: str, target: str, at: datetime, detail: Mapping[str, Any]
    ) -> bool:
        """True if the alert is new (none of this kind was open for ``target``)."""
        return bool(await self.run(
            "INSERT INTO alerts (kind, target, raised, detail) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (kind, target) WHERE cleared IS NULL DO NOTHING",
            (kind, target, at, json.dumps(detail, ensure_ascii=False)),
        ))

    async def clear_alerts(self, target: str, at: datetime, kinds: Sequence[str]) -> int:
        return await self.run(
            "UPDATE alerts SET cleared = %s WHERE target = %s AND kind = ANY(%s)"
            " AND cleared IS NULL",
            (at, target, list(kinds)),
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
            " totp_secret_ct IS NOT NULL AS totp, locked_until, last_login_at, created_at,"
            " activation_a IS NOT NULL AS activation_pending, activation_expires"
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
        self,
        digest: bytes,
        user_id: int,
        client: str,
        mfa_done: bool,
        at: datetime,
        terminal: str = "",
    ) -> Row:
        # ``at`` is the vault's clock, the one that later judges the session's age.
        row = await self.one(
            "INSERT INTO sessions (token_digest, user_id, client, mfa_done, created_at, last_seen,"
            " terminal) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING created_at, last_seen",
            (digest, user_id, client, mfa_done, at, at, terminal),
        )
        assert row is not None
        return row

    async def session(self, digest: bytes) -> Row | None:
        return await self.one(
            "SELECT s.token_digest, s.created_at, s.last_seen, s.client, s.mfa_done, s.terminal,"
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

    # --- account proposals and activation (kura.vault.account_approvals) -----

    async def insert_account_proposal(self, values: Mapping[str, Any]) -> None:
        cols = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        await self.run(
            f"INSERT INTO account_proposals ({cols}) VALUES ({marks})", list(values.values())
        )

    async def account_proposal(self, proposal_id: str, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT * FROM account_proposals WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (proposal_id,),
        )

    async def pending_proposal_for(self, username: str) -> Row | None:
        return await self.one(
            "SELECT * FROM account_proposals WHERE username = %s AND state = 'pending'",
            (username,),
        )

    async def account_proposals(self, states: Sequence[str], limit: int) -> list[Row]:
        return await self.all(
            "SELECT id, kind, username, role, old_role, display_name, reset_totp, new_code,"
            " proposer, approver, state, created_at, expires_at, decided_at"
            " FROM account_proposals WHERE state = ANY(%s)"
            " ORDER BY created_at DESC LIMIT %s",
            (list(states), limit),
        )

    async def expire_account_proposals(self, now: datetime) -> list[Row]:
        return await self.all(
            "UPDATE account_proposals SET state = 'expired', decided_at = %s, half_a_hash = NULL"
            " WHERE state = 'pending' AND expires_at <= %s RETURNING id, kind, username, proposer",
            (now, now),
        )

    async def decide_account_proposal(
        self, proposal_id: Any, state: str, decider: str | None, at: datetime
    ) -> None:
        await self.run(
            "UPDATE account_proposals SET state = %s, approver = %s, decided_at = %s,"
            " half_a_hash = NULL WHERE id = %s",
            (state, decider, at, proposal_id),
        )

    async def approved_proposals_for(self, usernames: Sequence[str]) -> list[Row]:
        return await self.all(
            "SELECT username, kind, role, proposer, approver, decided_at FROM account_proposals"
            " WHERE state = 'approved' AND username = ANY(%s) ORDER BY decided_at",
            (list(usernames),),
        )

    async def start_activation(
        self, user_id: int, unusable_hash: str, hash_a: str, hash_b: str, expires: datetime
    ) -> None:
        """The old password stops working; the account waits for its holder."""
        await self.run(
            "UPDATE users SET password_hash = %s, must_change_password = false,"
            " activation_a = %s, activation_b = %s, activation_expires = %s,"
            " first_login_pending = true, failed_logins = 0, locked_until = NULL WHERE id = %s",
            (unusable_hash, hash_a, hash_b, expires, user_id),
        )

    async def finish_activation(self, user_id: int, password_hash: str) -> None:
        await self.set_password(user_id, password_hash, must_change=False)
        await self.run(
            "UPDATE users SET activation_a = NULL, activation_b = NULL,"
            " activation_expires = NULL WHERE id = %s",
            (user_id,),
        )

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


    async def latest_entries(self, actions: Sequence[str], limit: int) -> list[Row]:
        """The newest entries of these actions (the pair's role changes): each
        action's newest through the (action, at) index, so a home page does
        not scan a long log for a few rare entries."""
        return await self.all(
            "SELECT e.seq, e.at, e.actor, e.role, e.action, e.outcome, e.target, e.detail"
            " FROM unnest(%s::text[]) AS wanted(action), LATERAL ("
            "  SELECT seq, at, actor, role, action, outcome, target, detail FROM audit"
            "  WHERE audit.action = wanted.action ORDER BY at DESC LIMIT %s) AS e"
            " ORDER BY e.seq DESC LIMIT %s",
            (list(actions), limit, limit),
        )

    # --- registration requests and their documents (kura.vault.requests) ------

    async def insert_request(self, values: Mapping[str, Any]) -> None:
        columns = ", ".join(values)
        await self.run(
            f"INSERT INTO registration_requests ({columns})"
            f" VALUES ({', '.join(['%s'] * len(values))})",
            list(values.values()),
        )

    async def request(self, request_id: str, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT * FROM registration_requests WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (request_id,),
        )

    async def request_by_token(self, digest: bytes) -> Row | None:
        return await self.one(
            "SELECT * FROM registration_requests WHERE token_digest = %s FOR UPDATE", (digest,)
        )

    async def list_requests(
        self, state: str | None, request_id: str | None, now: datetime, offset: int, limit: int
    ) -> list[Row]:
        """Requests without their entries; ``expired`` is an open one past its time."""
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if state == "expired":
            where.append("state = 'open' AND expires_at <= %s")
            params.append(now)
        elif state == "open":
            where.append("state = 'open' AND expires_at > %s")
            params.append(now)
        elif state:
            where.append("state = %s")
            params.append(state)
        if request_id:
            where.append("id = %s")
            params.append(request_id)
        params += [limit, offset]
        return await self.all(
            "SELECT r.*, (SELECT count(*) FROM request_entries e WHERE e.request_id = r.id)"
            " AS entry_count FROM registration_requests r"
            f" WHERE {' AND '.join(where)}"
            " ORDER BY (state = 'submitted') DESC, created_at DESC LIMIT %s OFFSET %s",
            params,
        )

    async def update_request(self, request_id: str, changes: Mapping[str, Any]) -> None:
        """``changes`` maps fixed column names to values."""
        sets = ", ".join(f"{column} = %s" for column in changes)
        await self.run(
            f"UPDATE registration_requests SET {sets} WHERE id = %s",
            [*changes.values(), request_id],
        )

    async def insert_request_entry(self, values: Mapping[str, Any]) -> None:
        await self.run(
            f"INSERT INTO request_entries ({', '.join(values)})"
            f" VALUES ({', '.join(['%s'] * len(values))})",
            list(values.values()),
        )

    async def request_entries(self, request_id: str) -> list[Row]:
        return await self.all(
            "SELECT * FROM request_entries WHERE request_id = %s ORDER BY position",
            (request_id,),
        )

    async def delete_request_entries(self, request_id: str) -> int:
        return await self.run("DELETE FROM request_entries WHERE request_id = %s", (request_id,))

    async def insert_document(self, values: Mapping[str, Any]) -> None:
        await self.run(
            f"INSERT INTO documents ({', '.join(values)})"
            f" VALUES ({', '.join(['%s'] * len(values))})",
            list(values.values()),
        )

    async def request_documents(self, request_id: str, subject_id: Any) -> list[Row]:
        """A request's documents (no content): still on the request, or moved
        to the employee's subject when it was approved."""
        return await self.all(
            "SELECT id, kind, content_type, size, entry_position, created_at FROM documents"
            " WHERE request_id = %s OR (%s::uuid IS NOT NULL AND subject_id = %s::uuid)"
            " ORDER BY entry_position, kind = 'identity', created_at",
            (request_id, subject_id, subject_id),
        )

    async def document(self, document_id: str) -> Row | None:
        return await self.one("SELECT * FROM documents WHERE id = %s", (document_id,))

    async def move_documents_to_subject(self, request_id: str, subject_id: str) -> int:
        return await self.run(
            "UPDATE documents SET subject_id = %s, request_id = NULL WHERE request_id = %s",
            (subject_id, request_id),
        )

    async def delete_request_documents(self, request_id: str) -> int:
        return await self.run("DELETE FROM documents WHERE request_id = %s", (request_id,))

    # --- export requests (kura.vault.exports) ---------------------------------

    async def export_candidates(self, kind: str | None, ids: Sequence[str] | None) -> list[Row]:
        """What export selection needs of each subject: no ciphertext, no key."""
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if kind:
            where.append("kind = %s")
            params.append(kind)
        if ids is not None:
            where.append("id = ANY(%s::uuid[])")
            params.append(list(ids))
        return await self.all(
            "SELECT id, kind, code, name, name_kana, purposes, created_at, retention_event"
            f" FROM subjects WHERE {' AND '.join(where)} ORDER BY kind, code, created_at",
            params,
        )

    async def insert_export_request(self, values: Mapping[str, Any]) -> None:
        """``values`` maps fixed column names to values."""
        await self.run(
            f"INSERT INTO export_requests ({', '.join(values)})"
            f" VALUES ({', '.join(['%s'] * len(values))})",
            list(values.values()),
        )

    async def export_request(self, request_id: str, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT * FROM export_requests WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (request_id,),
        )

    async def list_export_requests(
        self,
        requested_by: str | None,
        state: str | None,
        request_id: str | None,
        offset: int,
        limit: int,
    ) -> list[Row]:
        """Pending first (the MA's queue, oldest first), then the rest, newest first."""
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        for column, value in (("requested_by", requested_by), ("state", state),
                              ("id", request_id)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        params += [limit, offset]
        return await self.all(
            "SELECT id, requested_by, purpose, kind, cardinality(subject_ids) AS subject_count,"
            " encoding, tax_year, rows, state, created_at, decided_by, decided_at, reason,"
            " downloaded_at, downloaded_rows, sha256, skipped, report, report_total, threshold"
            f" FROM export_requests WHERE {' AND '.join(where)}"
            " ORDER BY state = 'pending' DESC,"
            " CASE WHEN state = 'pending' THEN created_at END ASC, created_at DESC"
            " LIMIT %s OFFSET %s",
            params,
        )

    async def update_export_request(self, request_id: str, changes: Mapping[str, Any]) -> None:
        """``changes`` maps fixed column names to values."""
        sets = ", ".join(f"{column} = %s" for column in changes)
        await self.run(
            f"UPDATE export_requests SET {sets} WHERE id = %s", [*changes.values(), request_id]
        )

    # --- retention rules and disposal (kura.vault.disposals) ------------------

    async def retention_rules(self) -> list[Row]:
        return await self.all(
            "SELECT basis, ja, en, keep_years, anchor, note FROM retention_rules ORDER BY basis"
        )

    async def retention_rule(self, basis: str, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT basis, ja, en, keep_years, anchor, note FROM retention_rules WHERE basis = %s"
            + (" FOR UPDATE" if lock else ""),
            (basis,),
        )

    async def set_retention_rule(self, basis: str, keep_years: int, anchor: str) -> None:
        await self.run(
            "UPDATE retention_rules SET keep_years = %s, anchor = %s WHERE basis = %s",
            (keep_years, anchor, basis),
        )

    async def lock_disposals(self) -> None:
        """One proposal or decision at a time (until commit): a subject cannot
        slip into two batches, nor be proposed while its batch is executed."""
        await self.run("SELECT pg_advisory_xact_lock(%s)", (DISPOSAL_LOCK,))

    async def due_subjects(self, cutoffs: Mapping[str, Any], limit: int) -> list[Row]:
        """Subjects whose event is on or before their basis's cut-off date, and
        the dependents of such employees, with their employee's event."""
        return await self.all(
            "WITH cut AS (SELECT * FROM unnest(%s::text[], %s::date[]) AS c(basis, latest)),"
            " own AS (SELECT s.id, s.kind FROM subjects s JOIN cut c"
            "  ON s.retention_basis = c.basis WHERE s.retention_event <= c.latest)"
            f" SELECT {_DISPOSAL_COLUMNS} FROM subjects s"
            " LEFT JOIN subjects e ON e.id = s.employee_id"
            " WHERE s.id IN (SELECT id FROM own)"
            " OR s.employee_id IN (SELECT id FROM own WHERE kind = 'employee')"
            " ORDER BY s.retention_event NULLS LAST, s.kind, s.code LIMIT %s",
            (list(cutoffs), list(cutoffs.values()), limit),
        )

    async def disposal_candidates(self, ids: Sequence[Any]) -> list[Row]:
        """The subjects ``ids`` and every dependent of an employee among them,
        locked, with what decides whether they are due."""
        return await self.all(
            f"SELECT {_DISPOSAL_COLUMNS}, s.number_bidx FROM subjects s"
            " LEFT JOIN subjects e ON e.id = s.employee_id"
            " WHERE s.id = ANY(%s::uuid[]) OR s.employee_id = ANY(%s::uuid[])"
            " ORDER BY s.kind, s.code FOR UPDATE OF s",
            (list(ids), list(ids)),
        )

    async def subjects_in_proposed_batches(self, ids: Sequence[Any]) -> int:
        row = await self.one(
            "SELECT count(*) AS n FROM disposal_batches"
            " WHERE state = 'proposed' AND subject_ids && %s::uuid[]",
            (list(ids),),
        )
        return int(row["n"]) if row else 0

    async def insert_disposal_batch(
        self, batch_id: str, proposed_by: str, subject_ids: Sequence[Any], counts: Mapping[str, int]
    ) -> Row:
        row = await self.one(
            "INSERT INTO disposal_batches (id, state, proposed_by, subject_ids, subject_count,"
            " counts) VALUES (%s, 'proposed', %s, %s::uuid[], %s, %s) RETURNING *",
            (batch_id, proposed_by, list(subject_ids), len(subject_ids), json.dumps(counts)),
        )
        assert row is not None
        return row

    async def disposal_batch(self, batch_id: str, lock: bool = False) -> Row | None:
        return await self.one(
            "SELECT * FROM disposal_batches WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (batch_id,),
        )

    async def disposal_batches(self, state: str | None, offset: int, limit: int) -> list[Row]:
        return await self.all(
            "SELECT * FROM disposal_batches WHERE (%s::text IS NULL OR state = %s)"
            " ORDER BY state <> 'proposed', coalesce(decided_at, proposed_at) DESC, id"
            " LIMIT %s OFFSET %s",
            (state, state, limit, offset),
        )

    async def batch_subjects(self, ids: Sequence[Any]) -> list[Row]:
        return await self.all(
            f"SELECT {_DISPOSAL_COLUMNS} FROM subjects s"
            " LEFT JOIN subjects e ON e.id = s.employee_id"
            " WHERE s.id = ANY(%s::uuid[]) ORDER BY s.kind, s.code",
            (list(ids),),
        )

    async def shred_subjects(self, ids: Sequence[Any], bidxs: Sequence[bytes]) -> list[Any]:
        """Delete the subjects ``ids`` with their data keys and ciphertexts, their
        documents, the registration requests they came from, and what decided
        requests still hold of their numbers. Returns the subject id of each
        document deleted."""
        ids = list(ids)
        own = await self.all(
            "DELETE FROM documents WHERE subject_id = ANY(%s::uuid[]) RETURNING subject_id", (ids,)
        )
        via_request = await self.all(
            "DELETE FROM documents d USING registration_requests r"
            " WHERE d.request_id = r.id AND r.subject_id = ANY(%s::uuid[])"
            " RETURNING r.subject_id",
            (ids,),
        )
        # Entries of decided requests that hold one of these numbers (a request
        # still open or awaiting review is someone's work in progress).
        await self.run(
            "DELETE FROM request_entries x USING registration_requests r"
            " WHERE x.request_id = r.id AND x.number_bidx = ANY(%s)"
            " AND r.state NOT IN ('open', 'submitted')",
            (list(bidxs),),
        )
        await self.run(
            "DELETE FROM registration_requests WHERE subject_id = ANY(%s::uuid[])", (ids,)
        )
        # Dependents first: an employee cannot go while a dependent points at it.
        await self.run(
            "DELETE FROM subjects WHERE id = ANY(%s::uuid[]) AND kind = 'dependent'", (ids,)
        )
        await self.run("DELETE FROM subjects WHERE id = ANY(%s::uuid[])", (ids,))
        return [r["subject_id"] for r in [*own, *via_request]]

    async def finish_disposal_batch(
        self,
        batch_id: str,
        state: str,
        decided_by: str,
        reason: str,
        executed: Mapping[str, int] | None = None,
    ) -> Row:
        """Record the decision; an executed batch forgets its subjects' ids and
        keeps only how many of each kind went."""
        if executed is None:
            row = await self.one(
                "UPDATE disposal_batches SET state = %s, decided_by = %s, decided_at = now(),"
                " reason = %s WHERE id = %s RETURNING *",
                (state, decided_by, reason, batch_id),
            )
        else:
            row = await self.one(
                "UPDATE disposal_batches SET state = %s, decided_by = %s, decided_at = now(),"
                " reason = %s, subject_ids = '{}', subject_count = %s, counts = %s"
                " WHERE id = %s RETURNING *",
                (state, decided_by, reason, sum(executed.values()), json.dumps(executed), batch_id),
            )
        assert row is not None
        return row

    async def insert_disposal_record(
        self,
        batch_id: str,
        kind: str,
        basis: str,
        count: int,
        method: str,
        operator: str,
        approver: str,
    ) -> Row:
        row = await self.one(
            "INSERT INTO disposal_records (id, batch_id, disposed_at, kind, basis, count, method,"
            " operator, approver) VALUES (%s, %s, now(), %s, %s, %s, %s, %s, %s) RETURNING *",
            (str(uuid.uuid4()), batch_id, kind, basis, count, method, operator, approver),
        )
        assert row is not None
        return row

    async def disposal_records(
        self, since: datetime | None, until: datetime | None, offset: int, limit: int
    ) -> list[Row]:
        return await self.all(
            "SELECT * FROM disposal_records"
            " WHERE (%s::timestamptz IS NULL OR disposed_at >= %s)"
            " AND (%s::timestamptz IS NULL OR disposed_at < %s)"
            " ORDER BY disposed_at DESC, batch_id, kind, basis LIMIT %s OFFSET %s",
            (since, since, until, until, limit, offset),
        )

    # --- reports (kura.vault.reports) -----------------------------------------

    async def audit_counts(
        self, since: datetime, until: datetime, actor: str | None = None
    ) -> list[Row]:
        """Entries in [since, until) counted per actor, role, action and outcome."""
        where = "at >= %s AND at < %s"
        params: list[Any] = [since, until]
        if actor:
            where += " AND actor = %s"
            params.append(actor)
        return await self.all(
            "SELECT actor, role, action, outcome, count(*) AS n FROM audit"
            f" WHERE {where} GROUP BY actor, role, action, outcome",
            params,
        )

    async def subjects_held(self) -> dict[str, int]:
        rows = await self.all("SELECT kind, count(*) AS n FROM subjects GROUP BY kind")
        return {str(r["kind"]): int(r["n"]) for r in rows}

    async def purposes_in_use(self) -> list[Row]:
        return await self.all(
            "SELECT kind, purpose, count(*) AS n"
            " FROM subjects, unnest(purposes) AS purpose GROUP BY kind, purpose"
        )

    async def retention_groups(self) -> list[Row]:
        """Subjects whose (or whose employee's) retention event has happened,
        counted per file, basis and event (and the employee's)."""
        return await self.all(
            "SELECT s.kind, s.retention_basis AS basis, s.retention_event AS event,"
            " e.retention_basis AS employee_basis, e.retention_event AS employee_event,"
            " count(*) AS n FROM subjects s LEFT JOIN subjects e ON e.id = s.employee_id"
            " WHERE s.retention_event IS NOT NULL OR e.retention_event IS NOT NULL"
            " GROUP BY 1, 2, 3, 4, 5"
        )

    async def documents_held(self) -> dict[str, int]:
        row = await self.one(
            "SELECT count(*) FILTER (WHERE subject_id IS NOT NULL) AS held,"
            " count(*) FILTER (WHERE request_id IS NOT NULL) AS pending FROM documents"
        )
        return {"held": int(row["held"]), "pending": int(row["pending"])} if row else {}

    async def reveals_by_kind(self, since: datetime, until: datetime) -> list[Row]:
        """Reveals in the period per file (kind NULL: the subject is gone since)."""
        return await self.all(
            "SELECT s.kind, count(*) AS n FROM audit a"
            " LEFT JOIN subjects s ON s.id::text = a.target"
            " WHERE a.action = 'subject.reveal' AND a.outcome = 'ok'"
            " AND a.at >= %s AND a.at < %s GROUP BY s.kind",
            (since, until),
        )

    async def take_outs(
        self, since: datetime, until: datetime, actions: Sequence[str]
    ) -> list[Row]:
        """Exports in the period per action and purpose, with their rows."""
        return await self.all(
            "SELECT action, purpose, count(*) AS n,"
            " sum(CASE WHEN jsonb_typeof(detail->'rows') = 'number'"
            " THEN (detail->>'rows')::bigint ELSE 0 END) AS rows"
            " FROM audit WHERE action = ANY(%s) AND outcome = 'ok' AND at >= %s AND at < %s"
            " GROUP BY action, purpose",
            (list(actions), since, until),
        )

    async def disposed_by_kind(self, since: datetime, until: datetime) -> list[Row]:
        return await self.all(
            "SELECT kind, sum(count) AS n FROM disposal_records"
            " WHERE disposed_at >= %s AND disposed_at < %s GROUP BY kind",
            (since, until),
        )

    async def accounts_with_access(self) -> list[Row]:
        """The enabled accounts that may handle numbers (MU, MA)."""
        return await self.all(
            "SELECT username, display_name, role, totp_secret_ct IS NOT NULL AS totp,"
            " last_login_at FROM users WHERE role IN ('MU', 'MA') AND NOT disabled"
            " ORDER BY role DESC, username"
        )

    async def user_counts(self) -> list[Row]:
        return await self.all(
            "SELECT role, count(*) FILTER (WHERE NOT disabled) AS enabled, count(*) AS n"
            " FROM users GROUP BY role ORDER BY role"
        )

    async def open_sessions(self, idle_since: datetime, created_since: datetime) -> int:
        """Sessions seen after ``idle_since`` and made after ``created_since``."""
        row = await self.one(
            "SELECT count(*) AS n FROM sessions s JOIN users u ON u.id = s.user_id"
            " WHERE NOT u.disabled AND s.last_seen > %s AND s.created_at > %s",
            (idle_since, created_since),
        )
        return int(row["n"]) if row else 0

    async def database_size(self) -> int:
        row = await self.one("SELECT pg_database_size(current_database()) AS n")
        return int(row["n"]) if row else 0

    async def data_directory(self) -> str | None:
        """PostgreSQL's data folder, when this role may read it (the setting
        needs pg_read_all_settings); None otherwise."""
        try:
            async with self.conn.transaction():  # a savepoint: a refusal spoils nothing
                row = await self.one("SELECT current_setting('data_directory') AS d")
        except psycopg.errors.InsufficientPrivilege:
            return None
        return str(row["d"]) if row and row["d"] else None


@functools.lru_cache(maxsize=64)
def _array_literal(items: tuple[str, ...]) -> str:
    """A text[] in PostgreSQL's input syntax, for COPY: psycopg's list dumper
    costs more than the rest of the row, and an import repeats a few lists."""
    quoted = ('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items)
    return "{" + ",".join(quoted) + "}"


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _checkpoint_from_row(r: Row) -> audit.Checkpoint:
    return audit.Checkpoint(
        seq=int(r["seq"]),
        hash=bytes(r["hash"]),
        at=r["at"],
        signature=bytes(r["signature"]),
        public_key=bytes(r["public_key"]),
    )


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
