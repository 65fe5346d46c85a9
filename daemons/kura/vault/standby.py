"""The vault follows its PostgreSQL's role (an HA pair, docs/ha.md).

The vault asks its own database ``pg_is_in_recovery()``: at start, every
second in its upkeep loop, and at once when a write is refused as read-only
(SQLSTATE 25006) or a connection drops (``Store.role_suspect``). Nothing else
tells it its role, so it can never disagree with the database about whether
it may write.

- ``single`` / ``primary`` (not in recovery; ``primary`` when the
  configuration has an ``[ha]`` section): the vault works as it always has.
- ``standby`` (in recovery): every operation but ``status`` and ``unseal``
  gets ``Standby``, and the vault writes nothing at all: no audit entry (not
  even at unseal), no session, no checkpoint. It unseals read-only (the
  keyring must open; policy and rules are read) and keeps the unseal to be
  recorded when it is promoted. It follows the replicated audit chain: each
  newer head must extend the one it holds (the new entries link on from it
  and their hashes hold, and the row at the held seq still holds the held
  hash), the periodic sweep runs as on a primary, and its own signed head
  file (keys_dir/audit/head.json) moves with the chain. A cut or rewrite
  replicated from the primary's database puts the standby in the
  audit-integrity state too (held in memory, shown in its status).

On promotion (recovery ended) the vault goes on refusing writes until it has
checked that the database extends the head it holds (the same extension
check, then the sweep) and opened any keyring version the primary added;
only then does it write, first ``vault.unseal`` (if it was unsealed as a
standby) and ``ha.promoted``, and sign a checkpoint. A demoted vault
(primary to standby, after pg_rewind or a new base backup) turns standby by
itself; its pool reconnects to the restarted server.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from kura.core import audit
from kura.core.errors import KuraError, Standby, Unavailable
from kura.vault.base import PRIMARY, SINGLE, STANDBY
from kura.vault.integrity import IntegrityOperations
from kura.vault.store import ChainDiverged, Tx

log = logging.getLogger("kura.vault")

# Entries the standby reads per second while it catches up with the chain.
FOLLOW_BATCH = 5000


class StandbyOperations(IntegrityOperations):
    _role_lock: asyncio.Lock | None = None
    # Unsealed as a standby: the vault.unseal entry to write once promoted.
    _deferred_unseal: dict[str, Any] | None = None
    # Promoted while sealed: the ha.promoted entry to write at unseal.
    _deferred_promotion: dict[str, Any] | None = None
    _role_since: datetime | None = None
    _last_rescan: float = 0.0

    async def load_settings(self, tx: Tx) -> None:
        """Read the security policy and the retention rules (service.Vault)."""
        raise NotImplementedError

    def writable_role(self) -> str:
        return PRIMARY if self.config.ha is not None else SINGLE

    async def detect_role(self) -> str | None:
        """What the database says this node is, or None if it cannot be asked."""
        try:
            row = await self.store.replication()
        except (Unavailable, Standby):
            return None
        self.store.role_suspect = False
        return STANDBY if row["in_recovery"] else self.writable_role()

    async def follow_role(self) -> None:
        """Ask the database its role and take up a new one."""
        if self._role_lock is None:
            self._role_lock = asyncio.Lock()
        async with self._role_lock:
            found = await self.detect_role()
            if found is None or found == self.role:
                return
            previous = self.role
            if found == STANDBY:
                self._become_standby(previous)
            else:
                await self._become_writable(found, previous)

    def _become_standby(self, previous: str) -> None:
        log.warning("the database is a standby now: the vault refuses work and writes nothing")
        self.role = STANDBY
        self._role_since = self.clock()
        # Sessions and their last-seen times live in the primary's database.
        self.sessions.clear()
        self._deferred_promotion = None
        self._pair_recorded = None  # the other node writes the log meanwhile

    async def _become_writable(self, role: str, previous: str) -> None:
        """Promotion: check the chain extends the held head, then write."""
        keys = self.keys
        if keys is None:
            # Sealed: the unseal verifies the chain and writes the entries.
            self.role = role
            self._role_since = self.clock()
            self._deferred_promotion = {"previous_role": previous}
            log.warning("the database was promoted; the vault is sealed")
            return
        log.warning("the database was promoted: checking the audit chain before any write")
        if self.integrity is None and self.store.head_check:
            await self._follow_chain()
            if self.integrity is None:
                await self.sweep()  # anything new since the last full scan: a full scan
        checked = self.store.trusted
        async with self.store.transaction() as tx:
            ring = await tx.keyring()
            await self.load_settings(tx)  # the primary's admins may have changed them
        for version, wrapped in sorted(ring.items()):
            if version not in keys.versions:
                keys.adopt(version, wrapped)  # rotated on the primary meanwhile
        self.sessions.clear()
        self.role = role
        self._role_since = self.clock()
        state = self.integrity
        if state is not None and state.incident is None:
            # Found while a standby: the chain records it now.
            state.incident = await self._record_incident(
                state.faults, state.expected, state.found, keys, "standby"
            )
        async with self.store.transaction() as tx:
            if self._deferred_unseal is not None:
                await tx.append_audit(
                    actor="-", role="", action="vault.unseal", client="local",
                    detail=self._deferred_unseal,
                )
            await tx.append_audit(
                actor="-", role="", action="ha.promoted", client="local",
                detail={
                    "previous_role": previous,
                    "head_seq": checked.seq if checked else None,
                    "audit_integrity": "ok" if state is None else "fault",
                },
            )
        self._deferred_unseal = None
        await self.checkpoint(force=True)
        log.warning("promoted to %s; the chain extends entry %s", role,
                    checked.seq if checked else "-")

    # --- the standby's upkeep --------------------------------------------------

    async def upkeep(self, now: float) -> None:
        """Every second: the role, then the upkeep of that role."""
        try:
            await self.follow_role()
            if self.role != STANDBY:
                await self.maintain(now)
                if self.keys is not None and self.integrity is None:
                    try:
                        await self.follow_pair()
                        await self.agent_upkeep(now)
                    except ChainDiverged as exc:
                        await self.diverged(exc)
            elif self.keys is not None:
                await self._standby_upkeep(now)
        except (Standby, Unavailable) as exc:
            # The role changed under us, or the database is restarting (a
            # demotion): next second tells.
            self.store.role_suspect = True
            log.info("vault upkeep: %s", exc.message_en)

    async def _standby_upkeep(self, now: float) -> None:
        if not self.store.head_check:
            return
        if self.integrity is None:
            await self._follow_chain()
        if not self._last_sweep:
            self._last_sweep = now
        elif now - self._last_sweep >= self.config.vault.integrity_sweep_seconds:
            self._last_sweep = now
            if self.integrity is None:
                await self.sweep()
            else:
                await self._rescan_in_fault()

    async def _follow_chain(self) -> None:
        """Take the replicated chain's newer head as the held one if it
        extends it; otherwise the audit-integrity state (in memory)."""
        keys = self.keys
        trusted = self.store.trusted or audit.GENESIS_HEAD
        if keys is None:
            return
        async with self.store.transaction() as tx:
            head, at_trusted = await tx.audit_head_and(trusted.seq)
            head_seq = int(head["seq"]) if head else 0
            newer = await tx.audit_range(
                trusted.seq + 1, min(head_seq, trusted.seq + FOLLOW_BATCH)
            )
        found = audit.ChainHead(head_seq, bytes(head["hash"])) if head else None
        if trusted.seq > 0 and (head_seq < trusted.seq or at_trusted != trusted.hash):
            await self._diverged_on_standby(ChainDiverged(trusted, found, at_trusted))
            return
        if not newer:
            return
        prev, expected_seq = trusted.hash, trusted.seq + 1
        for entry in newer:
            if entry.seq != expected_seq or entry.prev_hash != prev or not _hash_holds(entry):
                await self._diverged_on_standby(ChainDiverged(trusted, found, at_trusted))
                return
            prev, expected_seq = entry.hash, entry.seq + 1
        last = newer[-1]
        self.store.trusted = audit.ChainHead(last.seq, last.hash)
        await asyncio.to_thread(self.write_head, self.store.trusted, keys)

    async def _diverged_on_standby(self, exc: ChainDiverged) -> None:
        """The replicated chain does not extend the held head. The primary's
        vault may already have recorded the incident in the chain: the
        standby is then in the audit-integrity state all the same (it mirrors
        the primary) until that incident is acknowledged."""
        keys = self.keys
        if keys is None:
            return
        result = await self.scan(keys, exc.trusted)
        pending = [f for f, i in result.recorded if i.acknowledged_seq is None]
        if result.new or pending:
            await self.enter_fault([*result.new, *pending], exc.trusted, result.found, keys,
                                   "follow")
        else:  # recorded and acknowledged on the primary: history
            self.store.trusted = result.found or audit.GENESIS_HEAD
            await self._set_baseline(result)

    async def _rescan_in_fault(self) -> None:
        """A standby in the audit-integrity state mirrors the primary: once
        the chain records every fault it found and the primary's SA and DA
        have acknowledged them, it takes up the chain's head and goes on."""
        keys, state = self.keys, self.integrity
        if keys is None or state is None:
            return
        result = await self.scan(keys, state.expected)
        if result.new or any(i.acknowledged_seq is None for _, i in result.recorded):
            return
        log.warning("the primary's admins acknowledged the audit incident; following again")
        self.integrity = None
        self.store.trusted = result.found or audit.GENESIS_HEAD
        await self._set_baseline(result)

    async def replication_status(self) -> dict[str, Any]:
        """For ``status`` on a standby: how far the replicated chain and the
        replay have come."""
        trusted = self.store.trusted
        info: dict[str, Any] = {"audit_seq": trusted.seq if trusted else None}
        try:
            row = await self.store.replication()
        except KuraError:
            return {**info, "database": "unavailable"}
        lag = row["lag"]
        info.update(
            replay_lsn=row["replay_lsn"],
            replayed_at=row["replayed_at"].isoformat() if row["replayed_at"] else None,
            # Time since the last replayed commit: it grows while the primary
            # is idle too, so it is an upper bound on the lag.
            lag_seconds=round(lag.total_seconds(), 3) if lag is not None else None,
        )
        return info


def _hash_holds(entry: audit.AuditEntry) -> bool:
    return entry.expected_hash() == entry.hash
