"""The audit chain's head outside the database, and the audit-integrity state.

The vault trusts one head of the chain (seq, hash): the last entry it
committed, kept in memory (``Store.trusted``) and, signed with the audit key,
in ``audit/head.json`` on the keys partition, rewritten at every checkpoint
and at shutdown. The database must always extend that head:

- before every append (``Tx.append_audit``, in the same round trip as the
  chain lock) the row at the trusted seq must still hold the trusted hash;
- at unseal the whole chain is verified, and must reach the head file;
- every ``integrity_sweep_seconds`` the chain is swept again, so changes in
  the middle are caught while running too. A sweep does not read the whole
  chain: PostgreSQL finds where links break and which signed checkpoints no
  longer match their entry, and the vault recomputes the hashes of the
  entries written since the last sweep and of one window of older ones
  (``integrity_sweep_window``), a window further each time; anything the last
  full scan did not already know sends it to a full scan, which names the
  faults (kura.core.audit.integrity, "The sweep between full scans").

On a fault the vault writes an ``audit.integrity_fault`` entry naming every
fault, chained from the trusted head (so removed entries stay a visible gap),
signs a checkpoint at once and refuses all work but looking at the log, until
a security admin (SA) and an appliance admin (DA) have both acknowledged it
(``audit.acknowledge``). Then an ``audit.integrity_acknowledged`` entry names
them both, a checkpoint is signed, and work resumes from the new head.

A fault that an earlier ``audit.integrity_fault`` entry records (under a
valid signed checkpoint) is history, not a new fault: the gap it names stays
in the chain for good.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kura import fsutil
from kura.core import audit
from kura.core.errors import AuditIntegrity
from kura.core.keys import KeyHierarchy
from kura.core.roles import Role
from kura.vault.base import Caller, VaultBase, operation, record
from kura.vault.store import ChainDiverged

log = logging.getLogger("kura.vault")

# A folder of its own on the keys partition: the rest of the partition (the
# sealed root key) stays read-only for the vault (systemd ReadOnlyPaths), and
# only this folder is writable (ReadWritePaths; tmpfiles.d makes it).
HEAD_DIR = "audit"
HEAD_FILE = "head.json"


@dataclass
class IntegrityState:
    """The vault's incident: what was found, and who has acknowledged it."""

    incident: int | None  # seq of the audit.integrity_fault entry
    faults: list[audit.Fault]
    since: datetime
    expected: audit.ChainHead | None
    found: audit.ChainHead | None
    acknowledged: dict[str, str] = field(default_factory=dict)  # role -> user name

    def to_json(self) -> dict[str, Any]:
        return {
            "state": "fault",
            "incident": self.incident,
            "since": self.since.isoformat(),
            "faults": [
                {**f.to_json(), "ja": f.ja, "en": f.en} for f in self.faults
            ],
            "expected_head": _head_json(self.expected),
            "found_head": _head_json(self.found),
            "acknowledged": sorted(self.acknowledged),
        }


def _head_json(head: audit.ChainHead | None) -> dict[str, Any] | None:
    return None if head is None else {"seq": head.seq, "hash": head.hash.hex()}


@dataclass(frozen=True)
class Scan:
    new: list[audit.Fault]
    recorded: list[tuple[audit.Fault, audit.Incident]]
    found: audit.ChainHead | None
    hashes: dict[int, bytes]
    altered: frozenset[int]


