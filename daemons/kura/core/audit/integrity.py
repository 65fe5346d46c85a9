"""Integrity: every fault of a chain, the trusted head, and one export
extending another.

``verify_chain`` answers "is this chain intact, and if not where does it go
wrong first". This module answers the questions an incident raises:

- ``chain_faults`` lists *every* fault of a chain -- entries missing, altered,
  moved to another place, rewritten with recomputed hashes (caught by a
  signed checkpoint or by the trusted head), checkpoints that do not verify --
  each with its seq range, so one report names them all.
- ``TrustedHead`` is the vault's own statement of the last head it trusted,
  signed with the audit key under its own domain (``HEAD_DOMAIN``, distinct
  from checkpoints) and kept on the keys partition, outside the database: an
  intruder who deletes the newest entries *and* their checkpoints still
  leaves a chain that does not reach the head the vault remembers.
- ``recorded_incidents`` finds the faults the chain itself records: the vault
  writes an ``audit.integrity_fault`` entry naming each fault it found, and a
  fault so recorded (under a valid signed checkpoint) is history, not news.
- ``extension_faults`` proves a new export extends an older one: every entry
  of the old one at the same seq, unchanged, and the old export checkpoint
  matched.

Faults never carry entry content, only kinds, seq numbers and hashes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from kura.core.audit.checkpoints import Checkpoint, checkpoint_valid, raw_public_key
from kura.core.audit.entries import (
    GENESIS,
    AuditEntry,
    canonical_json,
    chain_hash,
    format_time,
    parse_time,
)

HEAD_DOMAIN = b"kura-audit-head-v1\x00"

FAULT_ACTION = "audit.integrity_fault"
ACKNOWLEDGED_ACTION = "audit.integrity_acknowledged"

# The kinds of fault, with how a person reads them.
KINDS: dict[str, tuple[str, str]] = {
    "missing": ("欠落", "missing"),
    "altered": ("改ざん", "altered"),
    "reordered": ("並べ替え", "reordered"),
    "rewritten": ("書き換え（ハッシュ再計算）", "rewritten (hashes recomputed)"),
    "checkpoint_mismatch": (
        "書き換え（署名済みの先頭と不一致）",
        "checkpoint mismatch: rewritten since the signed head",
    ),
    "duplicate": ("重複", "duplicate"),
    "bad_signature": ("署名が不正", "bad signature"),
    "untrusted_key": ("信頼しない鍵", "untrusted key"),
    "unexpected_entries": ("署名の対象外の記録", "entries not covered by the export"),
}


@dataclass(frozen=True)
class Fault:
    """One fault: what kind, which entries (``first``..``last``), and where a
    fault was seen at another place (``found_at``: a moved entry's position)."""

    kind: str
    first: int
    last: int
    found_at: int | None = None

    @property
    def span_en(self) -> str:
        return f"entry {self.first}" if self.first == self.last else (
            f"entries {self.first}–{self.last}"
        )

    @property
    def span_ja(self) -> str:
        return f"記録 {self.first}" if self.first == self.last else (
            f"記録 {self.first}〜{self.last}"
        )

    @property
    def en(self) -> str:
        what = KINDS.get(self.kind, (self.kind, self.kind))[1]
        where = f" (found at entry {self.found_at})" if self.found_at is not None else ""
        return f"{self.span_en}: {what}{where}"

    @property
    def ja(self) -> str:
        what = KINDS.get(self.kind, (self.kind, self.kind))[0]
        where = f"（記録 {self.found_at} の位置にあります）" if self.found_at is not None else ""
        return f"{self.span_ja}: {what}{where}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "first": self.first, "last": self.last}
        if self.found_at is not None:
            out["found_at"] = self.found_at
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Fault | None:
        try:
            found = obj.get("found_at")
            return cls(
                str(obj["kind"]),
                int(obj["first"]),
                int(obj["last"]),
                int(found) if found is not None else None,
            )
        except (KeyError, TypeError, ValueError):
            return None


def _merge(faults: Iterable[Fault]) -> list[Fault]:
    """Adjacent or overlapping faults of the same kind become one range;
    ordered by seq."""
    out: list[Fault] = []
    last_of: dict[str, int] = {}  # kind -> index in out of its latest range
    for f in sorted(faults, key=lambda f: (f.first, f.last, f.kind)):
        i = last_of.get(f.kind)
        if (
            i is not None
            and f.found_at is None
            and out[i].found_at is None
            and f.first <= out[i].last + 1
        ):
            out[i] = Fault(f.kind, out[i].first, max(out[i].last, f.last))
        elif f not in out:
            last_of[f.kind] = len(out)
            out.append(f)
    return out


def _self_ok(entry: AuditEntry) -> bool:
    try:
        return entry.expected_hash() == entry.hash
    except (TypeError, ValueError):
        return False


def _moved_from(entry: AuditEntry, seq_of: Mapping[bytes, int]) -> int | None:
    """The seq this entry's content was written for, if it is a genuine entry
    put in another place (its hash holds for a seq other than its own)."""
    base = 0 if entry.prev_hash == GENESIS else seq_of.get(entry.prev_hash)
    if base is None:
        return None
    s = base + 1
    if s == entry.seq:
        return None
    try:
        digest = chain_hash(
            entry.prev_hash, s, entry.at, entry.actor, entry.role, entry.action,
            entry.outcome, entry.target, entry.purpose, entry.client, entry.detail,
        )
    except (TypeError, ValueError):
        return None
    return s if digest == entry.hash else None


class FaultScan:
    """Fed entries in the order stored; keeps per entry its hash, its link and
    whether its own hash holds (about 100 bytes), and the few entries that are
    wrong or that record an incident. ``faults`` then judges the whole."""

    def __init__(self) -> None:
        self.count = 0
        self.hashes: dict[int, bytes] = {}
        self._links: dict[int, bytes] = {}
        self._bad: dict[int, AuditEntry] = {}
        self._order: list[Fault] = []
        self._top = 0
        self.marks: list[AuditEntry] = []  # integrity-fault and acknowledgement entries

    @property
    def last_seq(self) -> int:
        return max(self.hashes, default=0)

    @property
    def altered(self) -> frozenset[int]:
        """The seqs whose content does not match their own hash."""
        return frozenset(self._bad)

    def feed(self, entry: AuditEntry) -> None:
        self.count += 1
        if entry.seq in self.hashes:
            self._order.append(Fault("duplicate", entry.seq, entry.seq))
            return
        if entry.seq < self._top:
            self._order.append(Fault("reordered", entry.seq, entry.seq))
        self._top = max(self._top, entry.seq)
        self.hashes[entry.seq] = entry.hash
        self._links[entry.seq] = entry.prev_hash
        if not _self_ok(entry):
            self._bad[entry.seq] = entry
        elif entry.action in (FAULT_ACTION, ACKNOWLEDGED_ACTION):
            self.marks.append(entry)

    def faults(
        self,
        checkpoints: Iterable[Checkpoint] = (),
        *,
        trusted_public_key: bytes | None = None,
        head: tuple[int, bytes] | None = None,
        final: Checkpoint | None = None,
    ) -> list[Fault]:
        faults = list(self._order)
        seq_of = {h: s for s, h in self.hashes.items() if s not in self._bad}
        expected = 1
        for s in sorted(self.hashes):
            if s > expected:
                faults.append(Fault("missing", expected, s - 1))
            expected = s + 1
            if s in self._bad:
                moved = _moved_from(self._bad[s], seq_of)
                if moved is not None:
                    faults.append(Fault("reordered", moved, moved, found_at=s))
                else:
                    faults.append(Fault("altered", s, s))
                continue
            if s == 1:
                before: bytes | None = GENESIS
            else:
                before = self.hashes.get(s - 1) if s - 1 not in self._bad else None
            if before is not None and self._links[s] != before:
                # The entry before was replaced by one whose own hash holds:
                # rewritten, and this link shows it.
                faults.append(Fault("rewritten", s - 1, s - 1))
        last = self.last_seq
        last_matched = 0
        ordered = sorted(checkpoints, key=lambda cp: cp.seq)
        if final is not None:
            ordered.append(final)
        for cp in ordered:
            if not checkpoint_valid(cp):
                faults.append(Fault("bad_signature", cp.seq, cp.seq))
                continue
            if trusted_public_key is not None and cp.public_key != trusted_public_key:
                faults.append(Fault("untrusted_key", cp.seq, cp.seq))
                continue
            if cp.seq == 0:
                continue
            got = self.hashes.get(cp.seq)
            if got is None:
                if cp.seq > last:
                    faults.append(Fault("missing", last + 1, cp.seq))
                # else: inside a gap already named
            elif got != cp.hash:
                faults.append(Fault("checkpoint_mismatch", last_matched + 1, cp.seq))
            else:
                last_matched = cp.seq
        if head is not None and head[0] > 0:
            seq, digest = head
            if seq > last:
                faults.append(Fault("missing", last + 1, seq))
            elif seq in self.hashes and self.hashes[seq] != digest:
                since = last_matched + 1 if last_matched < seq else 1
                faults.append(Fault("checkpoint_mismatch", since, seq))
        if final is not None and last > final.seq:
            faults.append(Fault("unexpected_entries", final.seq + 1, last))
        return _merge(faults)

    def incidents(self, covered_up_to: int) -> list[Incident]:
        return recorded_incidents(self.marks, covered_up_to)


def chain_faults(
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint] = (),
    *,
    trusted_public_key: bytes | None = None,
    head: tuple[int, bytes] | None = None,
    final: Checkpoint | None = None,
) -> list[Fault]:
    """Every fault of the chain ``entries`` (in the order stored), judged
    against ``checkpoints``, a trusted ``head`` (seq, hash) the chain must
    reach, and an export checkpoint ``final`` that must close it."""
    scan = FaultScan()
    for entry in entries:
        scan.feed(entry)
    return scan.faults(checkpoints, trusted_public_key=trusted_public_key, head=head, final=final)


