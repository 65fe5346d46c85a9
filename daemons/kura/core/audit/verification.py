"""Verification: walking the chain and judging its checkpoints.

The walk is fed entries in order and keeps only 32 bytes per entry, so a
bundle can be verified as it streams past; the checkpoints and the export
checkpoint are judged at the end against the hashes it kept. The outcome is
a ``VerifyReport`` naming the first entry that is wrong or missing, in
Japanese and English.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from kura.core.audit.checkpoints import Checkpoint, checkpoint_valid, public_key_fingerprint
from kura.core.audit.entries import GENESIS, AuditEntry, format_time
from kura.core.audit.integrity import (
    Fault,
    FaultScan,
    Incident,
    covered_seq,
    split_recorded,
)


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of verifying a chain or a bundle.

    ``problem`` is a stable code ("ok", "entry_altered", "entry_missing",
    "out_of_order", "duplicate", "chain_broken", "bad_signature",
    "untrusted_key", "checkpoint_mismatch", "truncated", "unexpected_entries",
    "malformed", "unreadable", "bad_trusted_key"); ``first_bad_seq`` names the first entry that is
    wrong or missing, when the fault is in an entry; ``bad_line`` the line of
    the bundle file, when the fault is in its form."""

    ok: bool
    entries: int
    checkpoints: int
    first_bad_seq: int | None
    problem_ja: str
    problem_en: str
    public_key_fingerprints: list[str]
    problem: str = "ok"
    bad_line: int | None = None
    last_seq: int | None = None
    exported_at: datetime | None = None
    bundle_sha256: str | None = None
    faults: tuple[Fault, ...] = ()
    recorded: tuple[tuple[Fault, Incident], ...] = ()
    hashes: dict[int, bytes] | None = None  # each entry's hash by seq, for --after
    altered: frozenset[int] = frozenset()  # seqs whose content does not match their hash

    @property
    def summary_ja(self) -> str:
        if not self.ok:
            return f"検証に失敗しました: {self.problem_ja}"
        at = format_time(self.exported_at) if self.exported_at else "-"
        return (
            f"監査ログに改ざんはありません: 記録 {self.entries} 件とチェックポイント "
            f"{self.checkpoints} 件を、エクスポート時の署名（{at}）まで検証しました。"
            f"署名鍵のフィンガープリント: {', '.join(self.public_key_fingerprints)}"
            "（アプライアンスに表示される値と照合してください）"
        )

    @property
    def summary_en(self) -> str:
        if not self.ok:
            return f"Verification failed: {self.problem_en}"
        at = format_time(self.exported_at) if self.exported_at else "-"
        return (
            f"The audit log is intact: {self.entries} entries and {self.checkpoints} "
            f"checkpoints verified up to the export checkpoint of {at}. Signing key "
            f"fingerprint(s): {', '.join(self.public_key_fingerprints)} "
            "(compare with the one the appliance shows)."
        )


@dataclass(frozen=True)
class _Problem:
    code: str
    ja: str
    en: str
    seq: int | None = None
    line: int | None = None


def _range_ja(first: int, last: int) -> str:
    return f"記録 {first}" if first == last else f"記録 {first}〜{last}"


class _ChainWalk:
    """Fed entries in file order; remembers the first fault and the hash of
    every entry before it (32 bytes each) for matching checkpoints."""

    def __init__(self) -> None:
        self.count = 0
        self.expected = 1
        self.prev = GENESIS
        self.hashes = bytearray()
        self.problem: _Problem | None = None
        self._watch: int | None = None  # a missing seq that may yet turn up later

    @property
    def last_good(self) -> int:
        return self.expected - 1

    def hash_at(self, seq: int) -> bytes | None:
        if seq == 0:
            return GENESIS
        if 1 <= seq <= self.last_good:
            return bytes(self.hashes[32 * (seq - 1) : 32 * seq])
        return None

    def feed(self, entry: AuditEntry) -> None:
        self.count += 1
        if self.problem is not None:
            if self._watch is not None and entry.seq == self._watch:
                s = self._watch
                self.problem = _Problem(
                    "out_of_order",
                    f"記録の順序が入れ替えられています: 記録 {s} より前に"
                    "後の記録が置かれています。",
                    f"Entries are out of order: entry {s} comes after a later entry.",
                    seq=s,
                )
                self._watch = None
            return
        s = self.expected
        if entry.seq > s:
            if s == 1:
                where_ja = f"バンドルが記録 {entry.seq} から始まっています"
                where_en = f"the bundle starts at entry {entry.seq}"
            else:
                where_ja = f"記録 {s - 1} の次が記録 {entry.seq} です"
                where_en = f"entry {s - 1} is followed by entry {entry.seq}"
            self.problem = _Problem(
                "entry_missing",
                f"{_range_ja(s, entry.seq - 1)} が欠落しています（{where_ja}）。",
                f"{_missing_en(s, entry.seq - 1)}: {where_en}.",
                seq=s,
            )
            self._watch = s
        elif entry.seq < 1:
            self.problem = _chain_broken(s)
        elif entry.seq < s:
            self.problem = _Problem(
                "duplicate",
                f"記録 {entry.seq} が重複しています。",
                f"Entry {entry.seq} appears more than once.",
                seq=entry.seq,
            )
        elif entry.prev_hash != self.prev:
            self.problem = _chain_broken(s)
        elif _safe_hash(entry) != entry.hash:
            self.problem = _Problem(
                "entry_altered",
                f"記録 {s} が改ざんされています（内容がハッシュと一致しません）。",
                f"Entry {s} was altered: its content does not match its hash.",
                seq=s,
            )
        else:
            self.hashes += entry.hash
            self.prev = entry.hash
            self.expected += 1