class IntegrityOperations(VaultBase):
    integrity: IntegrityState | None = None
    _integrity_lock: asyncio.Lock | None = None
    _last_sweep: float = 0.0
    # Between full scans: what the last one knew, and how far the sweep got.
    _baseline: audit.SweepBaseline | None = None
    _sweep_cursor: int = 1
    _swept_to: int = 0
    _checked_checkpoint: int = 0

    # --- the head file -------------------------------------------------------

    @property
    def head_path(self) -> Path:
        return self.config.vault.keys_dir / HEAD_DIR / HEAD_FILE

    def write_head(self, head: audit.ChainHead, keys: KeyHierarchy | None = None) -> None:
        keys = keys or self.keys
        if keys is None or not self.store.head_check:
            return
        signed = audit.sign_head(keys.audit_signing_key, head.seq, head.hash, self.clock())
        self.head_path.parent.mkdir(mode=0o700, exist_ok=True)
        fsutil.write_atomic(self.head_path, audit.head_bytes(signed), 0o600)

    def read_head(self, keys: KeyHierarchy) -> tuple[audit.ChainHead | None, bool]:
        """(the signed head, True) or (None, True) if there is none yet, or
        (None, False) if the file is there but not a head this key signed."""
        try:
            data = self.head_path.read_bytes()
        except FileNotFoundError:
            return None, True
        try:
            head = audit.parse_head(data)
        except ValueError:
            return None, False
        if not audit.head_valid(head, audit.raw_public_key(keys.audit_public_key)):
            return None, False
        return audit.ChainHead(head.seq, head.hash), True

    # --- verification ----------------------------------------------------------

    async def scan(self, keys: KeyHierarchy, head: audit.ChainHead | None) -> Scan:
        """Every fault of the chain in the database, against its checkpoints,
        the appliance's key and the trusted ``head``."""
        async with self.store.transaction() as tx:
            checkpoints = await tx.checkpoints()
        async with self.store.transaction() as tx:
            entries = await tx.audit_entries()
        public_key = audit.raw_public_key(keys.audit_public_key)

        def judge() -> Scan:
            walk = audit.FaultScan()
            for entry in entries:
                walk.feed(entry)
            faults = walk.faults(
                checkpoints,
                trusted_public_key=public_key,
                head=(head.seq, head.hash) if head else None,
            )
            covered = audit.covered_seq(checkpoints, walk.hashes, public_key)
            new, old = audit.split_recorded(faults, walk.incidents(covered))
            last = entries[-1] if entries else None
            found = audit.ChainHead(last.seq, last.hash) if last else None
            return Scan(new, old, found, walk.hashes, walk.altered)

        return await asyncio.to_thread(judge)

    async def verify_at_start(self, keys: KeyHierarchy) -> None:
        """At unseal, before the first entry: the whole chain, its checkpoints,
        and the head file (the database must extend it)."""
        self.store.head_check = self.config.vault.audit_head_check
        if not self.store.head_check:
            return
        head, readable = self.read_head(keys)
        result = await self.scan(keys, head)
        faults = list(result.new)
        if not readable:
            log.error("the audit head file %s is not one this vault signed", self.head_path)
            faults.append(audit.Fault("bad_signature", 0, 0))
        trusted = result.found
        if head is not None and (trusted is None or result.hashes.get(head.seq) != head.hash):
            trusted = head  # the database does not reach it: chain the incident from it
        self.store.trusted = trusted or audit.GENESIS_HEAD
        if faults:
            await self.enter_fault(faults, self.store.trusted, result.found, keys, "start")
        else:
            await self._set_baseline(result)

    async def sweep(self) -> None:
        """Sweep the chain (see the module's docstring); scan it whole when the
        sweep sees anything new, and enter the integrity state on a new fault."""
        keys, trusted = self.keys, self.store.trusted
        if keys is None or trusted is None:
            return
        if self._baseline is not None and not await self._sweep_finds_news(keys, trusted):
            return
        result = await self.scan(keys, trusted)
        if result.new:
            self._baseline = None
            await self.enter_fault(result.new, trusted, result.found, keys, "sweep")
        else:
            await self._set_baseline(result)

    async def _set_baseline(self, result: Scan) -> None:
        """After a full scan without new faults: what the sweep compares with."""
        async with self.store.transaction() as tx:
            breaks = await tx.audit_link_breaks()
            mismatches = await tx.checkpoint_mismatches()
            last_checkpoint = await tx.last_checkpoint()
        self._baseline = audit.SweepBaseline(breaks, mismatches, result.altered)
        self._swept_to = result.found.seq if result.found else 0
        self._checked_checkpoint = int(last_checkpoint["seq"]) if last_checkpoint else 0

    async def _sweep_finds_news(self, keys: KeyHierarchy, trusted: audit.ChainHead) -> bool:
        """True if the chain shows anything the last full scan did not know."""
        base = self._baseline
        assert base is not None
        async with self.store.transaction() as tx:
            breaks = await tx.audit_link_breaks()
            mismatches = await tx.checkpoint_mismatches()
            head, at_trusted = await tx.audit_head_and(trusted.seq)
            head_seq = int(head["seq"]) if head else 0
            first, last, cursor = audit.sweep_range(
                self._sweep_cursor, self.config.vault.integrity_sweep_window, head_seq
            )
            older = await tx.audit_range(first, last)
            newer = await tx.audit_range(self._swept_to + 1, head_seq)
            checkpoints = await tx.checkpoints_after(self._checked_checkpoint)
        if breaks != base.link_breaks or mismatches != base.checkpoint_mismatches:
            return True
        if trusted.seq > 0 and (head_seq < trusted.seq or at_trusted != trusted.hash):
            return True
        public = audit.raw_public_key(keys.audit_public_key)
        if any(cp.public_key != public or not audit.checkpoint_valid(cp) for cp in checkpoints):
            return True
        altered = await asyncio.to_thread(audit.newly_altered, [*older, *newer], base.altered)
        if altered:
            return True
        self._sweep_cursor = cursor
        self._swept_to = max(self._swept_to, head_seq)
        if checkpoints:
            self._checked_checkpoint = checkpoints[-1].seq
        return False

    async def diverged(self, exc: ChainDiverged) -> None:
        """An append found the chain no longer extends the trusted head."""
        keys = self.keys
        if keys is None:
            return
        result = await self.scan(keys, exc.trusted)
        if result.new:  # else another task has recorded it meanwhile
            await self.enter_fault(result.new, exc.trusted, result.found, keys, "append")

    async def maintain(self, now: float) -> None:
        """The vault's second-by-second upkeep: sign a checkpoint when due, and
        sweep the chain every ``integrity_sweep_seconds``."""
        try:
            await self.checkpoint()
            if not self._last_sweep:
                self._last_sweep = now  # the unseal has just verified everything
            elif (
                self.store.head_check
                and now - self._last_sweep >= self.config.vault.integrity_sweep_seconds
            ):
                self._last_sweep = now
                await self.sweep()
        except ChainDiverged as exc:
            await self.diverged(exc)

    def checkpoint_interval(self) -> float:
        """Seconds between signed checkpoints: the SA's policy decides (a longer
        interval is a weakening, so it took two people); the configuration may
        override it for tests and benchmarks."""
        configured = self.config.vault.checkpoint_seconds
        return configured if configured is not None else float(self.policy.audit_checkpoint_seconds)

    async def checkpoint(self, force: bool = False) -> audit.Checkpoint | None:
        """Sign the head of the chain when it has moved and either enough entries
        (``checkpoint_entries``) or enough time (``checkpoint_interval()``) passed
        since the last checkpoint, or when ``force`` is set (at shutdown); then
        rewrite the head file. Never signs a chain that no longer extends the
        trusted head (raises ``ChainDiverged``)."""
        keys = self.keys
        if keys is None or not self.writable:
            return None
        now = self.clock()
        trusted = self.store.trusted
        async with self.store.transaction() as tx:
            if trusted is not None and trusted.seq > 0:
                head, at_trusted = await tx.audit_head_and(trusted.seq)
                if head is None or int(head["seq"]) < trusted.seq or at_trusted != trusted.hash:
                    found = audit.ChainHead(int(head["seq"]), bytes(head["hash"])) if head else None
                    raise ChainDiverged(trusted, found, at_trusted)
            else:
                head = await tx.audit_head()
            last = await tx.last_checkpoint()
            if head is None:
                return None
            seq = int(head["seq"])
            last_seq = int(last["seq"]) if last else 0
            if seq <= last_seq:
                cp = None
            elif (
                force
                or last is None
                or seq - last_seq >= self.config.vault.checkpoint_entries
                or (now - last["at"]).total_seconds() >= self.checkpoint_interval()
            ):
                cp = audit.sign_checkpoint(keys.audit_signing_key, seq, bytes(head["hash"]), now)
                await tx.insert_checkpoint(cp)
            else:
                return None
        if cp is not None or force:
            await asyncio.to_thread(
                self.write_head, audit.ChainHead(seq, bytes(head["hash"])), keys
            )
        return cp

    # --- the incident ----------------------------------------------------------

    async def enter_fault(
        self,
        faults: list[audit.Fault],
        expected: audit.ChainHead | None,
        found: audit.ChainHead | None,
        keys: KeyHierarchy,
        reason: str,
    ) -> None:
        """Record the faults in the chain (chained from the trusted head), sign
        a checkpoint, and stop."""
        if self._integrity_lock is None:
            self._integrity_lock = asyncio.Lock()
        async with self._integrity_lock:
            if self.integrity is not None and all(f in self.integrity.faults for f in faults):
                return
            log.error(
                "audit integrity fault (%s%s): %s", reason,
                "" if self.writable else ", standby", "; ".join(f.en for f in faults),
            )
            # A standby writes nothing: it holds the incident in memory (and
            # says so in its status) and records it if it is promoted.
            incident = (
                await self._record_incident(faults, expected, found, keys, reason)
                if self.writable else None
            )
            previous = self.integrity.faults if self.integrity else []
            self.integrity = IntegrityState(
                incident=incident,
                faults=[*previous, *(f for f in faults if f not in previous)],
                since=self.clock(),
                expected=expected,
                found=found,
            )

    async def _record_incident(
        self,
        faults: list[audit.Fault],
        expected: audit.ChainHead | None,
        found: audit.ChainHead | None,
        keys: KeyHierarchy,
        reason: str,
    ) -> int | None:
        """Write the audit.integrity_fault entry, chained from the trusted
        head, and sign it at once; its seq, or None if it could not be written."""
        detail = {
            "reason": reason,
            "faults": [f.to_json() for f in faults],
            "expected_head": _head_json(expected),
            "found_head": _head_json(found),
        }
        after = expected if expected and (found is None or found.seq <= expected.seq) else None
        try:
            async with self.store.transaction() as tx:
                entry = await tx.append_audit(
                    actor="-", role="", action=audit.FAULT_ACTION, outcome="error",
                    client="local", detail=detail, after=after or found,
                )
            self.store.trusted = audit.ChainHead(entry.seq, entry.hash)
            await self._sign_now(keys)
        except Exception:
            log.exception("the audit integrity fault could not be recorded")
            return None
        return entry.seq

    async def _sign_now(self, keys: KeyHierarchy) -> None:
        trusted = self.store.trusted
        if trusted is None or trusted.seq == 0 or not self.writable:
            return
        cp = audit.sign_checkpoint(keys.audit_signing_key, trusted.seq, trusted.hash, self.clock())
        async with self.store.transaction() as tx:
            await tx.insert_checkpoint(cp)
        self.write_head(trusted, keys)

    def integrity_status(self) -> dict[str, Any]:
        if self.integrity is None:
            return {"state": "ok"}
        return self.integrity.to_json()

    def refuse_in_fault(self) -> AuditIntegrity:
        state = self.integrity
        faults = [f.en for f in state.faults] if state else []
        return AuditIntegrity(state="audit_integrity", faults=faults)

    @operation("audit.acknowledge")
    async def audit_acknowledge(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        state = self.integrity
        if state is None:  # nothing to acknowledge: say so, change nothing
            return {"acknowledged": [], "resumed": False, "audit_integrity": {"state": "ok"}}
        keys = self._keys()
        session = caller.session
        assert session is not None  # the dispatcher saw to it
        role = str(session.role)
        async with self.store.transaction() as tx:
            await record(tx, caller, "audit.acknowledge", detail={"incident": state.incident})
        state.acknowledged[role] = session.username
        done = {str(Role.SA), str(Role.DA)} <= state.acknowledged.keys()
        if done:
            names = [state.acknowledged[str(Role.SA)], state.acknowledged[str(Role.DA)]]
            async with self.store.transaction() as tx:
                await tx.append_audit(
                    actor=caller.actor, role=caller.role, client=caller.client,
                    action=audit.ACKNOWLEDGED_ACTION,
                    detail={
                        "incident": state.incident,
                        "acknowledged_by": names,
                        "faults": [f.to_json() for f in state.faults],
                    },
                )
            await self._sign_now(keys)
            self.integrity = None
            log.warning("audit integrity incident acknowledged by %s; resuming", ", ".join(names))
        return {
            "acknowledged": sorted(state.acknowledged),
            "resumed": done,
            "audit_integrity": self.integrity_status(),
        }