# --- the incidents the chain records ---------------------------------------


@dataclass(frozen=True)
class Incident:
    """An ``audit.integrity_fault`` entry and who acknowledged it."""

    seq: int
    faults: tuple[Fault, ...]
    acknowledged_by: tuple[str, ...] = ()
    acknowledged_seq: int | None = None


def recorded_incidents(
    entries: Iterable[AuditEntry], covered_up_to: int
) -> list[Incident]:
    """The integrity-fault entries up to ``covered_up_to`` (the last seq a
    valid signed checkpoint vouches for), each with its acknowledgement."""
    incidents: dict[int, Incident] = {}
    for entry in entries:
        if entry.seq > covered_up_to or not _self_ok(entry):
            continue
        if entry.action == FAULT_ACTION:
            raw = entry.detail.get("faults", [])
            found = tuple(
                f for f in (Fault.from_json(x) for x in raw if isinstance(x, Mapping))
                if f is not None
            ) if isinstance(raw, list) else ()
            incidents[entry.seq] = Incident(entry.seq, found)
        elif entry.action == ACKNOWLEDGED_ACTION:
            incident = entry.detail.get("incident")
            if isinstance(incident, int) and incident in incidents:
                who = entry.detail.get("acknowledged_by", [])
                names = tuple(str(n) for n in who) if isinstance(who, list) else ()
                incidents[incident] = Incident(
                    incident, incidents[incident].faults, names, entry.seq
                )
    return list(incidents.values())


