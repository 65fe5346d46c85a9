"""Retention and disposal, without I/O: when a subject's numbers must go, what
is due on a given day, the life of a disposal batch, and the disposal record
a batch leaves behind.

Theory of operation
-------------------
Each subject has a retention basis (end of employment, end of contract, last
payment) and, once that event has happened, its date (``retention_event``,
set by an MA). The SA's rule for the basis turns the event into a due date:

- anchor ``event``: the event's date plus ``keep_years`` (an event on
  29 February falls due on 1 March in a year without one: the period has not
  ended on 28 February);
- anchor ``jan11_next_year``: 11 January of the year after the event, plus
  ``keep_years``. This is the 扶養控除等申告書 rule of DESIGN.md: the form is
  kept for seven years from the day after 10 January of the year following its
  filing deadline. The last form an employee files is the one for the year
  they leave, whose deadline falls in that same year; so the keeping starts
  on 11 January of the next year and, with seven years, ends on 10 January
  seven years later. The due date is the first day the form need not be
  kept: an employee who left on 2026-03-31 is due on 2034-01-11.

A subject is due on ``as_of`` when its due date is on or before ``as_of``.
Dependents go with their employee: a dependent is due when its employee is,
or on its own when its own event is set (whichever comes first).

A batch is proposed from the due list (MU or MA) and decided by an MA who is
not the proposer; ``TRANSITIONS`` is its whole life. Approving it destroys
the subjects (their data keys and ciphertexts) and leaves one disposal record
(廃棄記録) per kind and basis with the count, never a number or a name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

from kura.core.argschema import DATE, LIMIT, PAGE, UUID, obj
from kura.core.audit import looks_like_my_number
from kura.core.errors import BadRequest, Conflict, KuraError, PermissionDenied
from kura.core.subjects import KINDS, RETENTION_BASES

TOKYO = ZoneInfo("Asia/Tokyo")
ANCHORS = ("event", "jan11_next_year")
MAX_KEEP_YEARS = 100
METHOD = "crypto_shred"  # the data key destroyed and the rows deleted
RECORD_KINDS = (*KINDS, "documents")
REASON_MAX = 500
MAX_BATCH = 1000


# --- errors -------------------------------------------------------------------


class InvalidRetentionRule(KuraError):
    """A retention rule's years or anchor are out of range."""

    code = "invalid_retention_rule"
    status = 422
    ja = "保存年数は0〜100の整数、起算点は選択肢から選んでください。"
    en = "Keep years must be a whole number from 0 to 100, and the anchor one of the choices."


class NotDue(Conflict):
    """A subject in a batch is not (or no longer) due for disposal."""

    code = "not_due"
    ja = "廃棄期限に達していない対象者が含まれています。"
    en = "Some of the subjects are not due for disposal."


class AlreadyProposed(Conflict):
    """A subject is already in a batch waiting for a decision."""

    code = "already_proposed"
    ja = "承認待ちの廃棄申請に含まれている対象者があります。"
    en = "Some of the subjects are already in a disposal batch awaiting a decision."


class IllegalTransition(Conflict):
    """A batch cannot take that decision in its state (it was decided already)."""

    code = "illegal_transition"
    ja = "この廃棄申請はすでに処理されています。"
    en = "This disposal batch has already been decided."


class OwnProposal(PermissionDenied):
    """The MA who proposed a batch may not approve it (separation of duties)."""

    code = "own_proposal"
    ja = "自分が申請した廃棄は承認できません。別のマイナンバー管理者が承認してください。"
    en = "You cannot approve a disposal you proposed; another MyNumber Admin must approve it."


# --- rules and due dates ---------------------------------------------------------


