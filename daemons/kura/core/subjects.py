"""The data subject (本人: an employee, a dependent or a payee) as it is handed to
the vault, and the one place its fields are validated.

Single registration (``subject_from_json``) and bulk import (``kura.core.importer``)
both end in ``make_subject``, so a record accepted one way is accepted the other.
Every refusal is a ``BadRequest`` or ``InvalidNumber`` whose detail names the
field (``detail["field"]``) and a stable reason (``detail["reason"]``), with a
message in Japanese and English that starts with the field's name. No message,
and no detail, ever repeats a submitted value: a clerk may type a My Number
into any box.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from kura.core import numbers
from kura.core.errors import BadRequest, Conflict, DuplicateNumber, InvalidNumber
from kura.core.purposes import BY_CODE, DEFAULT_FOR_KIND

KINDS = ("employee", "dependent", "payee")
RETENTION_BASES = ("employment", "contract", "last_payment")
DEFAULT_RETENTION: dict[str, str] = {
    "employee": "employment",
    "dependent": "employment",
    "payee": "last_payment",
}

CODE_MAX = 32
NAME_MAX = 100
KANA_MAX = 100
OLDEST_BIRTH_YEAR = 1900

FIELD_LABELS_JA: dict[str, str] = {
    "kind": "種別",
    "code": "コード",
    "name": "氏名",
    "name_kana": "フリガナ",
    "number": "個人番号",
    "purposes": "利用目的",
    "employee_code": "扶養者コード",
    "birth_date": "生年月日",
    "retention_basis": "保存根拠",
}
FIELDS = tuple(FIELD_LABELS_JA)
REQUIRED_FIELDS = ("kind", "code", "name", "number")

_CODE = re.compile(r"[A-Za-z0-9_-]{1,32}")
# After conversion a reading is katakana (ァ..ヺ), ・, ー, ヽ, ヾ and ideographic spaces.
_KATAKANA = re.compile(r"[\u30a1-\u30fe\u3000]*")
_HIRAGANA_TO_KATAKANA = {cp: cp + 0x60 for cp in [*range(0x3041, 0x3097), 0x309D, 0x309E]}
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_LENIENT_DATE = re.compile(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})")
_SAFE_TO_ECHO = re.compile(r"[A-Za-z_]{1,40}")
_WHITESPACE = " \t\u3000"


@dataclass(frozen=True)
class SubjectInput:
    """One subject as it will be stored; every field already normalised and valid."""

    kind: str
    code: str
    name: str
    name_kana: str
    number: str
    purposes: tuple[str, ...]
    employee_code: str
    birth_date: date | None
    retention_basis: str

    def __repr__(self) -> str:
        # A subject may end up in a traceback, a log line or test output: show
        # what identifies the record, never the number or the person.
        return (
            f"SubjectInput(kind={self.kind!r}, code={self.code!r}, number='<hidden>', "
            f"purposes={self.purposes!r}, employee_code={self.employee_code!r}, "
            f"retention_basis={self.retention_basis!r})"
        )


_CODE_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": CODE_MAX,
    "pattern": "^[A-Za-z0-9_-]+$",
}

SUBJECT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Subject",
    "description": "One data subject to register. Values are checked further by the vault.",
    "type": "object",
    "additionalProperties": False,
    "required": list(REQUIRED_FIELDS),
    "properties": {
        "kind": {"type": "string", "enum": list(KINDS)},
        "code": _CODE_SCHEMA,
        "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX},
        "name_kana": {"type": "string", "maxLength": KANA_MAX},
        "number": {
            "type": "string",
            "minLength": 1,
            "maxLength": 32,
            "description": "12 digits; full-width digits, hyphens and spaces are accepted.",
        },
        "purposes": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "enum": list(BY_CODE)},
        },
        "employee_code": {**_CODE_SCHEMA, "minLength": 0, "pattern": "^[A-Za-z0-9_-]*$"},
        "birth_date": {"type": ["string", "null"], "format": "date"},
        "retention_basis": {"type": "string", "enum": list(RETENTION_BASES)},
    },
}


def field_error(field: str, reason: str, ja: str, en: str) -> BadRequest:
    """A BadRequest about one field, its message prefixed with the field's name."""
    label = FIELD_LABELS_JA.get(field, field)
    return BadRequest(f"{field}: {en}", f"{label}: {ja}", field=field, reason=reason)


def safe_name(text: str) -> str | None:
    """``text`` if it may be repeated in a message (letters and underscores only), else None."""
    return text if _SAFE_TO_ECHO.fullmatch(text) else None


def to_katakana(text: str) -> str:
    """Half-width kana to full-width and hiragana to katakana; spaces become U+3000."""
    if _KATAKANA.fullmatch(text):
        return text
    wide = unicodedata.normalize("NFKC", text).translate(_HIRAGANA_TO_KATAKANA)
    return wide.replace(" ", "\u3000")


