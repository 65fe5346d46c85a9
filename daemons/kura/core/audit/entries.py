"""The audit chain: hash-linked entries, signed checkpoints, the export bundle.

Theory of operation
-------------------
Every entry's ``hash`` is ``sha256(prev_hash || canonical(fields))``, where
``prev_hash`` is the previous entry's hash (``GENESIS``, 32 zero bytes, for
entry 1) and ``canonical`` is deterministic JSON. Changing, deleting or
reordering a row therefore breaks the chain at that row.

A chain alone does not stop someone with database access from rewriting an
entry *and recomputing every later hash*. Checkpoints do: the vault regularly
signs ``(seq, hash, time)`` of the head with its Ed25519 key, and a rewritten
chain no longer matches the next signed checkpoint. The signed message is
domain-separated and says whether it is an ordinary checkpoint or the
*export* checkpoint made when a bundle is written, so an old ordinary
checkpoint cannot pose as the end of a truncated bundle.

The bundle is one UTF-8 JSON Lines file: a header, one line per entry, one
per checkpoint, then the export checkpoint. Every line must be byte-for-byte
the canonical JSON of what it holds, so no edit -- not even one that parses
to the same values, such as ``2.0`` spelled ``2e0`` -- passes unnoticed.
Verification streams the file and keeps only 32 bytes per entry.

Nothing here touches the database; the only I/O is reading and writing a
bundle file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kura.core.errors import AuditBundleMalformed

GENESIS = bytes(32)
"""The ``prev_hash`` of entry 1."""

CHECKPOINT_DOMAIN = b"kura-audit-checkpoint-v1\x00"
BUNDLE_FORMAT = "kura-audit-bundle"
BUNDLE_VERSION = 1
OUTCOMES = frozenset({"ok", "denied", "error"})
ROLES = frozenset({"MU", "MA", "SA", "DA", ""})

# A generous bound so a hostile file cannot make the verifier read gigabytes
# into one string; real entry lines are a few hundred bytes.
MAX_LINE_BYTES = 16 * 1024 * 1024


# --- the number guard -------------------------------------------------------

# Hyphens and spaces of either width, as numbers.normalise accepts them.
_SEP = "[ \u3000\\-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\uff0d\u30fc]"
# \d matches every Unicode decimal digit, full-width ones included.
_NUMBER_LIKE = re.compile(rf"\d{{12}}|\d{{4}}{_SEP}{{1,3}}\d{{4}}{_SEP}{{1,3}}\d{{4}}")
# Identifiers the vault itself writes into entries: subject UUIDs and hex
# digests (an export's file hash). Random hex holds a 12-digit run or a 4-4-4
# digit pattern often enough (a few per cent of SHA-256 digests and UUIDs)
# that refusing them would make ordinary actions fail at random, so whole
# tokens of these shapes are set aside before looking for a number.
_HEX_TOKEN = re.compile(
    r"(?<![0-9A-Za-z])"
    r"(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32,})"
    r"(?![0-9A-Za-z])"
)


def _set_aside_hex(match: re.Match[str]) -> str:
    token = match.group(0)
    # A UUID is always set aside (no one types a number in that shape), but a
    # long run of digits alone is no digest: keep it for the number check.
    return token if "-" not in token and token.isdigit() else " "


def looks_like_my_number(text: str) -> bool:
    """True if ``text`` holds a run of 12 digits, or 4-4-4 digits separated by
    hyphens or spaces (ASCII or full-width). Whole UUIDs, and hex digests of
    32 or more characters with at least one letter, are not counted (see
    ``_HEX_TOKEN``)."""
    return _NUMBER_LIKE.search(_HEX_TOKEN.sub(_set_aside_hex, text)) is not None


def contains_number(text: str) -> bool:
    """The same test as ``looks_like_my_number``, under the name the vault uses
    when scrubbing user-typed text before it is logged."""
    return looks_like_my_number(text)


def _number_in(value: Any) -> bool:
    if isinstance(value, str):
        return looks_like_my_number(value)
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return looks_like_my_number(repr(value))
    if isinstance(value, Mapping):
        return any(_number_in(k) or _number_in(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_number_in(v) for v in value)
    return False


def refuse_numbers(entry: AuditEntry) -> None:
    """Raise ``ValueError`` if any text field or any detail key or value of
    ``entry`` looks like a My Number. The message names the field only."""
    _refuse_numbers(
        actor=entry.actor,
        role=entry.role,
        action=entry.action,
        outcome=entry.outcome,
        target=entry.target,
        purpose=entry.purpose,
        client=entry.client,
        detail=entry.detail,
    )


def _refuse_numbers(**fields: Any) -> None:
    for name, value in fields.items():
        if _number_in(value):
            raise ValueError(f"audit field {name!r} looks like it holds a My Number")


# --- canonical form and the entry hash --------------------------------------


def format_time(at: datetime) -> str:
    """ISO 8601 in UTC with microseconds and ``Z``: ``2025-04-01T09:00:00.000000Z``."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit times must be timezone-aware")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def parse_time(text: str) -> datetime:
    """The inverse of ``format_time``; anything else raises ``ValueError``."""
    if not _TIME.fullmatch(text):
        raise ValueError("not a time in the form 2025-04-01T09:00:00.000000Z")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable in an audit entry")


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 (not \\u escapes),
    no NaN or infinity."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    ).encode("utf-8")


