"""The subject record: what single registration accepts, normalises and refuses."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from datetime import date
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kura.core import purposes
from kura.core.errors import BadRequest, InvalidNumber, KuraError
from kura.core.numbers import my_number_check_digit
from kura.core.subjects import (
    DEFAULT_RETENTION,
    KINDS,
    RETENTION_BASES,
    SUBJECT_SCHEMA,
    SubjectInput,
    clean_text_field,
    make_subject,
    parse_birth_date,
    subject_from_json,
    to_katakana,
)


def complete(first11: str) -> str:
    """A valid My Number from any 11 digits (computed, so no number is written here)."""
    return first11 + str(my_number_check_digit(first11))


def wrong_check_digit(number: str) -> str:
    return number[:11] + str((int(number[11]) + 1) % 10)


my_numbers = (
    st.text("0123456789", min_size=11, max_size=11).filter(lambda d: d != "0" * 11).map(complete)
)

NUMBER = complete("".join(str(i % 10) for i in range(1, 12)))


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "employee",
        "code": "E001",
        "name": "山田　太郎",
        "number": NUMBER,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def leaks(error: KuraError, number: str) -> bool:
    """Does anything the user could see of the error repeat four or more of the number's
    consecutive digits?"""
    text = json.dumps(error.to_json(), ensure_ascii=False) + str(error) + repr(error.detail)
    return any(number[i : i + 4] in text for i in range(len(number) - 3))


# --- accepted subjects and their defaults -----------------------------------------------


def test_employee_gets_defaults_for_its_kind() -> None:
    subject = subject_from_json(body())
    assert subject == SubjectInput(
        kind="employee",
        code="E001",
        name="山田　太郎",
        name_kana="",
        number=NUMBER,
        purposes=purposes.DEFAULT_FOR_KIND["employee"],
        employee_code="",
        birth_date=None,
        retention_basis="employment",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_defaults_purposes_and_retention(kind: str) -> None:
    extra = {"employee_code": "E001"} if kind == "dependent" else {}
    subject = subject_from_json(body(kind=kind, code="X1", **extra))
    assert subject.purposes == purposes.DEFAULT_FOR_KIND[kind]
    assert subject.retention_basis == DEFAULT_RETENTION[kind]


def test_dependent_belongs_to_an_employee() -> None:
    subject = subject_from_json(body(kind="dependent", code="E001-1", employee_code="E001"))
    assert subject.employee_code == "E001"
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(kind="dependent", code="E001-1"))
    assert caught.value.detail == {"field": "employee_code", "reason": "required"}


def test_only_a_dependent_names_an_employee() -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(kind="payee", employee_code="E001"))
    assert caught.value.detail["field"] == "employee_code"
    assert caught.value.detail["reason"] == "not_a_dependent"


def test_number_is_normalised_from_what_people_type() -> None:
    typed = f"{NUMBER[:4]}-{NUMBER[4:8]} {NUMBER[8:]}".translate(
        {ord("0") + i: ord("０") + i for i in range(10)}
    )
    assert subject_from_json(body(number=typed)).number == NUMBER


def test_purposes_are_checked_deduplicated_and_kept_in_catalogue_order() -> None:
    subject = subject_from_json(
        body(purposes=["salary_report", "withholding_slip", "salary_report"])
    )
    assert subject.purposes == ("withholding_slip", "salary_report")


def test_retention_basis_may_be_chosen() -> None:
    assert subject_from_json(body(retention_basis="contract")).retention_basis == "contract"


def test_birth_date_is_iso_or_null() -> None:
    assert subject_from_json(body(birth_date="1980-01-05")).birth_date == date(1980, 1, 5)
    assert subject_from_json(body(birth_date=None)).birth_date is None


# --- names and readings -----------------------------------------------------------------


def test_name_is_nfc_normalised_and_trimmed() -> None:
    decomposed = unicodedata.normalize("NFD", "がっこう　花子")
    assert subject_from_json(body(name=f" {decomposed}\u3000")).name == "がっこう　花子"


def test_latin_names_are_accepted() -> None:
    assert subject_from_json(body(name="John O'Brien-Smith")).name == "John O'Brien-Smith"


@pytest.mark.parametrize("bad", ["山田\n太郎", "山田\x00", "a\u200bb", "\u202eabc", "a\tb"])
def test_name_refuses_control_and_invisible_characters(bad: str) -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(name=bad + "x"))
    assert caught.value.detail["field"] == "name"
    assert caught.value.message_ja.startswith("氏名: ")
    assert caught.value.message_en.startswith("name: ")


def test_name_length() -> None:
    assert subject_from_json(body(name="あ" * 100)).name == "あ" * 100
    for bad in ("", "　", "あ" * 101):
        with pytest.raises(BadRequest) as caught:
            subject_from_json(body(name=bad))
        assert caught.value.detail["field"] == "name"


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("ﾔﾏﾀﾞ ﾀﾛｳ", "ヤマダ\u3000タロウ"),
        ("やまだ　たろう", "ヤマダ\u3000タロウ"),
        ("ヴァイオリン・ガッコウ", "ヴァイオリン・ガッコウ"),
        ("ｶﾞｯｺｳ", "ガッコウ"),
        ("ゝゞ", "ヽヾ"),
        ("", ""),
    ],
)
def test_reading_becomes_full_width_katakana(typed: str, stored: str) -> None:
    assert subject_from_json(body(name_kana=typed)).name_kana == stored
    assert to_katakana(typed) == stored


@pytest.mark.parametrize("bad", ["Yamada", "山田", "ヤマダ1", "ﾞ"])
def test_reading_refuses_anything_but_kana(bad: str) -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(name_kana=bad))
    assert caught.value.detail == {"field": "name_kana", "reason": "not_katakana"}


def test_reading_length_is_counted_after_conversion() -> None:
    assert len(subject_from_json(body(name_kana="ｶﾞ" * 100)).name_kana) == 100
    with pytest.raises(BadRequest):
        subject_from_json(body(name_kana="ア" * 101))


# --- codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("", "required"),
        ("x" * 33, "too_long"),
        ("E 1", "invalid_characters"),
        ("社員1", "invalid_characters"),
    ],
)
def test_code_rules(code: str, reason: str) -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(code=code))
    assert caught.value.detail == {"field": "code", "reason": reason}
    assert subject_from_json(body(code="Ab-_9" + "x" * 27)).code == "Ab-_9" + "x" * 27


# --- numbers: refused without ever being repeated ---------------------------------------


def test_wrong_check_digit_is_refused_without_the_number() -> None:
    bad = wrong_check_digit(NUMBER)
    with pytest.raises(InvalidNumber) as caught:
        subject_from_json(body(number=bad))
    error = caught.value
    assert error.detail == {"field": "number", "reason": "check_digit"}
    assert error.message_en == "number: The check digit does not match."
    assert error.message_ja.startswith("個人番号: ")
    assert not leaks(error, bad)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "empty"),
        (NUMBER[:11], "length"),
        (NUMBER[:6] + "abcdef", "not_digits"),
        ("0" * 12, "all_zero"),
    ],
)
def test_number_reasons(typed: str, reason: str) -> None:
    with pytest.raises(InvalidNumber) as caught:
        subject_from_json(body(number=typed))
    assert caught.value.detail["reason"] == reason
    assert not leaks(caught.value, NUMBER)


def test_number_must_be_a_string_and_is_not_echoed() -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(number=int(NUMBER)))
    assert caught.value.detail == {"field": "number", "reason": "wrong_type"}
    assert not leaks(caught.value, NUMBER)


@given(
    number=my_numbers,
    name=st.text(max_size=120),
    kana=st.text(max_size=20),
    code=st.text(max_size=40),
)
def test_no_refusal_ever_repeats_the_number(number: str, name: str, kana: str, code: str) -> None:
    for candidate in (number, wrong_check_digit(number)):
        try:
            subject_from_json(body(number=candidate, name=name, name_kana=kana, code=code))
        except KuraError as error:
            assert not leaks(error, candidate)


@given(number=my_numbers)
def test_subject_repr_hides_the_number(number: str) -> None:
    subject = subject_from_json(body(number=number))
    assert number[-4:] not in repr(subject)
    assert "山田" not in repr(subject)


# --- strictness of the JSON body --------------------------------------------------------


def test_unknown_fields_are_named() -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(nickname="x", address="y"))
    assert caught.value.detail["reason"] == "unknown_fields"
    assert "nickname" in caught.value.message_en and "address" in caught.value.message_ja


def test_an_unknown_field_that_looks_like_a_number_is_not_repeated() -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json({**body(), NUMBER: "x"})
    assert not leaks(caught.value, NUMBER)


@pytest.mark.parametrize("field", ["kind", "code", "name", "number"])
def test_required_fields(field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(**{field: ...}))
    assert caught.value.detail == {"field": field, "reason": "required"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", 1),
        ("code", None),
        ("name", ["山田"]),
        ("name_kana", 3),
        ("purposes", "withholding_slip"),
        ("purposes", [1]),
        ("employee_code", 5),
        ("birth_date", 19800105),
        ("retention_basis", True),
    ],
)
def test_wrong_types_name_the_field(field: str, value: object) -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(**{field: value}))
    assert caught.value.detail == {"field": field, "reason": "wrong_type"}


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"kind": "contractor"}, "kind", "unknown_kind"),
        ({"purposes": []}, "purposes", "required"),
        ({"purposes": ["marketing"]}, "purposes", "unknown_purpose"),
        ({"retention_basis": "forever"}, "retention_basis", "unknown_basis"),
        ({"birth_date": "1980/01/05"}, "birth_date", "format"),
        ({"birth_date": "1980-02-30"}, "birth_date", "no_such_date"),
        ({"birth_date": "1850-01-01"}, "birth_date", "out_of_range"),
    ],
)
def test_bad_values_name_the_field(changes: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(**changes))
    assert caught.value.detail == {"field": field, "reason": reason}


def test_unknown_purpose_is_named_only_when_harmless() -> None:
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(purposes=["marketing"]))
    assert "marketing" in caught.value.message_en
    with pytest.raises(BadRequest) as caught:
        subject_from_json(body(purposes=[NUMBER]))
    assert not leaks(caught.value, NUMBER)


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(BadRequest):
        subject_from_json([body()])  # type: ignore[arg-type]  # what a wrong client sends


def test_lenient_dates_are_for_spreadsheets() -> None:
    assert parse_birth_date("1980/1/5", lenient=True) == date(1980, 1, 5)
    assert parse_birth_date("１９８０－０１－０５", lenient=True) == date(1980, 1, 5)
    assert parse_birth_date("  ", lenient=True) is None


# --- the schema agrees with the function ------------------------------------------------

codes = st.from_regex(re.compile(r"[A-Za-z0-9_-]{1,32}"), fullmatch=True)


@st.composite
def json_subjects(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(KINDS))
    result: dict[str, Any] = {
        "kind": kind,
        "code": draw(codes),
        "name": draw(
            st.text("山田太郎花子 Jane", min_size=1, max_size=20).map(str.strip).filter(bool)
        ),
        "number": draw(my_numbers),
    }
    if kind == "dependent":
        result["employee_code"] = draw(codes)
    if draw(st.booleans()):
        result["purposes"] = draw(
            st.lists(st.sampled_from(list(purposes.BY_CODE)), min_size=1, unique=True)
        )
    if draw(st.booleans()):
        result["retention_basis"] = draw(st.sampled_from(RETENTION_BASES))
    if draw(st.booleans()):
        result["birth_date"] = draw(st.dates(date(1900, 1, 1), date(2030, 1, 1))).isoformat()
    if draw(st.booleans()):
        result["name_kana"] = draw(st.text("アイウエオガッー", max_size=20))
    return result


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SUBJECT_SCHEMA)


@given(json_subjects())
def test_schema_accepts_what_the_function_accepts(data: dict[str, Any]) -> None:
    subject = subject_from_json(data)
    jsonschema.Draft202012Validator(SUBJECT_SCHEMA).validate(data)
    assert subject.number == data["number"]
    assert subject.kind == data["kind"]


def test_schema_refuses_extra_properties_and_numbers_as_integers() -> None:
    validator = jsonschema.Draft202012Validator(SUBJECT_SCHEMA)
    assert not validator.is_valid(body(extra=1))
    assert not validator.is_valid(body(number=int(NUMBER)))
    assert not validator.is_valid(body(code="x" * 33))


def test_make_subject_refuses_an_impossible_birth_year() -> None:
    with pytest.raises(BadRequest):
        make_subject(kind="payee", code="P1", name="A", number=NUMBER, birth_date=date(1800, 1, 1))


def test_corrections_are_cleaned_like_registrations() -> None:
    assert clean_text_field("name", " 山田　花子 ") == "山田　花子"
    assert clean_text_field("name_kana", "ﾔﾏﾀﾞ") == "ヤマダ"
    with pytest.raises(BadRequest) as caught:
        clean_text_field("name_kana", "Yamada")
    assert caught.value.detail == {"field": "name_kana", "reason": "not_katakana"}
    with pytest.raises(BadRequest) as caught:
        clean_text_field("name", 3)
    assert caught.value.detail == {"field": "name", "reason": "wrong_type"}


def test_already_registered_tells_the_same_person_from_another() -> None:
    from kura.core.errors import Conflict, DuplicateNumber
    from kura.core.subjects import already_registered, make_subject
    from tests.support import my_number

    number = my_number(random.Random(99))
    payee = make_subject(kind="payee", code="P-1", name="山田 太郎", number=number)
    stored = {"kind": "payee", "code": "P-1", "employee_id": None}
    assert already_registered(payee, None, stored, stored) is True
    assert already_registered(payee, None, None, None) is False
    with pytest.raises(DuplicateNumber):
        already_registered(payee, None, {**stored, "code": "P-2"}, None)
    with pytest.raises(Conflict):
        already_registered(payee, None, None, {**stored, "code": "P-1"})
    child = make_subject(kind="dependent", code="E-1", name="山田 花", number=number,
                         employee_code="E-1")
    as_child = {"kind": "dependent", "code": "E-1", "employee_id": "emp-a"}
    assert already_registered(child, "emp-a", as_child, None) is True
    with pytest.raises(DuplicateNumber):
        already_registered(child, "emp-b", as_child, None)