@dataclass(frozen=True)
class RetentionRule:
    basis: str
    ja: str
    en: str
    keep_years: int
    anchor: str
    note: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RetentionRule:
        return cls(
            basis=str(row["basis"]),
            ja=str(row["ja"]),
            en=str(row["en"]),
            keep_years=int(row["keep_years"]),
            anchor=str(row["anchor"]),
            note=str(row.get("note") or ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "basis": self.basis,
            "ja": self.ja,
            "en": self.en,
            "keep_years": self.keep_years,
            "anchor": self.anchor,
            "note": self.note,
        }


# The rules as the migrations seed them: what the vault assumes until it has
# read the stored ones (at unseal).
DEFAULT_RULES: Mapping[str, RetentionRule] = MappingProxyType(
    {
        "employment": RetentionRule(
            "employment",
            "退職",
            "End of employment",
            7,
            "jan11_next_year",
            "扶養控除等申告書: 提出期限の翌年1月10日の翌日から7年",
        ),
        "contract": RetentionRule("contract", "契約終了", "End of contract", 7, "event"),
        "last_payment": RetentionRule("last_payment", "最終支払", "Last payment", 7, "event"),
    }
)


Rules = Mapping[str, RetentionRule]  # by basis


def summary_fields(rules: Rules, kind: str, basis: str, event: date | None) -> dict[str, Any]:
    """What a subject's summary says of its disposal: the date its own event
    makes it due (a dependent also goes with its employee), and the rule."""
    rule = rules.get(basis)
    return {
        "disposal_due": (due.isoformat() if rule and (due := due_date(rule, event)) else None),
        "retention_rule": {
            "basis": basis,
            "ja": rule.ja if rule else basis,
            "en": rule.en if rule else basis,
            "keep_years": rule.keep_years if rule else None,
            "anchor": rule.anchor if rule else None,
            "with_employee": kind == "dependent",
        },
    }


def add_years(day: date, years: int) -> date:
    """``day`` ``years`` later; 29 February becomes 1 March in a common year.
    Past the calendar's end (year 9999) it is ``date.max``: never, in effect."""
    if day.year + years > date.max.year:
        return date.max
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return date(day.year + years, 3, 1)


def due_date(rule: RetentionRule, event: date | None) -> date | None:
    """The first day a subject whose ``event`` happened may be disposed of
    (None while the event has not happened)."""
    return None if event is None else _due(rule, event)


def _due(rule: RetentionRule, event: date) -> date:
    if rule.anchor == "jan11_next_year":
        return add_years(date(event.year, 1, 11), 1 + rule.keep_years)
    return add_years(event, rule.keep_years)


def latest_due_event(rule: RetentionRule, as_of: date) -> date | None:
    """The latest event date that is due on ``as_of`` (every earlier one is
    too: due dates never go down as events move later), or None when no event
    can be. The vault turns this into one comparison per basis in SQL."""
    if rule.anchor == "jan11_next_year":
        year = as_of.year - 1 - rule.keep_years - (0 if as_of >= date(as_of.year, 1, 11) else 1)
        return date(year, 12, 31) if year >= date.min.year else None
    year = as_of.year - rule.keep_years
    if year < date.min.year + 1:
        return None
    try:
        guess = as_of.replace(year=year)
    except ValueError:  # as_of is 29 February, year has none
        guess = date(year, 2, 28)
    # add_years is monotonic and moves a day by at most one: a step settles it.
    while guess < date.max and _due(rule, guess + timedelta(days=1)) <= as_of:
        guess += timedelta(days=1)
    while _due(rule, guess) > as_of:
        guess -= timedelta(days=1)
    return guess


@dataclass(frozen=True)
class Due:
    """When a subject falls due, and through which event."""

    due: date
    event: date
    with_employee: bool  # a dependent due through its employee's event


def subject_due(
    rules: Mapping[str, RetentionRule],
    basis: str,
    event: date | None,
    employee_basis: str | None = None,
    employee_event: date | None = None,
) -> Due | None:
    """A subject's due date: its own, or for a dependent its employee's when
    that comes first. None when neither event has happened."""
    options: list[Due] = []
    if basis in rules and event is not None:
        options.append(Due(_due(rules[basis], event), event, False))
    if employee_basis is not None and employee_basis in rules and employee_event is not None:
        options.append(Due(_due(rules[employee_basis], employee_event), employee_event, True))
    return min(options, key=lambda d: (d.due, d.with_employee)) if options else None


def tokyo_date(moment: datetime) -> date:
    """The calendar day in Japan at ``moment`` (the appliance's users are there)."""
    return moment.astimezone(TOKYO).date()


def parse_date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(
            f"{field}: not a date (YYYY-MM-DD)",
            f"{field}: 日付（YYYY-MM-DD）ではありません。",
            field=field,
        ) from exc


def checked_rule(keep_years: object, anchor: object) -> tuple[int, str]:
    """The years and anchor of a rule the SA typed in, or InvalidRetentionRule."""
    text_years = str(keep_years).strip() if keep_years is not None else ""
    if isinstance(keep_years, bool) or not text_years.isascii() or not text_years.isdigit():
        raise InvalidRetentionRule(field="keep_years")
    years = int(text_years)
    if not 0 <= years <= MAX_KEEP_YEARS:
        raise InvalidRetentionRule(field="keep_years")
    if anchor not in ANCHORS:
        raise InvalidRetentionRule(field="anchor")
    return years, str(anchor)


# --- batches -------------------------------------------------------------------------

STATES = ("proposed", "approved", "rejected")
DECISIONS = ("approve", "reject")

# Everything a batch can go through. A decided batch is final: an approved
# one has been executed (its subjects are gone), a rejected one frees them.
TRANSITIONS: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("proposed", "approve"): "approved",
        ("proposed", "reject"): "rejected",
    }
)