def covers(recorded: Fault, fault: Fault) -> bool:
    """A fault seen now is the recorded one if its entries lie within the
    recorded range (a later look may see a part of a range, or the same
    entries under a kind seen from another side: a rewritten range may show
    as a checkpoint mismatch)."""
    if fault.found_at is not None and recorded.found_at is not None:
        return fault.first == recorded.first and fault.found_at == recorded.found_at
    low = min(recorded.first, recorded.found_at or recorded.first)
    high = max(recorded.last, recorded.found_at or recorded.last)
    f_low = min(fault.first, fault.found_at or fault.first)
    f_high = max(fault.last, fault.found_at or fault.last)
    return low <= f_low and f_high <= high


def split_recorded(
    faults: Sequence[Fault], incidents: Sequence[Incident]
) -> tuple[list[Fault], list[tuple[Fault, Incident]]]:
    """(faults no incident records, [(fault, the incident recording it)]).
    A fault counts as recorded only if its entries come before the incident."""
    new: list[Fault] = []
    old: list[tuple[Fault, Incident]] = []
    for f in faults:
        match = next(
            (
                i for i in incidents
                if f.last < i.seq and any(covers(r, f) for r in i.faults)
            ),
            None,
        )
        if match is None:
            new.append(f)
        else:
            old.append((f, match))
    return new, old


def covered_seq(checkpoints: Iterable[Checkpoint], hashes: Mapping[int, bytes],
                trusted_public_key: bytes | None) -> int:
    """The highest seq a valid, trusted checkpoint vouches for, as the chain
    holds it now."""
    best = 0
    for cp in checkpoints:
        if (
            checkpoint_valid(cp)
            and (trusted_public_key is None or cp.public_key == trusted_public_key)
            and hashes.get(cp.seq) == cp.hash
        ):
            best = max(best, cp.seq)
    return best


# --- one export extending another --------------------------------------------