def _missing_en(first: int, last: int) -> str:
    return f"Entry {first} is missing" if first == last else f"Entries {first}–{last} are missing"


def _chain_broken(seq: int) -> _Problem:
    return _Problem(
        "chain_broken",
        f"記録 {seq} で連鎖が途切れています（直前の記録のハッシュと一致しません）。"
        "記録が削除されたか、並べ替えられたか、改ざんされています。",
        f"The chain breaks at entry {seq}: it does not follow from the entry before it. "
        "An entry is missing, or entries were reordered or altered.",
        seq=seq,
    )


def _safe_hash(entry: AuditEntry) -> bytes | None:
    try:
        return entry.expected_hash()
    except (TypeError, ValueError):
        return None


def _checkpoint_problem(
    cp: Checkpoint, walk: _ChainWalk, trusted: bytes | None, last_matched: int
) -> _Problem | None:
    what_ja = "エクスポート時のチェックポイント" if cp.final else "チェックポイント"
    what_en = "export checkpoint" if cp.final else "checkpoint"
    if not checkpoint_valid(cp):
        return _Problem(
            "bad_signature",
            f"記録 {cp.seq} の{what_ja}の署名が正しくありません（偽造または改ざん）。",
            f"The {what_en} at entry {cp.seq} has an invalid signature: it was forged or altered.",
            seq=cp.seq,
        )
    if trusted is not None and cp.public_key != trusted:
        fp = public_key_fingerprint(cp.public_key)
        return _Problem(
            "untrusted_key",
            f"記録 {cp.seq} の{what_ja}は、信頼する鍵とは別の鍵（{fp}）で署名されています。",
            f"The {what_en} at entry {cp.seq} is signed by a key that is not the trusted "
            f"one ({fp}).",
            seq=cp.seq,
        )
    expected = walk.hash_at(cp.seq)
    if expected is None:
        first = walk.last_good + 1
        return _Problem(
            "truncated",
            f"{_range_ja(first, cp.seq)} が欠落しています（{what_ja}は記録 {cp.seq} "
            f"まであることを示していますが、バンドルは記録 {walk.last_good} で終わっています）。",
            f"{_missing_en(first, cp.seq)}: the {what_en} covers entry {cp.seq}, but the "
            f"bundle ends at entry {walk.last_good}; it was cut short.",
            seq=first,
        )
    if expected != cp.hash:
        first = last_matched + 1
        return _Problem(
            "checkpoint_mismatch",
            f"記録 {cp.seq} が署名済みの{what_ja}と一致しません。"
            f"{_range_ja(first, cp.seq)} のいずれかが書き換えられ、以降のハッシュが"
            "再計算されています。",
            f"Entry {cp.seq} does not match the signed {what_en}: "
            + (
                f"entry {first} was rewritten and its hash recomputed."
                if first == cp.seq
                else f"one or more of entries {first}–{cp.seq} were rewritten and the "
                "hashes after it recomputed."
            ),
            seq=cp.seq,
        )
    return None


