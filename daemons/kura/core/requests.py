"""Registration requests: collecting an employee's My Number (and their
dependents') through a one-time link. Pure: values in, values or decisions out.

Theory of operation
-------------------
A clerk creates a request for one employee (name, employee code, purposes,
how many days the link lives). Kura makes a random token, hands it out ONCE
(as a link and a QR code) and keeps only its SHA-256, so the database alone
cannot open the link. The employee opens the link without an account, enters
their number and their dependents', uploads the number document and an
identity document, and submits; from then on the token is dead. An MA
compares the documents with the numbers and approves (the numbers become
subjects) or rejects with a reason; a rejected or expired request can be
reissued with a new link, which kills the old one.

Everything that changes a request's state is in ``TRANSITIONS``; anything not
in it raises ``IllegalTransition``. ``expired`` is never stored: an open
request whose link has passed its time *is* expired (``effective_state``).

Documents are recognised by their first bytes (JPEG, PNG or PDF), never by a
file name or the type a browser declared, and refused above
``MAX_DOCUMENT_BYTES``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from kura.core import spreadsheet, subjects
from kura.core.argschema import LIMIT, PAGE, UUID, obj, text
from kura.core.errors import BadRequest, Conflict, InvalidNumber, KuraError
from kura.core.purposes import BY_CODE
from kura.core.subjects import FIELD_LABELS_JA

# --- the state machine -------------------------------------------------------

OPEN, SUBMITTED, APPROVED, REJECTED, CANCELLED = (
    "open",
    "submitted",
    "approved",
    "rejected",
    "cancelled",
)
EXPIRED = "expired"  # derived: an open request whose link has passed its time
STORED_STATES = (OPEN, SUBMITTED, APPROVED, REJECTED, CANCELLED)
STATES = (*STORED_STATES, EXPIRED)

SUBMIT, APPROVE, REJECT, REISSUE, CANCEL = "submit", "approve", "reject", "reissue", "cancel"

TRANSITIONS: dict[tuple[str, str], str] = {
    (OPEN, SUBMIT): SUBMITTED,
    (SUBMITTED, APPROVE): APPROVED,
    (SUBMITTED, REJECT): REJECTED,
    (REJECTED, REISSUE): OPEN,
    (EXPIRED, REISSUE): OPEN,
    (OPEN, CANCEL): CANCELLED,
    (EXPIRED, CANCEL): CANCELLED,
    (REJECTED, CANCEL): CANCELLED,
}

_STATE_JA = {
    OPEN: "受付中",
    SUBMITTED: "承認待ち",
    APPROVED: "承認済み",
    REJECTED: "差戻し",
    CANCELLED: "取消し",
    EXPIRED: "期限切れ",
}
_EVENT_JA = {
    SUBMIT: "提出",
    APPROVE: "承認",
    REJECT: "差戻し",
    REISSUE: "再発行",
    CANCEL: "取消し",
}


class IllegalTransition(Conflict):
    """The request is not in a state where this can be done (e.g. approving
    a request nobody has submitted yet)."""

    code = "illegal_transition"
    ja = "この依頼は現在の状態ではその操作ができません。"
    en = "The request is not in a state that allows this."


class LinkInvalid(KuraError):
    """A one-time link that is used, expired, cancelled or unknown. One error
    for all four, so that the answer says nothing about which. (The web page
    answers 410 Gone; the API says 404, the status its document lists for a
    record that is not there.)"""

    code = "link_invalid"
    status = 404
    ja = "このリンクは無効です（使用済み、期限切れ、または取り消されています）。"
    en = "This link is no longer valid."


class DocumentRejected(BadRequest):
    """An uploaded document is not a JPEG, PNG or PDF (judged by its content)."""

    code = "document_type"
    status = 422
    ja = "書類は JPEG、PNG または PDF のファイルを送ってください。"
    en = "Send each document as a JPEG, PNG or PDF file."


class DocumentTooLarge(BadRequest):
    """An uploaded document is over the size limit (or empty)."""

    code = "document_too_large"
    status = 413
    ja = "書類のファイルが大きすぎます。"
    en = "A document file is too large."


class DuplicateInSubmission(InvalidNumber):
    """The same number was entered twice in one submission."""

    code = "duplicate_in_submission"
    ja = "同じ個人番号が2回入力されています。"
    en = "The same number was entered twice."


def effective_state(stored: str, expires_at: datetime, now: datetime) -> str:
    """The state a person sees: an open request past its time is expired."""
    if stored == OPEN and expires_at <= now:
        return EXPIRED
    return stored


def next_state(state: str, event: str) -> str:
    """The state after ``event``, or IllegalTransition."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"a request that is {state} cannot be {_past(event)}",
            f"{_STATE_JA.get(state, state)}の依頼は{_EVENT_JA.get(event, event)}できません。",
            state=state,
            event=event,
        ) from None