def canonical(
    seq: int,
    at: datetime,
    actor: str,
    role: str,
    action: str,
    outcome: str,
    target: str,
    purpose: str,
    client: str,
    detail: Mapping[str, Any],
) -> bytes:
    """The bytes an entry's hash covers (after ``prev_hash``)."""
    return canonical_json(
        {
            "seq": seq,
            "at": format_time(at),
            "actor": actor,
            "role": role,
            "action": action,
            "outcome": outcome,
            "target": target,
            "purpose": purpose,
            "client": client,
            "detail": detail,
        }
    )


def chain_hash(
    prev_hash: bytes,
    seq: int,
    at: datetime,
    actor: str,
    role: str,
    action: str,
    outcome: str,
    target: str,
    purpose: str,
    client: str,
    detail: Mapping[str, Any],
) -> bytes:
    """``sha256(prev_hash || canonical(...))``."""
    if len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    body = canonical(seq, at, actor, role, action, outcome, target, purpose, client, detail)
    return hashlib.sha256(bytes(prev_hash) + body).digest()


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log. Never holds a My Number."""

    seq: int
    at: datetime
    actor: str
    role: str
    action: str
    outcome: str
    target: str
    purpose: str
    client: str
    detail: Mapping[str, Any] = field(hash=False)
    prev_hash: bytes
    hash: bytes

    def expected_hash(self) -> bytes:
        """The hash this entry's content and ``prev_hash`` call for."""
        return chain_hash(
            self.prev_hash,
            self.seq,
            self.at,
            self.actor,
            self.role,
            self.action,
            self.outcome,
            self.target,
            self.purpose,
            self.client,
            self.detail,
        )


@dataclass(frozen=True)
class ChainHead:
    """The last entry's sequence number and hash: all ``make_entry`` needs."""

    seq: int
    hash: bytes


GENESIS_HEAD = ChainHead(0, GENESIS)


def make_entry(
    prev: AuditEntry | ChainHead | None,
    *,
    at: datetime,
    actor: str,
    role: str,
    action: str,
    outcome: str = "ok",
    target: str = "",
    purpose: str = "",
    client: str = "local",
    detail: Mapping[str, Any] | None = None,
    seq: int | None = None,
) -> AuditEntry:
    """The entry after ``prev`` (``None`` for the first), validated and hashed.

    Raises ``ValueError`` for a naive time, an unknown role or outcome, an
    empty actor or action, detail that is not plain JSON with string keys, a
    ``seq`` that does not follow ``prev``, or anything that looks like a
    My Number."""
    head = GENESIS_HEAD if prev is None else ChainHead(prev.seq, prev.hash)
    if seq is None:
        seq = head.seq + 1
    elif seq != head.seq + 1:
        raise ValueError(f"entry {seq} cannot follow entry {head.seq}")
    if len(head.hash) != 32:
        raise ValueError("the previous hash must be 32 bytes")
    texts = {
        "actor": actor,
        "role": role,
        "action": action,
        "outcome": outcome,
        "target": target,
        "purpose": purpose,
        "client": client,
    }
    for name, value in texts.items():
        if not isinstance(value, str):
            raise ValueError(f"audit field {name!r} must be a string")
    if not actor or not action:
        raise ValueError("an audit entry needs an actor ('-' if anonymous) and an action")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}")
    format_time(at)  # refuses a naive time
    at = at.astimezone(UTC)
    facts = _plain_detail(detail or {})
    _refuse_numbers(**texts, detail=facts)
    digest = chain_hash(
        head.hash, seq, at, actor, role, action, outcome, target, purpose, client, facts
    )
    return AuditEntry(
        seq=seq,
        at=at,
        actor=actor,
        role=role,
        action=action,
        outcome=outcome,
        target=target,
        purpose=purpose,
        client=client,
        detail=facts,
        prev_hash=bytes(head.hash),
        hash=digest,
    )


