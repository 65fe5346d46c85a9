"""Exports for forms (持出し): which subjects go into the file, what the file
can carry, and the export request's state machine. No I/O here.

Theory of operation. An MU *prepares* an export: a purpose, optionally a tax
year, the subjects (a kind and/or a list of ids) and an encoding. ``select``
decides, subject by subject, whether it is in scope (active in the tax year),
whether its purposes allow the declared one (else it is skipped and reported)
and whether every text field can be written in the chosen encoding (else it is
left out and reported: the subject's code, the field and the characters — a
file for the tax office must not carry a silently replaced character). The
vault stores the request with the ids it counted; at or under the SA's
threshold it is approved at once, over it it waits for an MA. The requester
*downloads* an approved request once: the vault writes the CSV from the same
ids (never more rows than were approved), logs the take-out with the row count
and the file's SHA-256, and the request is spent.

Shift_JIS here means what the tax office's and eLTAX's tools read: JIS X 0208
(with ASCII and half-width katakana), written as Windows does (cp932). cp932
also holds vendor extensions (NEC and IBM rows, e.g. 髙 and ①) that those
tools do not take, so a character there is reported as outside JIS X 0208,
just like a character cp932 cannot encode at all (e.g. 𠮷).

Every state change goes through ``transition`` and the one table below.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from kura.core import argschema, spreadsheet
from kura.core.argschema import KIND, LIMIT, PAGE, UUID, obj
from kura.core.audit import looks_like_my_number
from kura.core.errors import BadRequest, Conflict, KuraError, PermissionDenied

TOKYO = ZoneInfo("Asia/Tokyo")

ENCODINGS = ("shift_jis", "utf-8-bom")
HEADER = ("種別", "コード", "氏名", "フリガナ", "個人番号")
CHECKED_FIELDS = ("code", "name", "name_kana")
REASON_MAX = 500
EARLIEST_TAX_YEAR, LATEST_TAX_YEAR = 2016, 2100  # My Numbers are used from tax year 2016


class State(StrEnum):
    PENDING = "pending"  # waits for an MA
    APPROVED = "approved"  # the requester may download it once
    REJECTED = "rejected"
    DOWNLOADED = "downloaded"  # taken out; spent
    CANCELLED = "cancelled"


class Event(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    DOWNLOAD = "download"
    CANCEL = "cancel"


TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.PENDING, Event.APPROVE): State.APPROVED,
    (State.PENDING, Event.REJECT): State.REJECTED,
    (State.PENDING, Event.CANCEL): State.CANCELLED,
    (State.APPROVED, Event.DOWNLOAD): State.DOWNLOADED,
}


class IllegalTransition(Conflict):
    """The export request is not in a state that allows this (e.g. a second
    download, or a decision on a request already decided)."""

    code = "export_state"
    ja = "このエクスポート依頼は現在の状態ではその操作ができません。"
    en = "The export request's state does not allow this."


class ApprovalRequired(KuraError):
    """The export has more rows than the SA's threshold: it needs an MA's
    approval first (an export request), so it cannot be taken directly."""

    code = "approval_required"
    status = 403
    ja = "この行数の持出しには管理者（MA）の承認が必要です。"
    en = "An export of this size needs an MA's approval."

    def __init__(self, rows: int, threshold: int) -> None:
        super().__init__(
            f"This export has {rows} rows, more than the {threshold} the security policy allows"
            " without approval: prepare an export request for an MA to approve.",
            f"この持出しは {rows} 行で、承認なしで持ち出せる上限（{threshold} 行）を超えています。"
            "エクスポート依頼を作成し、マイナンバー管理者の承認を受けてください。",
            rows=rows,
            threshold=threshold,
        )


class OwnRequest(PermissionDenied):
    """An MA may not decide an export request they made themselves."""

    code = "own_request"
    ja = "自分が作成したエクスポート依頼は承認・却下できません。"
    en = "You cannot decide an export request you made yourself."


class NotRequester(PermissionDenied):
    """Only the person who prepared an export may download it."""

    ja = "このエクスポートをダウンロードできるのは、依頼を作成した本人だけです。"
    en = "Only the person who prepared this export may download it."


_REFUSALS: Mapping[State, tuple[str, str]] = {
    State.PENDING: (
        "This export is waiting for an MA's approval.",
        "このエクスポートはマイナンバー管理者の承認待ちです。",
    ),
    State.APPROVED: (
        "This export was already approved.",
        "このエクスポートは承認済みです。",
    ),
    State.REJECTED: (
        "This export was rejected.",
        "このエクスポートは却下されました。",
    ),
    State.DOWNLOADED: (
        "This export was already downloaded; prepare a new one if it is needed again.",
        "このエクスポートはダウンロード済みです。必要な場合は新しく作成してください。",
    ),
    State.CANCELLED: (
        "This export was cancelled.",
        "このエクスポートは取り消されました。",
    ),
}


def transition(state: State | str, event: Event | str) -> State:
    """The state after ``event``; IllegalTransition if the table has no such move."""
    current, happening = State(state), Event(event)
    after = TRANSITIONS.get((current, happening))
    if after is None:
        en, ja = _REFUSALS[current]
        raise IllegalTransition(en, ja, state=str(current), event=str(happening))
    return after


def initial_state(rows: int, threshold: int) -> State:
    """Approved at once at or under the threshold; else an MA must approve."""
    return State.APPROVED if rows <= threshold else State.PENDING


def decision_event(decision: str) -> Event:
    if decision == "approve":
        return Event.APPROVE
    if decision == "reject":
        return Event.REJECT
    raise BadRequest(
        "decision must be approve or reject", "decision は approve か reject です。",
        field="decision",
    )


def clean_reason(event: Event, reason: str) -> str:
    """The reason as stored: required to reject; never anything like a number
    (it is shown to the requester and kept with the request)."""
    reason = reason.strip()
    if event is Event.REJECT and not reason:
        raise BadRequest(
            "reason: give the reason for the rejection",
            "reason: 却下の理由を入力してください。",
            field="reason",
        )
    if len(reason) > REASON_MAX:
        raise BadRequest(
            f"reason: at most {REASON_MAX} characters",
            f"reason: {REASON_MAX}文字以内で入力してください。",
            field="reason",
        )
    if looks_like_my_number(reason):
        raise BadRequest(
            "reason: must not contain a number like a My Number",
            "reason: 個人番号のような数字は入力できません。",
            field="reason",
        )
    return reason


# --- what a file can carry ------------------------------------------------------

UNENCODABLE = "unencodable"  # the encoding has no code for it at all
OUTSIDE_JIS = "outside_jis_x_0208"  # only in a vendor extension of Shift_JIS
PURPOSE = "purpose"  # the subject's purposes do not include the declared one


def character_problem(ch: str) -> str | None:
    """Why ``ch`` cannot go into a Shift_JIS file for the tax office, or None."""
    try:
        encoded = ch.encode("cp932")
    except UnicodeEncodeError:
        return UNENCODABLE
    if len(encoded) == 1:  # ASCII, or JIS X 0201 half-width katakana
        return None
    lead = encoded[0]
    # cp932's lead bytes beyond JIS X 0208: 0x87 row 13 (NEC specials),
    # 0xED-0xEE (NEC-selected IBM), 0xF0-0xF9 (user-defined), 0xFA-0xFC (IBM).
    if lead == 0x87 or lead in (0xED, 0xEE) or lead >= 0xF0:
        return OUTSIDE_JIS
    return None


def text_problems(text: str, encoding: str) -> dict[str, str]:
    """Problem → the offending characters (each once, in order) in ``text``."""
    if encoding != "shift_jis":
        return {}  # UTF-8 carries every character a subject's fields may hold
    found: dict[str, str] = {}
    for ch in dict.fromkeys(text):
        problem = character_problem(ch)
        if problem:
            found[problem] = found.get(problem, "") + ch
    return found


@dataclass(frozen=True)
class Candidate:
    """A subject as export selection sees it: no number."""

    id: str
    kind: str
    code: str
    name: str
    name_kana: str
    purposes: tuple[str, ...]
    created_at: datetime
    retention_event: date | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Candidate:
        return cls(
            id=str(row["id"]),
            kind=row["kind"],
            code=row["code"],
            name=row["name"],
            name_kana=row["name_kana"],
            purposes=tuple(row["purposes"]),
            created_at=row["created_at"],
            retention_event=row["retention_event"],
        )


@dataclass(frozen=True)
class Issue:
    """One reason a subject is not in the file: which subject (kind and code,
    never the number), which field and which characters, or the purpose."""

    kind: str
    code: str
    problem: str  # PURPOSE | UNENCODABLE | OUTSIDE_JIS
    field: str = ""
    characters: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "code": self.code,
            "problem": self.problem,
            "field": self.field,
            "characters": self.characters,
        }


@dataclass(frozen=True)
class Selection:
    included: tuple[str, ...]  # subject ids, in file order
    skipped_purpose: tuple[str, ...]  # subject ids whose purposes do not allow it
    unencodable: tuple[str, ...]  # subject ids left out for their characters
    issues: tuple[Issue, ...]

    @property
    def rows(self) -> int:
        return len(self.included)


def active_in(tax_year: int, created_at: datetime, retention_event: date | None) -> bool:
    """True if the subject was on the books during ``tax_year``: registered by
    its end (Japan's time) and with no retention event (end of employment,
    contract, last payment) before its start."""
    registered = created_at.astimezone(TOKYO).date() if created_at.tzinfo else created_at.date()
    return registered <= date(tax_year, 12, 31) and (
        retention_event is None or retention_event >= date(tax_year, 1, 1)
    )


def select(
    candidates: Iterable[Candidate], purpose: str, encoding: str, tax_year: int | None = None
) -> Selection:
    """Which candidates go into the file, and why the others do not."""
    included: list[str] = []
    skipped: list[str] = []
    unencodable: list[str] = []
    issues: list[Issue] = []
    for c in candidates:
        if tax_year is not None and not active_in(tax_year, c.created_at, c.retention_event):
            continue
        if purpose not in c.purposes:
            skipped.append(c.id)
            issues.append(Issue(c.kind, c.code, PURPOSE))
            continue
        found = [
            Issue(c.kind, c.code, problem, field, chars)
            for field in CHECKED_FIELDS
            for problem, chars in text_problems(getattr(c, field), encoding).items()
        ]
        if found:
            unencodable.append(c.id)
            issues.extend(found)
            continue
        included.append(c.id)
    return Selection(tuple(included), tuple(skipped), tuple(unencodable), tuple(issues))


def csv_bytes(lines: Iterable[Sequence[str]], encoding: str) -> bytes:
    """The file: a header and one line per subject, CRLF, in Shift_JIS (cp932)
    or UTF-8 with a BOM (what Excel needs to read UTF-8)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    # A name like "=HYPERLINK(...)" must open as text, not run as a formula.
    writer.writerows(spreadsheet.as_text_rows(lines))
    text = out.getvalue()
    if encoding == "shift_jis":
        return text.encode("cp932")  # select() left out whatever would not encode
    return ("\ufeff" + text).encode("utf-8")