def parse_birth_date(text: str, *, lenient: bool = False) -> date | None:
    """``YYYY-MM-DD`` (and, when lenient, ``YYYY/M/D`` as Excel writes it); empty is None."""
    text = text.strip(_WHITESPACE)
    if not text:
        return None
    if lenient:
        text = unicodedata.normalize("NFKC", text)
    match = (_LENIENT_DATE if lenient else _ISO_DATE).fullmatch(text)
    if not match:
        example = "YYYY-MM-DD または YYYY/MM/DD" if lenient else "YYYY-MM-DD"
        example_en = "YYYY-MM-DD or YYYY/MM/DD" if lenient else "YYYY-MM-DD"
        raise field_error(
            "birth_date",
            "format",
            f"{example} の形式で入力してください。",
            f"use the form {example_en}.",
        )
    try:
        born = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise field_error(
            "birth_date", "no_such_date", "存在しない日付です。", "there is no such date."
        ) from None
    if born.year < OLDEST_BIRTH_YEAR:
        raise field_error(
            "birth_date",
            "out_of_range",
            f"{OLDEST_BIRTH_YEAR}年以降の日付を入力してください。",
            f"the date must be in {OLDEST_BIRTH_YEAR} or later.",
        )
    return born


def _check_code(field: str, code: str, *, required: bool) -> None:
    if not code:
        if required:
            raise field_error(field, "required", "入力してください。", "is required.")
        return
    if len(code) > CODE_MAX:
        raise field_error(
            field,
            "too_long",
            f"{CODE_MAX}文字以内で入力してください。",
            f"must be at most {CODE_MAX} characters.",
        )
    if not _CODE.fullmatch(code):
        raise field_error(
            field,
            "invalid_characters",
            "半角英数字、ハイフン、アンダースコアのみ使えます。",
            "may contain only letters A-Z, digits, hyphens and underscores.",
        )


def _check_name(name: str) -> str:
    name = unicodedata.normalize("NFC", name.strip(_WHITESPACE))
    if not name:
        raise field_error("name", "required", "入力してください。", "is required.")
    if len(name) > NAME_MAX:
        raise field_error(
            "name",
            "too_long",
            f"{NAME_MAX}文字以内で入力してください。",
            f"must be at most {NAME_MAX} characters.",
        )
    # isprintable() is False for control, format, private-use, unassigned and
    # separator characters other than the ASCII space; the ideographic space is
    # how Japanese names separate family and given name, so it is allowed too.
    if not name.replace("\u3000", " ").isprintable():
        raise field_error(
            "name",
            "control_characters",
            "制御文字や不可視の文字は使えません。",
            "must not contain control or invisible characters.",
        )
    return name


def _check_kana(kana: str) -> str:
    kana = to_katakana(kana.strip(_WHITESPACE))
    if len(kana) > KANA_MAX:
        raise field_error(
            "name_kana",
            "too_long",
            f"{KANA_MAX}文字以内で入力してください。",
            f"must be at most {KANA_MAX} characters.",
        )
    if not _KATAKANA.fullmatch(kana):
        raise field_error(
            "name_kana",
            "not_katakana",
            "カタカナで入力してください。",
            "must be written in katakana.",
        )
    return kana


def check_number(text: str) -> str:
    """The normalised 12 digits, or InvalidNumber naming the field and the reason."""
    # Most numbers arrive as plain ASCII digits, which normalise() leaves alone;
    # skipping its second pass keeps a 100,000-row import fast.
    plain = text.isascii() and text.isdigit()
    problem = numbers.my_number_problem(text)
    if problem:
        raise InvalidNumber(
            f"number: {problem.en}",
            f"{FIELD_LABELS_JA['number']}: {problem.ja}",
            field="number",
            reason=problem.code,
        )
    return text if plain else numbers.normalise(text)


def _check_purposes(kind: str, chosen: Sequence[str] | None) -> tuple[str, ...]:
    if chosen is None:
        return DEFAULT_FOR_KIND[kind]
    if not chosen:
        raise field_error(
            "purposes",
            "required",
            "少なくとも1つ指定してください。",
            "give at least one purpose.",
        )
    for code in chosen:
        if code not in BY_CODE:
            shown = safe_name(code)
            allowed = ", ".join(BY_CODE)
            raise field_error(
                "purposes",
                "unknown_purpose",
                f"不明な利用目的です{f'（{shown}）' if shown else ''}。使えるのは {allowed} です。",
                f"unknown purpose{f' {shown!r}' if shown else ''}; use one of {allowed}.",
            )
    # Kept in catalogue order, each once, so equal choices compare equal.
    return tuple(code for code in BY_CODE if code in chosen)