class _Verifier:
    """Streams entries, then judges the checkpoints and the export checkpoint."""

    def __init__(self, trusted_public_key: bytes | None) -> None:
        self.trusted = trusted_public_key
        self.walk = _ChainWalk()
        self.scan = FaultScan()
        self.checkpoints: list[Checkpoint] = []

    def feed(self, entry: AuditEntry) -> None:
        self.walk.feed(entry)
        self.scan.feed(entry)

    def all_faults(
        self, final: Checkpoint
    ) -> tuple[list[Fault], list[tuple[Fault, Incident]]]:
        """Every fault, split into those no incident records and those one does."""
        faults = self.scan.faults(self.checkpoints, trusted_public_key=self.trusted, final=final)
        covered = covered_seq([*self.checkpoints, final], self.scan.hashes, self.trusted)
        return split_recorded(faults, self.scan.incidents(covered))

    def finish(self, final: Checkpoint) -> tuple[_Problem | None, list[str]]:
        walk = self.walk
        keys = dict.fromkeys(cp.public_key for cp in [*self.checkpoints, final])
        fingerprints = [public_key_fingerprint(k) for k in keys]
        problem = walk.problem
        if not final.final:
            return (
                _Problem(
                    "bad_signature",
                    "最後のチェックポイントがエクスポート時のものではありません。",
                    "The closing checkpoint is not an export checkpoint.",
                    seq=final.seq,
                ),
                fingerprints,
            )
        # Ordinary checkpoints first, the export checkpoint last at equal seq.
        ordered = sorted([*self.checkpoints, final], key=lambda cp: (cp.seq, cp.final))
        last_matched = 0
        for cp in ordered:
            if problem is not None and problem.seq is not None and cp.seq >= problem.seq:
                break  # the fault in the entries comes first
            found = _checkpoint_problem(cp, walk, self.trusted, last_matched)
            if found is not None:
                problem = found  # its seq is below any fault in the entries
                break
            last_matched = cp.seq
        if problem is None and final.seq < walk.last_good:
            first = final.seq + 1
            problem = _Problem(
                "unexpected_entries",
                f"記録 {first} 以降はエクスポート時の署名の対象外です"
                "（エクスポート後に追加されています）。",
                f"Entries from {first} on are not covered by the export checkpoint: "
                "they were added after the export.",
                seq=first,
            )
        return problem, fingerprints


def _report(
    problem: _Problem | None,
    *,
    entries: int,
    checkpoints: int,
    fingerprints: list[str],
    last_seq: int | None = None,
    exported_at: datetime | None = None,
    bundle_sha256: str | None = None,
    faults: tuple[list[Fault], list[tuple[Fault, Incident]]] | None = None,
    hashes: dict[int, bytes] | None = None,
    altered: frozenset[int] = frozenset(),
) -> VerifyReport:
    new, old = faults if faults is not None else ([], [])
    if new and (problem is None or problem.code == "ok"):
        f = new[0]
        problem = _Problem(f.kind, f.ja, f.en, seq=f.first)
    elif (
        problem is not None
        and not new
        and problem.line is None
        and problem.seq is not None
        and any(f.first <= problem.seq <= max(f.last, f.found_at or 0) for f, _ in old)
    ):
        problem = None  # every fault is a recorded incident
    if problem is None:
        return VerifyReport(
            ok=True,
            entries=entries,
            checkpoints=checkpoints,
            first_bad_seq=None,
            problem_ja="",
            problem_en="",
            public_key_fingerprints=fingerprints,
            last_seq=last_seq,
            exported_at=exported_at,
            bundle_sha256=bundle_sha256,
            recorded=tuple(old),
            hashes=hashes,
            altered=altered,
        )
    return VerifyReport(
        ok=False,
        entries=entries,
        checkpoints=checkpoints,
        first_bad_seq=problem.seq,
        problem_ja=problem.ja,
        problem_en=problem.en,
        public_key_fingerprints=fingerprints,
        problem=problem.code,
        bad_line=problem.line,
        last_seq=last_seq,
        exported_at=exported_at,
        bundle_sha256=bundle_sha256,
        faults=tuple(new),
        recorded=tuple(old),
        hashes=hashes,
        altered=altered,
    )


def _bad_trusted_key(trusted_public_key: bytes | None) -> VerifyReport | None:
    if trusted_public_key is None or len(trusted_public_key) == 32:
        return None
    return _report(
        _Problem(
            "bad_trusted_key",
            "信頼する公開鍵が正しくありません（Ed25519 の公開鍵は 32 バイト、16進で64文字です）。",
            "The trusted public key is not valid: an Ed25519 public key is 32 bytes "
            "(64 hex digits).",
        ),
        entries=0,
        checkpoints=0,
        fingerprints=[],
    )


def verify_chain(
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    final: Checkpoint,
    *,
    trusted_public_key: bytes | None = None,
) -> VerifyReport:
    """Check the chain from entry 1, every checkpoint, and the export
    checkpoint ``final`` (which must cover the last entry). If
    ``trusted_public_key`` (32 raw bytes) is given, any other signer fails."""
    if bad := _bad_trusted_key(trusted_public_key):
        return bad
    verifier = _Verifier(trusted_public_key)
    for entry in entries:
        verifier.feed(entry)
    verifier.checkpoints = list(checkpoints)
    problem, fingerprints = verifier.finish(final)
    return _report(
        problem,
        entries=verifier.walk.count,
        checkpoints=len(verifier.checkpoints),
        fingerprints=fingerprints,
        last_seq=verifier.walk.last_good,
        exported_at=final.at,
        faults=verifier.all_faults(final),
        hashes=verifier.scan.hashes,
        altered=verifier.scan.altered,
    )