def charset(encoding: str) -> str:
    return "Shift_JIS" if encoding == "shift_jis" else "UTF-8"


def filename(purpose: str, tax_year: int | None, request_id: str) -> str:
    """The download's name: purpose, tax year and the request, never personal data."""
    year = str(tax_year) if tax_year else "all"
    return f"kura-{purpose}-{year}-{request_id[:8]}.csv"


def default_tax_year(today: date) -> int:
    """The year whose forms are being made: in January, last year's (withholding
    slips, payment reports and records are due by 31 January), else this one."""
    return today.year - 1 if today.month == 1 else today.year


# --- the vault operations' arguments (registered by kura.core.api) --------------

SCHEMAS: dict[str, dict[str, Any]] = {
    "export.prepare": obj(
        {"purpose": argschema.PURPOSE},
        {
            "tax_year": {
                "type": "integer",
                "minimum": EARLIEST_TAX_YEAR,
                "maximum": LATEST_TAX_YEAR,
            },
            "kind": KIND,
            "ids": {"type": "array", "items": UUID, "maxItems": 100_000},
            "encoding": {"type": "string", "enum": list(ENCODINGS)},
        },
    ),
    "export.list": obj(
        {},
        {
            "id": UUID,
            "state": {"type": "string", "enum": [s.value for s in State]},
            "offset": PAGE,
            "limit": LIMIT,
        },
    ),
    "export.decide": obj(
        {"id": UUID, "decision": {"type": "string", "enum": ["approve", "reject"]}},
        {"reason": {"type": "string", "maxLength": REASON_MAX}},
    ),
    "export.download": obj({"id": UUID}, {}),
}