def make_subject(
    *,
    kind: str,
    code: str,
    name: str,
    number: str,
    name_kana: str = "",
    purposes: Sequence[str] | None = None,
    employee_code: str = "",
    birth_date: date | None = None,
    retention_basis: str | None = None,
) -> SubjectInput:
    """Validate and normalise one subject. ``purposes`` and ``retention_basis``
    default by kind when None. Raises BadRequest or InvalidNumber on the first problem."""
    if kind not in KINDS:
        raise field_error(
            "kind",
            "unknown_kind",
            "社員（employee）、扶養親族（dependent）、支払先（payee）のいずれかです。",
            "must be employee, dependent or payee.",
        )
    _check_code("code", code, required=True)
    name = _check_name(name)
    name_kana = _check_kana(name_kana)
    number = check_number(number)
    if kind == "dependent":
        _check_code("employee_code", employee_code, required=True)
    elif employee_code:
        raise field_error(
            "employee_code",
            "not_a_dependent",
            "扶養親族の場合のみ指定します。",
            "is given only for a dependent.",
        )
    chosen = _check_purposes(kind, purposes)
    if retention_basis is None:
        retention_basis = DEFAULT_RETENTION[kind]
    elif retention_basis not in RETENTION_BASES:
        raise field_error(
            "retention_basis",
            "unknown_basis",
            "employment、contract、last_payment のいずれかです。",
            "must be employment, contract or last_payment.",
        )
    if birth_date is not None and birth_date.year < OLDEST_BIRTH_YEAR:
        raise field_error(
            "birth_date",
            "out_of_range",
            f"{OLDEST_BIRTH_YEAR}年以降の日付を入力してください。",
            f"the date must be in {OLDEST_BIRTH_YEAR} or later.",
        )
    return SubjectInput(
        kind=kind,
        code=code,
        name=name,
        name_kana=name_kana,
        number=number,
        purposes=chosen,
        employee_code=employee_code,
        birth_date=birth_date,
        retention_basis=retention_basis,
    )


def clean_text_field(field: str, value: object) -> str:
    """A corrected ``name`` or ``name_kana``, checked and normalised as on registration."""
    if not isinstance(value, str):
        raise _type_error(field, "文字列", "a string")
    if field == "name":
        return _check_name(value)
    if field == "name_kana":
        return _check_kana(value)
    raise ValueError(f"not a text field: {field}")  # a programming error, not user input


def _type_error(field: str, expected_ja: str, expected_en: str) -> BadRequest:
    return field_error(
        field, "wrong_type", f"{expected_ja}で指定してください。", f"must be {expected_en}."
    )


def _string(data: Mapping[str, Any], field: str, default: str = "") -> str:
    value = data.get(field, default)
    if not isinstance(value, str):
        raise _type_error(field, "文字列", "a string")
    return value


def subject_from_json(data: Mapping[str, Any]) -> SubjectInput:
    """One subject from a decoded JSON body (see SUBJECT_SCHEMA), strictly:
    unknown fields, wrong types and bad values are refused, naming the field."""
    if not isinstance(data, Mapping):
        raise BadRequest(
            "The subject must be a JSON object.", "対象者はJSONオブジェクトで指定してください。"
        )
    unknown = [key for key in data if key not in FIELD_LABELS_JA]
    if unknown:
        names = [safe_name(key) if isinstance(key, str) else None for key in unknown]
        shown = ", ".join(n for n in names if n) or "?"
        raise BadRequest(
            f"Unknown fields: {shown}.",
            f"不明な項目があります: {shown}",
            reason="unknown_fields",
            fields=[n for n in names if n],
        )
    for field in REQUIRED_FIELDS:
        if field not in data:
            raise field_error(field, "required", "入力してください。", "is required.")

    raw_purposes = data.get("purposes")
    chosen: list[str] | None = None
    if raw_purposes is not None:
        if not isinstance(raw_purposes, list) or not all(isinstance(p, str) for p in raw_purposes):
            raise _type_error("purposes", "文字列の配列", "an array of strings")
        chosen = raw_purposes

    raw_birth = data.get("birth_date")
    if raw_birth is not None and not isinstance(raw_birth, str):
        raise _type_error("birth_date", "文字列（YYYY-MM-DD）", "a string YYYY-MM-DD or null")
    born = parse_birth_date(raw_birth) if raw_birth is not None else None

    basis = data.get("retention_basis")
    if basis is not None and not isinstance(basis, str):
        raise _type_error("retention_basis", "文字列", "a string")

    return make_subject(
        kind=_string(data, "kind"),
        code=_string(data, "code"),
        name=_string(data, "name"),
        number=_string(data, "number"),
        name_kana=_string(data, "name_kana"),
        purposes=chosen,
        employee_code=_string(data, "employee_code"),
        birth_date=born,
        retention_basis=basis,
    )


def already_registered(
    subject: SubjectInput,
    employee_id: Any,
    same_number: Mapping[str, Any] | None,
    same_code: Mapping[str, Any] | None,
) -> bool:
    """True if this very person is registered already (registering again is
    harmless, so imports can be re-run); DuplicateNumber if the number belongs
    to someone else; Conflict if the code is taken by another number."""
    if same_number is not None:
        same = (
            same_number["kind"] == subject.kind
            and same_number["code"] == subject.code
            and (subject.kind != "dependent" or same_number["employee_id"] == employee_id)
        )
        if same:
            return True
        raise DuplicateNumber()
    if same_code is not None:
        raise Conflict(
            "that code is already used for another number",
            "そのコードは別の番号で登録済みです。",
            field="code",
        )
    return False