def _plain_detail(detail: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of ``detail`` exactly as it will read back from JSON
    (tuples become lists), so the stored entry and its hash agree."""
    if not isinstance(detail, Mapping) or not all(isinstance(k, str) for k in detail):
        raise ValueError("audit detail must be a mapping with string keys")
    try:
        copy = json.loads(canonical_json(detail))
    except (TypeError, ValueError) as e:
        raise ValueError(f"audit detail is not plain JSON: {e}") from None
    return MappingProxyType(copy)


# --- checkpoints ------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that entry ``seq`` had ``hash`` at time ``at``.
    ``final`` marks the export checkpoint that closes a bundle."""

    seq: int
    hash: bytes
    at: datetime
    signature: bytes
    public_key: bytes
    final: bool = False


def checkpoint_message(seq: int, hash: bytes, at: datetime, *, final: bool = False) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    return CHECKPOINT_DOMAIN + canonical_json(
        {
            "seq": seq,
            "hash": hash.hex(),
            "at": format_time(at),
            "kind": "export" if final else "checkpoint",
        }
    )


def sign_checkpoint(
    key: Ed25519PrivateKey, seq: int, hash: bytes, at: datetime, *, final: bool = False
) -> Checkpoint:
    """Sign ``(seq, hash, at)``; ``final=True`` for the export checkpoint."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError("a checkpoint's seq must be a non-negative integer")
    if len(hash) != 32:
        raise ValueError("a checkpoint's hash must be 32 bytes")
    message = checkpoint_message(seq, hash, at, final=final)
    return Checkpoint(
        seq=seq,
        hash=bytes(hash),
        at=at,
        signature=key.sign(message),
        public_key=raw_public_key(key.public_key()),
        final=final,
    )


def sign_export(key: Ed25519PrivateKey, seq: int, hash: bytes, at: datetime) -> Checkpoint:
    """The export checkpoint that closes a bundle: ``sign_checkpoint(..., final=True)``
    over the last entry exported."""
    return sign_checkpoint(key, seq, hash, at, final=True)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def checkpoint_valid(cp: Checkpoint) -> bool:
    """True if the signature is good for the key the checkpoint names. Whether
    that key is the appliance's is the caller's question."""
    try:
        public = Ed25519PublicKey.from_public_bytes(cp.public_key)
        public.verify(cp.signature, checkpoint_message(cp.seq, cp.hash, cp.at, final=cp.final))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def public_key_fingerprint(public_key: bytes) -> str:
    """What an auditor compares with the appliance: ``sha256:`` and 64 hex digits."""
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


# --- verification -----------------------------------------------------------


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
        self.checkpoints: list[Checkpoint] = []

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
) -> VerifyReport:
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
        verifier.walk.feed(entry)
    verifier.checkpoints = list(checkpoints)
    problem, fingerprints = verifier.finish(final)
    return _report(
        problem,
        entries=verifier.walk.count,
        checkpoints=len(verifier.checkpoints),
        fingerprints=fingerprints,
        last_seq=verifier.walk.last_good,
        exported_at=final.at,
    )


# --- the bundle -------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A parsed export bundle."""

    appliance: str
    exported_at: datetime
    public_keys: tuple[bytes, ...]
    entries: tuple[AuditEntry, ...]
    checkpoints: tuple[Checkpoint, ...]
    final: Checkpoint
    sha256: str


def _entry_line(entry: AuditEntry) -> bytes:
    return canonical_json(
        {
            "type": "entry",
            "seq": entry.seq,
            "at": format_time(entry.at),
            "actor": entry.actor,
            "role": entry.role,
            "action": entry.action,
            "outcome": entry.outcome,
            "target": entry.target,
            "purpose": entry.purpose,
            "client": entry.client,
            "detail": entry.detail,
            "prev_hash": entry.prev_hash.hex(),
            "hash": entry.hash.hex(),
        }
    )


def _checkpoint_line(cp: Checkpoint) -> bytes:
    return canonical_json(
        {
            "type": "final" if cp.final else "checkpoint",
            "seq": cp.seq,
            "hash": cp.hash.hex(),
            "at": format_time(cp.at),
            "signature": cp.signature.hex(),
            "public_key": cp.public_key.hex(),
        }
    )


def bundle_lines(
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    final: Checkpoint,
    appliance: str,
) -> Iterator[bytes]:
    """The bundle's lines, each ending in ``\\n``; entries are streamed."""
    cps = list(checkpoints)
    if not final.final or any(cp.final for cp in cps):
        raise ValueError(
            "a bundle ends with exactly one export checkpoint: sign it with sign_export() "
            "(sign_checkpoint(..., final=True)), and only there"
        )
    keys = dict.fromkeys(cp.public_key for cp in [*cps, final])
    header = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "appliance": appliance,
        "exported_at": format_time(final.at),
        "public_keys": [k.hex() for k in keys],
    }
    yield canonical_json(header) + b"\n"
    for entry in entries:
        yield _entry_line(entry) + b"\n"
    for cp in cps:
        yield _checkpoint_line(cp) + b"\n"
    yield _checkpoint_line(final) + b"\n"