def _past(event: str) -> str:
    return {
        SUBMIT: "submitted",
        APPROVE: "approved",
        REJECT: "rejected",
        REISSUE: "reissued",
        CANCEL: "cancelled",
    }.get(event, event)


def allowed_events(state: str) -> frozenset[str]:
    """What may be done with a request in ``state`` (for showing buttons)."""
    return frozenset(event for (s, event) in TRANSITIONS if s == state)


# --- the one-time link -------------------------------------------------------

TOKEN_PATTERN = r"^[A-Za-z0-9_-]{20,64}$"  # noqa: S105 (a pattern, not a secret)
_TOKEN = re.compile(TOKEN_PATTERN)


def new_token() -> tuple[str, bytes]:
    """A fresh link token and the digest that is stored in its place."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(b"kura/v1/request-link\x00" + token.encode()).digest()


def burnt_digest() -> bytes:
    """A digest that no token has: what a used link's digest is replaced by."""
    return hashlib.sha256(b"kura/v1/burnt\x00" + secrets.token_bytes(32)).digest()


def well_formed_token(token: str) -> bool:
    return bool(_TOKEN.fullmatch(token))


DEFAULT_EXPIRY_DAYS = 14
MAX_EXPIRY_DAYS = 60


def expiry(now: datetime, days: int) -> datetime:
    return now + timedelta(days=days)


# --- what a clerk asks for -------------------------------------------------------

EMPLOYEE_CODE_MAX = 28  # dependents become <code>-<n>, and subject codes stop at 32
_EMPLOYEE_CODE = re.compile(rf"[A-Za-z0-9_-]{{1,{EMPLOYEE_CODE_MAX}}}")


@dataclass(frozen=True)
class Draft:
    """A request as a clerk asked for it, checked and normalised."""

    name: str
    name_kana: str
    employee_code: str
    purposes: tuple[str, ...]
    expires_days: int
    purge_documents: bool


def make_draft(
    *,
    name: str,
    name_kana: str = "",
    employee_code: str,
    purposes: Sequence[str],
    expires_days: int = DEFAULT_EXPIRY_DAYS,
    purge_documents: bool = False,
) -> Draft:
    name = subjects.clean_text_field("name", name)
    name_kana = subjects.clean_text_field("name_kana", name_kana)
    code = employee_code.strip()
    if not _EMPLOYEE_CODE.fullmatch(code):
        raise subjects.field_error(
            "employee_code",
            "format",
            f"半角英数字、ハイフン、アンダースコアで{EMPLOYEE_CODE_MAX}文字以内で入力してください。",
            f"use at most {EMPLOYEE_CODE_MAX} letters A-Z, digits, hyphens or underscores.",
        )
    chosen = tuple(p for p in BY_CODE if p in purposes)
    if not chosen or len(chosen) != len(set(purposes)):
        raise subjects.field_error(
            "purposes",
            "required",
            "利用目的を1つ以上選んでください。",
            "choose at least one purpose from the list.",
        )
    if not 1 <= expires_days <= MAX_EXPIRY_DAYS:
        raise subjects.field_error(
            "expires_days",
            "out_of_range",
            f"1〜{MAX_EXPIRY_DAYS}日で指定してください。",
            f"must be between 1 and {MAX_EXPIRY_DAYS} days.",
        )
    return Draft(name, name_kana, code, chosen, expires_days, bool(purge_documents))


def dependent_code(employee_code: str, position: int) -> str:
    """The subject code a dependent is registered under: ``E001-1``, ``E001-2``…"""
    return f"{employee_code}-{position}"


# --- what the employee submits ------------------------------------------------

SELF = "self"
RELATIONS = ("spouse", "child", "parent", "other")
MAX_DEPENDENTS = 10

DOCUMENT_KINDS = ("number", "identity")
MAX_DOCUMENT_BYTES = 10 << 20
MIN_DOCUMENT_BYTES = 16
CONTENT_TYPES = ("image/jpeg", "image/png", "application/pdf")


@dataclass(frozen=True)
class Entry:
    """One person in a submission: the employee (position 0) or a dependent."""

    position: int
    relation: str
    name: str
    name_kana: str
    birth_date: date | None
    number: str

    def __repr__(self) -> str:
        return f"Entry(position={self.position}, relation={self.relation!r}, number='<hidden>')"