def next_state(state: str, decision: str) -> str:
    """The state after ``decision``; IllegalTransition if the batch cannot take it."""
    try:
        return TRANSITIONS[(state, decision)]
    except KeyError:
        raise IllegalTransition(state=state, decision=decision) from None


def check_decider(proposer: str, decider: str, decision: str) -> None:
    """The proposer may withdraw (reject) their own batch but never approve it."""
    if decision == "approve" and proposer == decider:
        raise OwnProposal()


def clean_reason(value: str, required: bool) -> str:
    """A decision's reason: stripped, at most REASON_MAX characters, never a number."""
    reason = " ".join(value.split())
    if required and not reason:
        raise BadRequest(
            "reason: give a reason for the rejection",
            "理由: 却下の理由を入力してください。",
            field="reason",
        )
    if len(reason) > REASON_MAX:
        raise BadRequest(
            f"reason: at most {REASON_MAX} characters",
            f"理由: {REASON_MAX}文字以内で入力してください。",
            field="reason",
        )
    if looks_like_my_number(reason):
        raise BadRequest(
            "reason: must not contain a My Number",
            "理由: 個人番号を含めないでください。",
            field="reason",
        )
    return reason


# --- disposal records ------------------------------------------------------------------


@dataclass(frozen=True)
class RecordRow:
    """One line of the disposal record: how many of one kind, under one basis."""

    kind: str
    basis: str
    count: int


def basis_order(basis: str) -> tuple[int, str]:
    """Bases in the order people think of them: employment, contract, last payment."""
    known = RETENTION_BASES.index(basis) if basis in RETENTION_BASES else len(RETENTION_BASES)
    return known, basis


def _order(kind: str, basis: str) -> tuple[int, tuple[int, str]]:
    k = RECORD_KINDS.index(kind) if kind in RECORD_KINDS else len(RECORD_KINDS)
    return k, basis_order(basis)


def record_rows(
    subjects: Iterable[tuple[str, str]], documents: Mapping[str, int] | None = None
) -> list[RecordRow]:
    """The record lines for disposed ``subjects`` (kind, basis) and the number
    of ``documents`` (images of identity papers) destroyed with them, by basis."""
    counts = Counter(subjects)
    for basis, n in (documents or {}).items():
        if n:
            counts[("documents", basis)] += n
    return [
        RecordRow(kind, basis, n)
        for (kind, basis), n in sorted(counts.items(), key=lambda kv: _order(*kv[0]))
    ]


def counts_by_kind(kinds: Iterable[str]) -> dict[str, int]:
    found = Counter(kinds)
    return {k: found[k] for k in RECORD_KINDS if found[k]}


# --- labels the console shows ----------------------------------------------------------

KIND_LABELS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "employee": ("社員", "Employee"),
        "dependent": ("扶養親族", "Dependent"),
        "payee": ("支払先", "Payee"),
        "documents": ("確認書類の画像", "Document images"),
    }
)
ANCHOR_LABELS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "event": ("事由の発生日から", "From the event's date"),
        "jan11_next_year": ("事由の翌年1月11日から", "From 11 January of the following year"),
    }
)
METHOD_LABELS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {METHOD: ("暗号消去（鍵の破棄・データ削除）", "Crypto-shredding (key destroyed, data deleted)")}
)


def label(table: Mapping[str, tuple[str, str]], code: str, language: str) -> str:
    ja, en = table.get(code, (code, code))
    return ja if language == "ja" else en


# --- the vault's operation arguments --------------------------------------------------


BASIS = {"type": "string", "enum": list(RETENTION_BASES)}

SCHEMAS: dict[str, dict[str, Any]] = {
    "retention.list": obj({}),
    "retention.set": obj(
        {
            "basis": BASIS,
            "keep_years": {"type": "integer", "minimum": 0, "maximum": MAX_KEEP_YEARS},
            "anchor": {"type": "string", "enum": list(ANCHORS)},
        }
    ),
    "disposal.due": obj(
        {}, {"as_of": DATE, "limit": {"type": "integer", "minimum": 1, "maximum": 10_000}}
    ),
    "disposal.propose": obj(
        {
            "subject_ids": {
                "type": "array",
                "items": UUID,
                "minItems": 1,
                "maxItems": MAX_BATCH,
                "uniqueItems": True,
            }
        }
    ),
    "disposal.list": obj(
        {},
        {
            "state": {"type": "string", "enum": list(STATES)},
            "offset": PAGE,
            "limit": LIMIT,
        },
    ),
    "disposal.decide": obj(
        {"id": UUID, "decision": {"type": "string", "enum": list(DECISIONS)}},
        {"reason": {"type": "string", "maxLength": REASON_MAX * 2}},
    ),
    "disposal.records": obj(
        {},
        {
            "since": DATE,
            "until": DATE,
            "offset": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
        },
    ),
}