def extension_faults(
    old_entries: Iterable[AuditEntry],
    old_final: Checkpoint,
    new_hashes: Mapping[int, bytes],
    new_altered: Iterable[int] = (),
) -> list[Fault]:
    """How the newer chain (its hashes by seq, and the seqs whose content no
    longer matches its hash) fails to extend the older export: each older
    entry must be there at the same seq, unchanged, and the older export
    checkpoint must match."""
    faults: list[Fault] = []
    altered = frozenset(new_altered)
    new_seq_of = {h: s for s, h in new_hashes.items()}
    for entry in old_entries:
        got = new_hashes.get(entry.seq)
        if got == entry.hash:
            if entry.seq in altered:
                faults.append(Fault("altered", entry.seq, entry.seq))
            continue
        elsewhere = new_seq_of.get(entry.hash)
        if elsewhere is not None:
            faults.append(Fault("reordered", entry.seq, entry.seq, found_at=elsewhere))
        elif got is None:
            faults.append(Fault("missing", entry.seq, entry.seq))
        else:
            faults.append(Fault("rewritten", entry.seq, entry.seq))
    if old_final.seq and new_hashes.get(old_final.seq) != old_final.hash:
        faults.append(Fault("checkpoint_mismatch", old_final.seq, old_final.seq))
    return _merge(faults)


# --- the trusted head, kept outside the database --------------------------------


@dataclass(frozen=True)
class TrustedHead:
    """The vault's signed statement: the chain's head was (seq, hash) at ``at``."""

    seq: int
    hash: bytes
    at: datetime
    signature: bytes
    public_key: bytes


def head_message(seq: int, hash: bytes, at: datetime) -> bytes:
    return HEAD_DOMAIN + canonical_json(
        {"seq": seq, "hash": hash.hex(), "at": format_time(at), "kind": "head"}
    )


def sign_head(key: Ed25519PrivateKey, seq: int, hash: bytes, at: datetime) -> TrustedHead:
    if seq < 0 or len(hash) != 32:
        raise ValueError("a head is a non-negative seq and a 32-byte hash")
    return TrustedHead(
        seq, bytes(hash), at, key.sign(head_message(seq, hash, at)),
        raw_public_key(key.public_key()),
    )


def head_valid(head: TrustedHead, public_key: bytes) -> bool:
    """True if the head is signed by ``public_key`` (the appliance's audit key)."""
    if head.public_key != public_key:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            head.signature, head_message(head.seq, head.hash, head.at)
        )
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def head_bytes(head: TrustedHead) -> bytes:
    return canonical_json(
        {
            "seq": head.seq,
            "hash": head.hash.hex(),
            "at": format_time(head.at),
            "signature": head.signature.hex(),
            "public_key": head.public_key.hex(),
        }
    ) + b"\n"


def parse_head(data: bytes) -> TrustedHead:
    """Raises ``ValueError`` for anything but a head file's content."""
    try:
        obj = json.loads(data.decode("utf-8"))
        return TrustedHead(
            int(obj["seq"]),
            bytes.fromhex(obj["hash"]),
            parse_time(obj["at"]),
            bytes.fromhex(obj["signature"]),
            bytes.fromhex(obj["public_key"]),
        )
    except (KeyError, TypeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"not an audit head file: {e}") from None


# --------------------------------------------------------------------------
# The sweep between full scans
#
# A full scan reads every entry and recomputes its hash: right at unseal,
# too much every minute for a chain that grows for years. Between full scans
# the sweep compares what PostgreSQL can check by itself without sending the
# chain over (where links break, which signed checkpoints no longer match
# their entry) with what the last full scan saw, and recomputes the hashes of
# the entries written since the last sweep and of one window of older ones,
# moving on a window at a time so that every entry is recomputed in turn.
# Anything new sends the vault to a full scan, which names the faults.


@dataclass(frozen=True)
class SweepBaseline:
    """What the last full scan found that is history (recorded incidents): the
    link breaks, checkpoint mismatches and altered entries already known."""

    link_breaks: frozenset[int]
    checkpoint_mismatches: frozenset[int]
    altered: frozenset[int]


def sweep_range(cursor: int, window: int, head_seq: int) -> tuple[int, int, int]:
    """(first, last, next cursor): the window of older entries this sweep
    recomputes, starting at ``cursor`` and wrapping to the chain's start."""
    if window < 1:
        raise ValueError("the sweep window must hold at least one entry")
    first = cursor if 1 <= cursor <= head_seq else 1
    last = min(first + window - 1, head_seq)
    following = last + 1 if last < head_seq else 1
    return first, last, following


def newly_altered(entries: Iterable[AuditEntry], known: frozenset[int]) -> list[int]:
    """The seqs among ``entries`` whose content no longer matches their own
    hash, leaving out those ``known`` from the last full scan."""
    return [e.seq for e in entries if e.seq not in known and not _self_ok(e)]