@dataclass(frozen=True)
class Document:
    kind: str
    content_type: str  # as detected from the content
    content: bytes

    def __repr__(self) -> str:
        return f"Document(kind={self.kind!r}, {self.content_type}, {len(self.content)} bytes)"


@dataclass(frozen=True)
class Submission:
    entries: tuple[Entry, ...]
    documents: tuple[Document, ...]


def detect_type(content: bytes) -> str | None:
    """The document's type from its first bytes, or None if it is none of
    JPEG, PNG and PDF. File names and declared types are never consulted."""
    if content[:3] == b"\xff\xd8\xff" and len(content) > 3 and content[3] >= 0xC0:
        return "image/jpeg"
    if content[:8] == b"\x89PNG\r\n\x1a\n" and content[12:16] == b"IHDR":
        return "image/png"
    if content[:5] == b"%PDF-":
        return "application/pdf"
    return None


def check_size(size: int, limit: int = MAX_DOCUMENT_BYTES) -> None:
    """DocumentTooLarge unless ``size`` fits the rules (the web layer calls this
    while a file streams in, to stop reading it as soon as it is too big)."""
    if size > limit:
        mib = limit / (1 << 20)
        raise DocumentTooLarge(
            f"a document may be at most {mib:g} MiB",
            f"書類のファイルは{mib:g}MB以内にしてください。",
            limit=limit,
        )


def check_document(kind: str, content: bytes) -> Document:
    """The document with the type its content shows, or an error saying why not."""
    if kind not in DOCUMENT_KINDS:
        raise BadRequest(
            "a document's kind is number or identity",
            "書類の種類は number（番号確認）か identity（身元確認）です。",
            field="documents",
        )
    check_size(len(content))
    if len(content) < MIN_DOCUMENT_BYTES:
        raise DocumentRejected(
            "the document file is empty or cut short",
            "書類のファイルが空か、途中で切れています。",
            kind=kind,
        )
    found = detect_type(content)
    if found is None:
        raise DocumentRejected(kind=kind)
    return Document(kind, found, content)


def _entry_error(index: int, field: str, exc: KuraError) -> KuraError:
    """``exc`` re-raised naming the entry (index 0 is the employee)."""
    who_en = "you" if index == 0 else f"dependent {index}"
    who_ja = "ご本人" if index == 0 else f"扶養親族{index}"
    exc.message_en = f"{who_en}: {exc.message_en}"
    exc.message_ja = f"{who_ja}: {exc.message_ja}"
    exc.detail = {**exc.detail, "entry": index, "field": field}
    return exc


def make_entry(
    index: int,
    raw: Mapping[str, Any],
    self_name: str,
    self_kana: str,
) -> Entry:
    relation = str(raw.get("relation", ""))
    if index == 0:
        if relation != SELF:
            raise BadRequest(
                "the first entry is the employee (relation self)",
                "最初の項目はご本人（relation self）です。",
                field="entries",
            )
    elif relation not in RELATIONS:
        raise _entry_error(
            index,
            "relation",
            BadRequest(
                "choose the relation (spouse, child, parent or other)",
                "続柄を選んでください。",
            ),
        )
    try:
        number = subjects.check_number(str(raw.get("number", "")))
    except KuraError as exc:
        raise _entry_error(index, "number", exc) from None
    if index == 0:
        name, kana = self_name, self_kana
    else:
        # Names typed on the link are exported later: one that starts like a
        # spreadsheet formula is refused here (and written as text on output).
        try:
            name = subjects.clean_text_field("name", str(raw.get("name", "")))
            spreadsheet.refuse_formula("name", FIELD_LABELS_JA["name"], name)
        except KuraError as exc:
            raise _entry_error(index, "name", exc) from None
        try:
            kana = subjects.clean_text_field("name_kana", str(raw.get("name_kana", "")))
            spreadsheet.refuse_formula("name_kana", FIELD_LABELS_JA["name_kana"], kana)
        except KuraError as exc:
            raise _entry_error(index, "name_kana", exc) from None
    birth_text = raw.get("birth_date") or ""
    try:
        born = subjects.parse_birth_date(str(birth_text))
    except KuraError as exc:
        raise _entry_error(index, "birth_date", exc) from None
    if index > 0 and born is None:
        raise _entry_error(
            index,
            "birth_date",
            subjects.field_error(
                "birth_date",
                "required",
                "入力してください。",
                "is required.",
            ),
        )
    return Entry(index, relation, name, kana, born, number)


