"""Audit entries: the canonical form, the chain hash and the number guard.

Every entry's ``hash`` is ``sha256(prev_hash || canonical(fields))``, where
``prev_hash`` is the previous entry's hash (``GENESIS``, 32 zero bytes, for
entry 1) and ``canonical`` is deterministic JSON. Changing, deleting or
reordering a row therefore breaks the chain at that row.

No entry may hold a My Number: ``make_entry`` refuses one, and the vault uses
the same guard to scrub user-typed text before it is logged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

GENESIS = bytes(32)
"""The ``prev_hash`` of entry 1."""

OUTCOMES = frozenset({"ok", "denied", "error"})
ROLES = frozenset({"MU", "MA", "SA", "DA", ""})


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
