"""Bulk import from CSV (and from a JSON list): what a clerk migrating from payroll
software sends, what comes out, and what the rejection report says."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import random
import re
import time
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kura.core import purposes
from kura.core.errors import BadRequest, KuraError
from kura.core.importer import (
    MAX_ROWS,
    ImportRecord,
    Rejection,
    parse_csv,
    parse_rows,
    rejection_report_csv,
)
from kura.core.numbers import my_number_check_digit
from kura.core.subjects import KINDS, RETENTION_BASES, SubjectInput

TWELVE_DIGITS = re.compile(r"\d{12}")


def complete(first11: str) -> str:
    """A valid My Number from any 11 digits (computed, so no number is written here)."""
    return first11 + str(my_number_check_digit(first11))


def wrong_check_digit(number: str) -> str:
    return number[:11] + str((int(number[11]) + 1) % 10)


def numbers_from(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < count:
        found[complete("".join(rng.choice("0123456789") for _ in range(11)))] = None
    return list(found)


N1, N2, N3 = numbers_from(1, 3)

my_numbers = (
    st.text("0123456789", min_size=11, max_size=11).filter(lambda d: d != "0" * 11).map(complete)
)


def csv_bytes(rows: list[list[str]], encoding: str = "utf-8", newline: str = "\r\n") -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator=newline).writerows(rows)
    text = out.getvalue()
    if encoding == "utf-8-sig":
        return codecs.BOM_UTF8 + text.encode("utf-8")
    return text.encode(encoding)


HEADER_EN = ["kind", "code", "name", "number"]
HEADER_JA = ["種別", "社員番号", "氏名", "個人番号"]


def one_file(*rows: list[str], header: list[str] = HEADER_EN) -> bytes:
    return csv_bytes([header, *rows])


def only_rejection(data: bytes) -> Rejection:
    result = parse_csv(data)
    assert result.records == []
    assert len(result.rejections) == 1
    return result.rejections[0]


# --- (a) what is written is what is read ------------------------------------------------

COLUMN_NAMES = {
    "kind": ("種別", "kind"),
    "code": ("コード", "社員番号", "支払先コード", "code"),
    "name": ("氏名", "name"),
    "name_kana": ("フリガナ", "氏名カナ", "name_kana"),
    "number": ("個人番号", "マイナンバー", "number"),
    "employee_code": ("扶養者コード", "employee_code"),
    "birth_date": ("生年月日", "birth_date"),
    "purposes": ("利用目的", "purposes"),
    "retention_basis": ("保存根拠", "retention_basis"),
}
KIND_WORDS = {
    "employee": ("社員", "従業員", "employee"),
    "dependent": ("扶養親族", "dependent"),
    "payee": ("支払先", "個人支払先", "payee"),
}
# Every character here survives cp932 and is already NFC.
NAME_LETTERS = "山田太郎花子佐藤鈴木高橋渡辺伊藤髙ー・々ABCxyz'\",-"
KANA_LETTERS = "アイウエオカガキギクグッャュョヴー・"

codes = st.from_regex(re.compile(r"[A-Za-z0-9_-]{1,32}"), fullmatch=True)


def inner_spaces(letters: str, max_size: int) -> st.SearchStrategy[str]:
    return st.lists(
        st.text(letters, min_size=1, max_size=max_size // 2), min_size=1, max_size=2
    ).map("\u3000".join)


@st.composite
def valid_subjects(draw: st.DrawFn) -> SubjectInput:
    kind = draw(st.sampled_from(KINDS))
    chosen = draw(st.lists(st.sampled_from(list(purposes.BY_CODE)), min_size=1, unique=True))
    return SubjectInput(
        kind=kind,
        code=draw(codes),
        name=draw(inner_spaces(NAME_LETTERS, 40)),
        name_kana=draw(st.just("") | inner_spaces(KANA_LETTERS, 30)),
        number=draw(my_numbers),
        purposes=tuple(code for code in purposes.BY_CODE if code in chosen),
        employee_code=draw(codes) if kind == "dependent" else "",
        birth_date=draw(st.none() | st.dates(date(1900, 1, 1), date(2030, 12, 31))),
        retention_basis=draw(st.sampled_from(RETENTION_BASES)),
    )


def as_typed(number: str, style: str) -> str:
    if style == "hyphens":
        return f"{number[:4]}-{number[4:8]}-{number[8:]}"
    if style == "full-width":
        return number.translate({ord("0") + i: ord("０") + i for i in range(10)})
    return number


@settings(max_examples=150, deadline=None)
@given(
    people=st.lists(
        valid_subjects(),
        max_size=12,
        unique_by=(lambda s: s.number, lambda s: s.code),
    ),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp932"]),
    newline=st.sampled_from(["\r\n", "\n"]),
    order=st.permutations(list(COLUMN_NAMES)),
    data=st.data(),
)
def test_written_subjects_are_read_back_exactly(
    people: list[SubjectInput],
    encoding: str,
    newline: str,
    order: list[str],
    data: st.DataObject,
) -> None:
    header = [data.draw(st.sampled_from(COLUMN_NAMES[name])) for name in order]
    rows = [header]
    for person in people:
        born = person.birth_date
        cells = {
            "kind": data.draw(st.sampled_from(KIND_WORDS[person.kind])),
            "code": person.code,
            "name": person.name,
            "name_kana": person.name_kana,
            "number": as_typed(
                person.number, data.draw(st.sampled_from(["plain", "hyphens", "full-width"]))
            ),
            "employee_code": person.employee_code,
            "birth_date": ""
            if born is None
            else data.draw(st.sampled_from([born.isoformat(), f"{born:%Y/%m/%d}"])),
            "purposes": data.draw(st.sampled_from([";", "|"])).join(person.purposes),
            "retention_basis": person.retention_basis,
        }
        rows.append([cells[name] for name in order])

    result = parse_csv(csv_bytes(rows, encoding, newline))

    assert result.rejections == []
    assert result.records == [ImportRecord(i + 2, p) for i, p in enumerate(people)]
    assert result.encoding == encoding


# --- (b) any bytes at all: a result or a KuraError, nothing else ------------------------

header_line = st.sampled_from(
    [b"", b"kind,code,name,number\r\n", "種別,コード,氏名,個人番号,利用目的\n".encode("cp932")]
)


@settings(max_examples=400, deadline=None)
@given(
    head=header_line,
    tail=st.binary(max_size=400)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
def test_arbitrary_bytes_raise_only_kura_errors(head: bytes, tail: bytes) -> None:
    try:
        result = parse_csv(head + tail)
    except KuraError:
        return
    report = rejection_report_csv(result.rejections)
    assert report.startswith(codecs.BOM_UTF8)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_json_raises_only_kura_errors(value: Any) -> None:
    with contextlib.suppress(KuraError):
        parse_rows(value)


# --- (c) wrong check digits: right line, and no number in the report --------------------


@settings(max_examples=100, deadline=None)
@given(
    numbers=st.lists(my_numbers, min_size=1, max_size=15, unique=True),
    data=st.data(),
)
def test_wrong_check_digits_are_rejected_on_their_line(
    numbers: list[str], data: st.DataObject
) -> None:
    bad = data.draw(st.sets(st.sampled_from(range(len(numbers)))))
    lines = ["code,name,number"]
    expected: list[int] = []
    for i, number in enumerate(numbers):
        if data.draw(st.booleans()):
            lines.append("")  # a blank line is skipped but still counts
        lines.append(f"P{i},Name{chr(65 + i)},{wrong_check_digit(number) if i in bad else number}")
        if i in bad:
            expected.append(len(lines))
    result = parse_csv("\n".join(lines).encode())

    assert [r.line for r in result.rejections] == expected
    assert {(r.code, r.field) for r in result.rejections} <= {("check_digit", "number")}
    assert len(result.records) == len(numbers) - len(bad)
    for encoding in ("utf-8-sig", "cp932"):
        report = rejection_report_csv(result.rejections, encoding).decode(encoding)
        assert not TWELVE_DIGITS.search(report)
        assert report.count("\r\n") == len(bad) + 1
    for rejection in result.rejections:
        assert not re.search(r"\d{4}", rejection.ja + rejection.en)


# --- encodings --------------------------------------------------------------------------


def test_shift_jis_from_excel() -> None:
    result = parse_csv(csv_bytes([HEADER_JA, ["社員", "E1", "髙橋　一郎", N1]], "cp932"))
    assert result.encoding == "cp932"
    assert result.records[0].subject.name == "髙橋　一郎"


def test_utf8_with_bom() -> None:
    result = parse_csv(csv_bytes([HEADER_JA, ["社員", "E1", "山田", N1]], "utf-8-sig"))
    assert result.encoding == "utf-8-sig"
    assert [r.subject.code for r in result.records] == ["E1"]


@pytest.mark.parametrize(
    "data",
    [
        "kind,code,name,number\r\n".encode("utf-16"),
        b"kind,code,name,number\r\nemployee,E1,\x81 ,x\r\n",
        codecs.BOM_UTF8 + "氏名".encode("cp932"),
    ],
    ids=["utf-16", "neither", "bom-but-not-utf8"],
)
def test_other_encodings_are_one_clear_error(data: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_csv(data)
    assert caught.value.detail["reason"] == "encoding"
    assert "Shift_JIS" in caught.value.message_en


# --- the header -------------------------------------------------------------------------


def test_header_in_either_language_case_and_width() -> None:
    result = parse_csv(
        csv_bytes([["種別", "CODE", " Name ", "ﾏｲﾅﾝﾊﾞｰ"], ["employee", "E1", "A", N1]], "cp932")
    )
    assert [r.subject.code for r in result.records] == ["E1"]


def test_unknown_columns_are_named() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_csv(
            one_file(["employee", "E1", "A", N1, "x", "y"], header=[*HEADER_EN, "住所", "memo"])
        )
    assert caught.value.detail["reason"] == "unknown_columns"
    assert "住所" in caught.value.message_ja and "memo" in caught.value.message_en


def test_a_data_row_first_is_not_a_header_and_is_not_repeated() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_csv(csv_bytes([["employee", "E1", "山田", N1], ["employee", "E2", "田中", N2]]))
    assert caught.value.detail["reason"] == "no_header"
    assert N1 not in str(caught.value.to_json())


def test_an_unknown_column_that_holds_digits_is_named_by_position() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_csv(csv_bytes([[*HEADER_EN, N2], ["employee", "E1", "A", N1, ""]]))
    assert "#5" in caught.value.message_en
    assert N2[-4:] not in str(caught.value.to_json())


@pytest.mark.parametrize("missing", ["code", "name", "number"])
def test_missing_required_columns(missing: str) -> None:
    header = [c for c in HEADER_EN if c != missing]
    with pytest.raises(BadRequest) as caught:
        parse_csv(csv_bytes([header]))
    assert caught.value.detail == {
        "reason": "missing_columns",
        "columns": [missing],
    }


def test_a_column_given_twice_is_refused() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_csv(csv_bytes([["code", "コード", "name", "number"]]))
    assert caught.value.detail["reason"] == "repeated_columns"


def test_without_a_kind_column_everyone_is_a_payee() -> None:
    result = parse_csv(
        csv_bytes([["支払先コード", "氏名", "個人番号"], ["P1", "税理士　一郎", N1]])
    )
    subject = result.records[0].subject
    assert (subject.kind, subject.purposes, subject.retention_basis) == (
        "payee",
        ("payment_record",),
        "last_payment",
    )


@pytest.mark.parametrize(
    ("word", "kind"),
    [
        ("社員", "employee"),
        ("従業員", "employee"),
        ("Employee", "employee"),
        ("支払先", "payee"),
        ("個人支払先", "payee"),
        ("payee", "payee"),
    ],
)
def test_kind_words(word: str, kind: str) -> None:
    result = parse_csv(one_file([word, "C1", "A", N1]))
    assert result.records[0].subject.kind == kind


def test_dependents_name_their_employee() -> None:
    result = parse_csv(
        csv_bytes(
            [
                ["種別", "社員番号", "氏名", "個人番号", "扶養者コード"],
                ["社員", "E1", "山田　太郎", N1, ""],
                ["扶養親族", "E1", "山田　花子", N2, "E1"],
                ["扶養親族", "E1", "山田　次郎", N3, ""],
            ]
        )
    )
    assert [r.subject.kind for r in result.records] == ["employee", "dependent"]
    assert [(r.line, r.field, r.code) for r in result.rejections] == [
        (4, "employee_code", "required")
    ]


def test_unknown_and_empty_kinds_are_rejected() -> None:
    result = parse_csv(one_file(["役員", "E1", "A", N1], ["", "E2", "B", N2]))
    assert [(r.line, r.field, r.code) for r in result.rejections] == [
        (2, "kind", "unknown_kind"),
        (3, "kind", "required"),
    ]


# --- rows -------------------------------------------------------------------------------


def test_blank_lines_are_skipped_but_counted() -> None:
    data = f"code,name,number\n\n,,\nP1,A,{N1}\r\n\r\n  \nP2,B,{wrong_check_digit(N2)}\n".encode()
    result = parse_csv(data)
    assert [r.line for r in result.records] == [4]
    assert [r.line for r in result.rejections] == [7]


def test_line_numbers_follow_the_file_across_multi_line_cells() -> None:
    data = f'code,name,number\nP1,"A\nB",{N1}\nP2,C,{N2}\n'.encode()
    result = parse_csv(data)
    assert [(r.line, r.field) for r in result.rejections] == [(2, "name")]
    assert [r.line for r in result.records] == [4]


def test_tab_separated_files_are_read() -> None:
    result = parse_csv(f"code\tname\tnumber\nP1\t山田\t{N1}\n".encode())
    assert [r.subject.code for r in result.records] == ["P1"]


def test_full_width_codes_and_half_width_kana_are_normalised() -> None:
    result = parse_csv(
        csv_bytes(
            [["コード", "氏名", "フリガナ", "個人番号"], ["Ｐ００１", "山田", "ﾔﾏﾀﾞ", N1]], "cp932"
        )
    )
    subject = result.records[0].subject
    assert (subject.code, subject.name_kana) == ("P001", "ヤマダ")


def test_purposes_by_code_or_japanese_name() -> None:
    result = parse_csv(
        csv_bytes(
            [
                ["kind", "code", "name", "number", "利用目的"],
                ["employee", "E1", "A", N1, "源泉徴収票作成事務；salary_report"],
                ["employee", "E2", "B", N2, "withholding_slip|marketing"],
            ]
        )
    )
    assert result.records[0].subject.purposes == ("withholding_slip", "salary_report")
    assert [(r.line, r.code) for r in result.rejections] == [(3, "unknown_purpose")]


def test_birth_dates_as_excel_writes_them() -> None:
    result = parse_csv(
        csv_bytes(
            [
                ["code", "name", "number", "生年月日"],
                ["P1", "A", N1, "1980/1/5"],
                ["P2", "B", N2, "1980-13-01"],
                ["P3", "C", N3, "S55.1.5"],
            ]
        )
    )
    assert result.records[0].subject.birth_date == date(1980, 1, 5)
    assert [(r.line, r.code) for r in result.rejections] == [(3, "no_such_date"), (4, "format")]


def test_a_value_under_no_header_is_not_dropped_silently() -> None:
    result = parse_csv(
        csv_bytes(
            [["code", "", "name", "number"], ["P1", "x", "A", N1], ["P2", "", "B", N2, "", ""]]
        )
    )
    assert [(r.line, r.code) for r in result.rejections] == [(2, "unnamed_column")]
    assert [r.line for r in result.records] == [3]
    result = parse_csv(one_file(["payee", "P1", "A", N1, N2]))
    assert [r.code for r in result.rejections] == ["unnamed_column"]
    assert N2[-4:] not in str(result.rejections)


def test_excel_exponent_notation_gets_a_hint() -> None:
    rejection = only_rejection(one_file(["payee", "P1", "A", "1.23457E+11"]))
    assert (rejection.field, rejection.code) == ("number", "excel_exponent")
    assert "E+" in rejection.en


def test_a_lost_leading_zero_gets_a_hint() -> None:
    rejection = only_rejection(one_file(["payee", "P1", "A", N1[1:]]))
    assert rejection.code == "length"
    assert "leading zero" in rejection.en and "先頭の0" in rejection.ja


def test_an_unclosed_quote_refuses_the_file_with_its_line() -> None:
    data = f'code,name,number\nP1,A,{N1}\nP2,"B,{N2}\nP3,C,{N3}\n'.encode()
    with pytest.raises(BadRequest) as caught:
        parse_csv(data)
    assert caught.value.detail["reason"] == "malformed_csv"
    assert N2 not in str(caught.value.to_json())


@pytest.mark.parametrize("data", [b"", b"\r\n\r\n", codecs.BOM_UTF8, b",,,\n"])
def test_an_empty_file_is_refused(data: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_csv(data)
    assert caught.value.detail["reason"] == "empty"


def test_a_header_alone_imports_nothing() -> None:
    result = parse_csv(one_file())
    assert (result.records, result.rejections) == ([], [])


# --- duplicates inside one file ---------------------------------------------------------


def test_same_number_twice_rejects_the_second() -> None:
    result = parse_csv(one_file(["payee", "P1", "A", N1], ["payee", "P2", "B", N1]))
    assert [r.line for r in result.records] == [2]
    assert [(r.line, r.field, r.code) for r in result.rejections] == [
        (3, "number", "duplicate_in_file")
    ]
    assert "line 2" in result.rejections[0].en


def test_an_exact_duplicate_row_is_rejected() -> None:
    row = ["employee", "E1", "A", N1]
    result = parse_csv(one_file(row, row))
    assert [(r.line, r.code) for r in result.rejections] == [(3, "duplicate_in_file")]


def test_the_same_number_written_differently_is_still_a_duplicate() -> None:
    result = parse_csv(
        one_file(["payee", "P1", "A", N1], ["payee", "P2", "B", as_typed(N1, "hyphens")])
    )
    assert [r.code for r in result.rejections] == ["duplicate_in_file"]


def test_one_code_for_two_people_is_rejected() -> None:
    result = parse_csv(
        one_file(["employee", "E1", "A", N1], ["employee", "E1", "B", N2], ["payee", "E1", "C", N3])
    )
    assert [(r.line, r.field, r.code) for r in result.rejections] == [
        (3, "code", "duplicate_code_in_file")
    ]
    assert [r.line for r in result.records] == [2, 4]


def test_a_rejected_row_does_not_block_a_later_good_one() -> None:
    result = parse_csv(one_file(["payee", "", "A", N1], ["payee", "P1", "A", N1]))
    assert [r.line for r in result.records] == [3]


# --- size -------------------------------------------------------------------------------


def test_more_rows_than_allowed_refuses_the_file() -> None:
    rows = [["payee", f"P{i}", "A", n] for i, n in enumerate(numbers_from(2, 4))]
    assert len(parse_csv(one_file(*rows[:3]), max_rows=3).records) == 3
    assert len(parse_csv(one_file(*rows[:3]) + b"\r\n\r\n", max_rows=3).records) == 3
    with pytest.raises(BadRequest) as caught:
        parse_csv(one_file(*rows), max_rows=3)
    assert caught.value.detail == {"reason": "too_many_rows", "max_rows": 3}
    assert MAX_ROWS == 100_000


@pytest.mark.slow
def test_a_hundred_thousand_rows_parse_in_seconds() -> None:
    people = numbers_from(3, 100_000)
    lines = ["種別,社員番号,氏名,フリガナ,個人番号,扶養者コード,生年月日,利用目的"]
    for i, number in enumerate(people):
        kind, employee = [("社員", ""), ("扶養親族", f"E{i - 1}"), ("支払先", "")][i % 3]
        lines.append(f"{kind},E{i},山田　太郎,ﾔﾏﾀﾞ ﾀﾛｳ,{number},{employee},1980/1/5,")
    data = "\r\n".join(lines).encode("cp932")
    started = time.perf_counter()
    result = parse_csv(data)
    elapsed = time.perf_counter() - started
    assert len(result.records) == 100_000
    assert elapsed < 15, f"{elapsed:.1f}s"


# --- JSON import ------------------------------------------------------------------------


def test_json_rows_are_checked_like_single_registrations() -> None:
    # A JSON body holds whatever the client sent, not only objects.
    body: list[Any] = [
        {"kind": "employee", "code": "E1", "name": "A", "number": N1},
        {"kind": "employee", "code": "E2", "name": "B", "number": wrong_check_digit(N2)},
        {"kind": "payee", "code": "P1", "name": "C", "number": N1},
        "not an object",
        {"kind": "payee", "code": "P2", "name": "D", "number": N3, "extra": 1},
        {"kind": "payee", "code": "P3", "name": "E", "number": int(N2)},
    ]
    result = parse_rows(body)
    assert [r.line for r in result.records] == [1]
    assert [(r.line, r.code) for r in result.rejections] == [
        (2, "check_digit"),
        (3, "duplicate_in_file"),
        (4, "bad_request"),
        (5, "unknown_fields"),
        (6, "wrong_type"),
    ]
    assert not TWELVE_DIGITS.search(rejection_report_csv(result.rejections).decode("utf-8-sig"))


def test_json_import_has_the_same_limit() -> None:
    rows = [
        {"kind": "payee", "code": f"P{i}", "name": "A", "number": n}
        for i, n in enumerate(numbers_from(4, 3))
    ]
    with pytest.raises(BadRequest):
        parse_rows(rows, max_rows=2)


@pytest.mark.parametrize("value", [{"kind": "payee"}, "rows", b"rows", 3])
def test_json_import_needs_a_list(value: Any) -> None:
    with pytest.raises(BadRequest):
        parse_rows(value)


# --- the rejection report ---------------------------------------------------------------


def test_report_columns_and_encodings() -> None:
    result = parse_csv(one_file(["payee", "P1", "A", wrong_check_digit(N1)]))
    for encoding in ("utf-8-sig", "cp932"):
        report = rejection_report_csv(result.rejections, encoding)
        rows = list(csv.reader(io.StringIO(report.decode(encoding))))
        assert rows == [
            ["行 / line", "項目 / field", "理由", "reason"],
            [
                "2",
                "個人番号 (number)",
                "個人番号: チェックデジットが一致しません。",
                "number: The check digit does not match.",
            ],
        ]
    assert rejection_report_csv(result.rejections).startswith(codecs.BOM_UTF8)


def test_report_cells_never_run_as_formulas() -> None:
    report = rejection_report_csv([Rejection(2, "x", "", "=HYPERLINK()", "+1")]).decode("utf-8-sig")
    assert "'=HYPERLINK()" in report and "'+1" in report


def test_report_refuses_an_unknown_encoding() -> None:
    with pytest.raises(BadRequest):
        rejection_report_csv([], "klingon")