def bundle_bytes(
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    final: Checkpoint,
    appliance: str,
) -> bytes:
    """The whole bundle in memory, for handing over the API."""
    return b"".join(bundle_lines(entries, checkpoints, final, appliance))


def write_bundle(
    path: Path,
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    final: Checkpoint,
    appliance: str,
) -> str:
    """Write the bundle to a temporary name beside ``path`` and rename it into
    place; return the SHA-256 (hex) of the file."""
    digest = hashlib.sha256()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        with os.fdopen(fd, "wb") as out:
            for line in bundle_lines(entries, checkpoints, final, appliance):
                digest.update(line)
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


class _Malformed(Exception):
    def __init__(self, problem: _Problem) -> None:
        super().__init__(problem.en)
        self.problem = problem


def _malformed(line: int, ja: str, en: str, code: str = "malformed") -> _Malformed:
    return _Malformed(
        _Problem(
            code,
            f"バンドルの {line} 行目が不正です: {ja}",
            f"Line {line} of the bundle is malformed: {en}",
            line=line,
        )
    )


_HEADER_KEYS = frozenset(["format", "version", "appliance", "exported_at", "public_keys"])
_ENTRY_KEYS = frozenset(
    [
        "type",
        "seq",
        "at",
        "actor",
        "role",
        "action",
        "outcome",
        "target",
        "purpose",
        "client",
        "detail",
        "prev_hash",
        "hash",
    ]
)
_CHECKPOINT_KEYS = frozenset(["type", "seq", "hash", "at", "signature", "public_key"])
_HEX32 = re.compile(r"[0-9a-f]{64}")
_HEX64 = re.compile(r"[0-9a-f]{128}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


class _Line:
    """One parsed line, with helpers that turn a bad field into ``_Malformed``."""

    def __init__(self, number: int, obj: dict[str, Any]) -> None:
        self.number = number
        self.obj = obj

    def bad(self, ja: str, en: str) -> _Malformed:
        return _malformed(self.number, ja, en)

    def keys(self, expected: frozenset[str]) -> None:
        if self.obj.keys() != expected:
            raise self.bad("項目が足りないか、余分な項目があります", "fields are missing or extra")

    def text(self, name: str) -> str:
        value = self.obj[name]
        if not isinstance(value, str):
            raise self.bad(f"{name} が文字列ではありません", f"{name} is not a string")
        return value

    def seq(self, minimum: int) -> int:
        value: object = self.obj["seq"]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.bad("seq が正しくありません", "seq is not a valid sequence number")
        return value

    def time(self, name: str) -> datetime:
        try:
            return parse_time(self.text(name))
        except ValueError:
            raise self.bad(f"{name} が日時ではありません", f"{name} is not a valid time") from None

    def hex(self, name: str, pattern: re.Pattern[str]) -> bytes:
        value = self.text(name)
        if not pattern.fullmatch(value):
            raise self.bad(f"{name} の16進表記が正しくありません", f"{name} is not valid hex")
        return bytes.fromhex(value)


def _parse_line(number: int, raw: bytes) -> _Line:
    if len(raw) > MAX_LINE_BYTES:
        raise _malformed(number, "行が長すぎます", "the line is too long")
    if not raw.endswith(b"\n"):
        raise _malformed(
            number,
            "行が途中で切れています（バンドルが切り詰められています）",
            "the line is cut short (the bundle was truncated)",
            code="truncated",
        )
    body = raw[:-1]
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed(number, "JSON として読めません", "it is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _malformed(number, "JSON オブジェクトではありません", "it is not a JSON object")
    try:
        again = canonical_json(obj)
    except (TypeError, ValueError):
        again = b""
    if again != body:
        raise _malformed(
            number,
            "正規の形式で書かれていません（編集されています）",
            "it is not in canonical form (it was edited)",
        )
    return _Line(number, obj)


def _parse_header(line: _Line) -> tuple[str, datetime, tuple[bytes, ...]]:
    if line.obj.get("format") != BUNDLE_FORMAT:
        raise line.bad(
            "Kura 監査バンドルのヘッダーではありません", "it is not a Kura audit bundle header"
        )
    version = line.obj.get("version")
    if version != BUNDLE_VERSION or isinstance(version, bool):
        raise line.bad("対応していない版です", f"bundle version {version!r} is not supported")
    line.keys(_HEADER_KEYS)
    appliance = line.text("appliance")
    exported_at = line.time("exported_at")
    keys = line.obj["public_keys"]
    if not isinstance(keys, list) or not all(
        isinstance(k, str) and _HEX32.fullmatch(k) for k in keys
    ):
        raise line.bad("public_keys が正しくありません", "public_keys is not a list of keys")
    return appliance, exported_at, tuple(bytes.fromhex(k) for k in keys)


def _parse_entry(line: _Line) -> AuditEntry:
    line.keys(_ENTRY_KEYS)
    detail = line.obj["detail"]
    if not isinstance(detail, dict):
        raise line.bad("detail がオブジェクトではありません", "detail is not an object")
    return AuditEntry(
        seq=line.seq(1),
        at=line.time("at"),
        actor=line.text("actor"),
        role=line.text("role"),
        action=line.text("action"),
        outcome=line.text("outcome"),
        target=line.text("target"),
        purpose=line.text("purpose"),
        client=line.text("client"),
        detail=detail,
        prev_hash=line.hex("prev_hash", _HEX32),
        hash=line.hex("hash", _HEX32),
    )


def _parse_checkpoint(line: _Line, final: bool) -> Checkpoint:
    line.keys(_CHECKPOINT_KEYS)
    return Checkpoint(
        seq=line.seq(0),
        hash=line.hex("hash", _HEX32),
        at=line.time("at"),
        signature=line.hex("signature", _HEX64),
        public_key=line.hex("public_key", _HEX32),
        final=final,
    )


@dataclass
class _Header:
    appliance: str
    exported_at: datetime
    public_keys: tuple[bytes, ...]


@dataclass
class _Parsed:
    """What a pass over the file leaves besides the entries it handed on."""

    header: _Header | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    final: Checkpoint | None = None
    sha256: str = ""


def _raw_lines(stream: BinaryIO) -> Iterator[bytes]:
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        yield raw


def _records(stream: BinaryIO, parsed: _Parsed) -> Iterator[AuditEntry]:
    """Parse the bundle, yielding entries as they come and filling ``parsed``
    with the header, the checkpoints and the export checkpoint."""
    digest = hashlib.sha256()
    number = 0
    for number, raw in enumerate(_raw_lines(stream), start=1):
        digest.update(raw)
        line = _parse_line(number, raw)
        if number == 1:
            parsed.header = _Header(*_parse_header(line))
            continue
        if parsed.final is not None:
            raise line.bad(
                "エクスポート時のチェックポイントの後に行があります",
                "there is a line after the export checkpoint",
            )
        kind = line.obj.get("type")
        if kind == "entry":
            if parsed.checkpoints:
                raise line.bad(
                    "チェックポイントの後に記録があります", "an entry follows the checkpoints"
                )
            yield _parse_entry(line)
        elif kind in ("checkpoint", "final"):
            cp = _parse_checkpoint(line, final=kind == "final")
            if cp.final:
                parsed.final = cp
            else:
                parsed.checkpoints.append(cp)
        else:
            raise line.bad("不明な種類の行です", "the line is of an unknown type")
    if number == 0:
        raise _Malformed(
            _Problem("malformed", "バンドルが空です。", "The bundle is empty.", line=1)
        )
    if parsed.final is None:
        raise _Malformed(
            _Problem(
                "truncated",
                "エクスポート時のチェックポイントがありません（バンドルが切り詰められています）。",
                "The export checkpoint is missing: the bundle was cut short.",
                line=number + 1,
            )
        )
    parsed.sha256 = digest.hexdigest()


def _open(source: Path | bytes) -> BinaryIO:
    if isinstance(source, bytes | bytearray):
        return io.BytesIO(source)
    return Path(source).open("rb")


def read_bundle(source: Path | bytes) -> Bundle:
    """Parse a bundle (a file or its bytes) without judging the chain.
    Raises ``AuditBundleMalformed`` if it cannot be read or parsed."""
    parsed = _Parsed()
    try:
        with _open(source) as stream:
            entries = tuple(_records(stream, parsed))
    except _Malformed as e:
        raise AuditBundleMalformed(e.problem.en, e.problem.ja, line=e.problem.line) from None
    except OSError as e:
        raise AuditBundleMalformed(
            f"The bundle cannot be read: {e.strerror or e}",
            f"バンドルを読み込めません: {e.strerror or e}",
        ) from None
    assert parsed.header is not None and parsed.final is not None  # _records saw to it
    return Bundle(
        appliance=parsed.header.appliance,
        exported_at=parsed.header.exported_at,
        public_keys=parsed.header.public_keys,
        entries=entries,
        checkpoints=tuple(parsed.checkpoints),
        final=parsed.final,
        sha256=parsed.sha256,
    )


def verify_bundle(source: Path | bytes, trusted_public_key: bytes | None = None) -> VerifyReport:
    """Verify a bundle offline: its form, the chain, every checkpoint and the
    export checkpoint. Never raises for a bad or unreadable bundle; the report
    says what is wrong. Memory use is 32 bytes per entry."""
    if bad := _bad_trusted_key(trusted_public_key):
        return bad
    verifier = _Verifier(trusted_public_key)
    parsed = _Parsed()
    try:
        with _open(source) as stream:
            for entry in _records(stream, parsed):
                verifier.walk.feed(entry)
    except _Malformed as e:
        return _report(
            e.problem,
            entries=verifier.walk.count,
            checkpoints=len(parsed.checkpoints),
            fingerprints=[],
        )
    except OSError as e:
        reason = e.strerror or str(e)
        return _report(
            _Problem(
                "unreadable",
                f"バンドルを読み込めません: {reason}",
                f"The bundle cannot be read: {reason}",
            ),
            entries=0,
            checkpoints=0,
            fingerprints=[],
        )
    assert parsed.header is not None and parsed.final is not None  # _records saw to it
    verifier.checkpoints = parsed.checkpoints
    problem, fingerprints = verifier.finish(parsed.final)
    if problem is None:
        signers = dict.fromkeys(cp.public_key for cp in [*parsed.checkpoints, parsed.final])
        if parsed.header.public_keys != tuple(signers):
            problem = _Problem(
                "malformed",
                "ヘッダーの公開鍵一覧が、チェックポイントに署名した鍵と一致しません。",
                "The header's list of public keys does not match the keys that signed "
                "the checkpoints.",
                line=1,
            )
        elif parsed.header.exported_at != parsed.final.at:
            problem = _Problem(
                "malformed",
                "ヘッダーのエクスポート日時が、エクスポート時のチェックポイントと一致しません。",
                "The header's export time does not match the export checkpoint.",
                line=1,
            )
    return _report(
        problem,
        entries=verifier.walk.count,
        checkpoints=len(parsed.checkpoints),
        fingerprints=fingerprints,
        last_seq=verifier.walk.last_good,
        exported_at=parsed.final.at,
        bundle_sha256=parsed.sha256,
    )