def make_submission(
    entries: Sequence[Mapping[str, Any]],
    documents: Sequence[Mapping[str, Any]],
    self_name: str,
    self_kana: str = "",
) -> Submission:
    """Check everything an employee sent, in the order they would fix it: the
    people first, then the documents. Messages name the entry and the field,
    never a number."""
    if not entries:
        raise BadRequest(
            "enter your own number", "ご本人の個人番号を入力してください。", field="entries"
        )
    if len(entries) > 1 + MAX_DEPENDENTS:
        raise BadRequest(
            f"at most {MAX_DEPENDENTS} dependents",
            f"扶養親族は{MAX_DEPENDENTS}人までです。",
            field="entries",
        )
    made = [make_entry(i, raw, self_name, self_kana) for i, raw in enumerate(entries)]
    seen: dict[str, int] = {}
    for entry in made:
        if entry.number in seen:
            raise _entry_error(
                entry.position, "number", DuplicateInSubmission(duplicate_of=seen[entry.number])
            )
        seen[entry.number] = entry.position
    docs: dict[str, Document] = {}
    for raw in documents:
        kind = str(raw.get("kind", ""))
        if kind in docs:
            raise BadRequest(
                "send each document once",
                "書類はそれぞれ1つずつ送ってください。",
                field="documents",
            )
        content = raw.get("content", "")
        try:
            data = base64.b64decode(str(content), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                "a document's content must be base64",
                "書類の内容は base64 で送ってください。",
                field="documents",
            ) from None
        docs[kind] = check_document(kind, data)
    for kind in DOCUMENT_KINDS:
        if kind not in docs:
            ja, en = _MISSING_DOCUMENT[kind]
            raise BadRequest(en, ja, field=f"{kind}_document", reason="missing_document")
    return Submission(tuple(made), tuple(docs[k] for k in DOCUMENT_KINDS))


_MISSING_DOCUMENT = {
    "number": (
        "番号確認書類（マイナンバーカードの裏面など）のファイルを添付してください。",
        "attach the number document (e.g. the back of your My Number card).",
    ),
    "identity": (
        "身元確認書類（運転免許証など）のファイルを添付してください。",
        "attach the identity document (e.g. a driving licence).",
    ),
}


# --- the vault operations' arguments (kura.core.api registers them) -----------
_PURPOSE = {"type": "string", "enum": list(BY_CODE)}
_DAYS = {"type": "integer", "minimum": 1, "maximum": MAX_EXPIRY_DAYS}
_TOKEN_TEXT = text(64, 20, TOKEN_PATTERN)
_STATE = {"type": "string", "enum": list(STATES)}
_DOCUMENT_B64 = (MAX_DOCUMENT_BYTES + 2) // 3 * 4

SCHEMAS: dict[str, dict[str, Any]] = {
    "request.create": obj(
        {
            "name": text(100, 1),
            "employee_code": text(EMPLOYEE_CODE_MAX, 1),
            "purposes": {
                "type": "array",
                "items": _PURPOSE,
                "minItems": 1,
                "maxItems": len(BY_CODE),
            },
        },
        {
            "name_kana": text(100),
            "expires_days": _DAYS,
            "purge_documents": {"type": "boolean"},
        },
    ),
    "request.list": obj({}, {"state": _STATE, "id": UUID, "offset": PAGE, "limit": LIMIT}),
    "request.get": obj({"id": UUID}),
    "request.document": obj({"id": UUID, "document_id": UUID}),
    "request.approve": obj({"id": UUID}),
    "request.reject": obj({"id": UUID, "reason": text(1000, 1)}),
    "request.reissue": obj({"id": UUID}, {"expires_days": _DAYS}),
    "request.cancel": obj({"id": UUID}),
    "request.open": obj({"token": _TOKEN_TEXT}),
    "request.submit": obj(
        {
            "token": _TOKEN_TEXT,
            "entries": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1 + MAX_DEPENDENTS,
                "items": obj(
                    # Checked by make_submission, whose messages name the entry.
                    {"relation": text(20), "number": text(40)},
                    {
                        "name": text(100),
                        "name_kana": text(100),
                        "birth_date": {"type": ["string", "null"], "maxLength": 10},
                    },
                ),
            },
            "documents": {
                "type": "array",
                "minItems": 0,  # a missing one gets make_submission's message
                "maxItems": len(DOCUMENT_KINDS),
                "items": obj(
                    {
                        "kind": {"type": "string", "enum": list(DOCUMENT_KINDS)},
                        "content": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": _DOCUMENT_B64 + 4,
                        },
                    },
                    {"content_type": text(100)},
                ),
            },
        }
    ),
}
