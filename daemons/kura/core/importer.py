"""Bulk import of subjects from a CSV file, for clerks migrating from payroll software.

Theory of operation: bytes in, records and rejections out; nothing here touches
the vault. The file is decoded (a UTF-8 BOM means UTF-8; otherwise strict UTF-8,
then strict cp932, the Shift_JIS that Windows Excel writes; anything else, and
any NUL byte, as in UTF-16, is refused as a whole). The first non-blank row is
the header: its names, Japanese or English, are mapped to subject fields, and an
unknown or missing column refuses the whole file, because guessing would put
data in the wrong place. Every later row is one subject, validated by
``subjects.make_subject`` exactly like a single registration; a row's first
problem becomes a ``Rejection`` and the import goes on. Line numbers are the
file's physical lines (the header is line 1 when the file starts with it), which
is what Excel shows as the row number; blank lines are skipped but counted.

Nothing a row contains is ever repeated in a rejection: a reason names the field
and what is wrong (and, for duplicates, the earlier line), never the value.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kura.core import spreadsheet, subjects
from kura.core.errors import BadRequest, InvalidNumber, KuraError
from kura.core.purposes import BY_CODE
from kura.core.subjects import FIELD_LABELS_JA, SubjectInput, field_error

MAX_ROWS = 100_000

# Header names, compared after NFKC, trimming, lower-casing and spaces to "_".
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "kind": ("種別", "区分", "kind"),
    "code": (
        "コード",
        "社員番号",
        "社員コード",
        "従業員番号",
        "従業員コード",
        "支払先コード",
        "code",
    ),
    "name": ("氏名", "名前", "name"),
    "name_kana": ("フリガナ", "ふりがな", "氏名カナ", "カナ氏名", "name_kana"),
    "number": ("個人番号", "マイナンバー", "number", "my_number", "mynumber"),
    "employee_code": ("扶養者コード", "扶養者社員番号", "employee_code"),
    "birth_date": ("生年月日", "birth_date"),
    "purposes": ("利用目的", "purposes"),
    "retention_basis": ("保存根拠", "retention_basis"),
}
# Without a kind column every row is an individual payee (支払調書 migrations).
REQUIRED_COLUMNS = ("code", "name", "number")
DEFAULT_KIND = "payee"

KIND_ALIASES: dict[str, str] = {
    "社員": "employee",
    "従業員": "employee",
    "employee": "employee",
    "扶養親族": "dependent",
    "dependent": "dependent",
    "支払先": "payee",
    "個人支払先": "payee",
    "payee": "payee",
}
RETENTION_ALIASES: dict[str, str] = {
    "employment": "employment",
    "雇用": "employment",
    "contract": "contract",
    "契約": "contract",
    "last_payment": "last_payment",
    "最終支払": "last_payment",
}
# A purpose may be given by its code or by its Japanese name from the catalogue.
PURPOSE_ALIASES: dict[str, str] = {
    **{code: code for code in BY_CODE},
    **{unicodedata.normalize("NFKC", p.ja): p.code for p in BY_CODE.values()},
}

_COLUMN_BY_KEY = {
    unicodedata.normalize("NFKC", alias).lower(): name
    for name, aliases in COLUMN_ALIASES.items()
    for alias in aliases
}
_PURPOSE_SEPARATORS = re.compile(r"[;|]")
# What Excel makes of a 12-digit cell it was not told to keep as text: 1.23457E+11.
_EXCEL_EXPONENT = re.compile(r"\d(?:\.\d+)?[Ee]\+\d+")
_WHITESPACE = " \t\u3000"


class ImportRecord(NamedTuple):
    """A row that passed: its line in the file (or index in a JSON list) and the subject."""

    line: int
    subject: SubjectInput


class Rejection(NamedTuple):
    """A row that did not pass, and why. Never carries the row's values."""

    line: int
    code: str
    field: str
    ja: str
    en: str


@dataclass(frozen=True)
class ImportResult:
    records: list[ImportRecord]
    rejections: list[Rejection]
    encoding: str = ""  # "utf-8", "utf-8-sig" or "cp932" for a CSV file


def _file_error(reason: str, ja: str, en: str, **detail: Any) -> BadRequest:
    return BadRequest(en, ja, reason=reason, **detail)


def _too_many_rows(max_rows: int) -> BadRequest:
    return _file_error(
        "too_many_rows",
        f"一度に取り込めるのは{max_rows:,}件までです。ファイルを分けてください。",
        f"At most {max_rows:,} rows can be imported at once; split the file.",
        max_rows=max_rows,
    )


def decode(data: bytes) -> tuple[str, str]:
    """The text of a CSV file and the encoding it was read with."""
    if b"\x00" in data:
        raise _file_error(
            "encoding",
            "UTF-8 または Shift_JIS の CSV ファイルではありません（UTF-16 は使えません）。",
            "This is not a CSV file in UTF-8 or Shift_JIS (UTF-16 is not supported).",
        )
    if data.startswith(codecs.BOM_UTF8):
        try:
            return data[len(codecs.BOM_UTF8) :].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError:
            pass
    else:
        for encoding in ("utf-8", "cp932"):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError:
                continue
    raise _file_error(
        "encoding",
        "文字コードを判別できません。UTF-8 または Shift_JIS で保存してください。",
        "The file is neither UTF-8 nor Shift_JIS; save it in one of those.",
    )


def _key(text: str) -> str:
    """How names (columns, kinds, purposes) are compared: width- and case-insensitive."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return text.strip(_WHITESPACE).lower().replace(" ", "_")


def _fold(text: str) -> str:
    """A code typed with full-width letters or digits, as ASCII; surrounding blanks dropped."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return text.strip(_WHITESPACE)


def _describe_column(header: str, position: int) -> str:
    """A header name safe to repeat in a message: no digits (it might be a number)."""
    name = header.strip(_WHITESPACE)
    if name and len(name) <= 40 and not any(ch.isdigit() for ch in name) and name.isprintable():
        return name
    return f"#{position}"


@dataclass(frozen=True)
class _Layout:
    """Which cell of a row holds which field; ``unnamed`` are columns with a blank header."""

    columns: dict[str, int]
    width: int
    unnamed: tuple[int, ...]


def _layout(header: Sequence[str]) -> _Layout:
    columns: dict[str, int] = {}
    unknown: list[str] = []
    repeated: list[str] = []
    unnamed: list[int] = []
    for index, raw in enumerate(header):
        key = _key(raw)
        if not key:
            unnamed.append(index)
            continue
        name = _COLUMN_BY_KEY.get(key)
        if name is None:
            unknown.append(_describe_column(raw, index + 1))
        elif name in columns:
            repeated.append(_describe_column(raw, index + 1))
        else:
            columns[name] = index
    if not columns:
        raise _file_error(
            "no_header",
            "1行目に見出し（種別、コード、氏名、個人番号 など）が必要です。",
            "The first row must name the columns (kind, code, name, number, ...).",
        )
    if unknown:
        shown = ", ".join(unknown)
        raise _file_error(
            "unknown_columns",
            f"不明な列があります: {shown}",
            f"Unknown columns: {shown}.",
            columns=unknown,
        )
    if repeated:
        shown = ", ".join(repeated)
        raise _file_error(
            "repeated_columns",
            f"同じ項目の列が複数あります: {shown}",
            f"Columns given twice: {shown}.",
            columns=repeated,
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        shown_ja = "、".join(COLUMN_ALIASES[name][0] for name in missing)
        shown_en = ", ".join(missing)
        raise _file_error(
            "missing_columns",
            f"必要な列がありません: {shown_ja}",
            f"Required columns are missing: {shown_en}.",
            columns=missing,
        )
    return _Layout(columns, len(header), tuple(unnamed))


def _rejection(line: int, error: KuraError) -> Rejection:
    return Rejection(
        line=line,
        code=str(error.detail.get("reason", error.code)),
        field=str(error.detail.get("field", "")),
        ja=error.message_ja,
        en=error.message_en,
    )


@dataclass
class _Collector:
    """Accepted records and rejections, refusing a second row for the same person."""

    records: list[ImportRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    lines_by_number: dict[str, int] = field(default_factory=dict)
    lines_by_code: dict[tuple[str, str], int] = field(default_factory=dict)

    def reject(self, line: int, error: KuraError) -> None:
        self.rejections.append(_rejection(line, error))

    def accept(self, line: int, subject: SubjectInput) -> None:
        earlier = self.lines_by_number.get(subject.number)
        if earlier is not None:
            self.reject(
                line,
                field_error(
                    "number",
                    "duplicate_in_file",
                    f"{earlier}行目と同じ番号です（ファイル内の重複）。",
                    f"the same number as line {earlier} (duplicate in file).",
                ),
            )
            return
        # Dependents are often keyed by their employee's code, so only employees
        # and payees must have a code of their own.
        if subject.kind != "dependent":
            code_key = (subject.kind, subject.code)
            earlier = self.lines_by_code.get(code_key)
            if earlier is not None:
                self.reject(
                    line,
                    field_error(
                        "code",
                        "duplicate_code_in_file",
                        f"{earlier}行目と同じコードです（ファイル内の重複）。",
                        f"the same code as line {earlier} (duplicate in file).",
                    ),
                )
                return
            self.lines_by_code[code_key] = line
        self.lines_by_number[subject.number] = line
        self.records.append(ImportRecord(line, subject))

    def result(self, encoding: str = "") -> ImportResult:
        return ImportResult(self.records, self.rejections, encoding)


def _excel_exponent_error() -> InvalidNumber:
    return InvalidNumber(
        "number: Excel turned it into exponent notation (E+); "
        "format the column as text and save again.",
        "個人番号: Excel で指数表記（E+）に変換されています。"
        "列の書式を文字列にして保存し直してください。",
        field="number",
        reason="excel_exponent",
    )


def _purposes_cell(text: str) -> list[str] | None:
    if not text.strip(_WHITESPACE):
        return None
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    parts = [part.strip(_WHITESPACE) for part in _PURPOSE_SEPARATORS.split(text)]
    return [PURPOSE_ALIASES.get(part, part) for part in parts if part]


def _subject_from_row(row: Sequence[str], layout: _Layout) -> SubjectInput:
    width = len(row)

    def cell(name: str) -> str:
        index = layout.columns.get(name)
        return row[index] if index is not None and index < width else ""

    stray = [i for i in layout.unnamed if i < width and row[i].strip(_WHITESPACE)]
    if stray or any(value.strip(_WHITESPACE) for value in row[layout.width :]):
        raise BadRequest(
            "A value is in a column without a header.",
            "見出しのない列に値があります。",
            field="",
            reason="unnamed_column",
        )

    if "kind" in layout.columns:
        kind_text = cell("kind")
        if not kind_text.strip(_WHITESPACE):
            raise field_error("kind", "required", "入力してください。", "is required.")
        kind = KIND_ALIASES.get(_key(kind_text), "?")
    else:
        kind = DEFAULT_KIND

    basis_text = _key(cell("retention_basis"))
    basis = RETENTION_ALIASES.get(basis_text, "?") if basis_text else None
    number = cell("number")
    if "E" in number.upper() and _EXCEL_EXPONENT.fullmatch(_fold(number)):
        raise _excel_exponent_error()
    try:
        return subjects.make_subject(
            kind=kind,
            code=_fold(cell("code")),
            name=cell("name"),
            name_kana=cell("name_kana"),
            number=number,
            purposes=_purposes_cell(cell("purposes")),
            employee_code=_fold(cell("employee_code")),
            birth_date=subjects.parse_birth_date(cell("birth_date"), lenient=True),
            retention_basis=basis,
        )
    except InvalidNumber as error:
        if error.detail.get("reason") == "length":
            error.message_ja += "（先頭の0が Excel で消えていませんか）"
            error.message_en += " (did Excel drop a leading zero?)"
        raise


def _first_line(text: str) -> str:
    for line in io.StringIO(text, newline=""):
        if line.strip():
            return line
    return ""


def _rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, cells) for each non-blank row."""
    delimiter = "\t" if "\t" in (first := _first_line(text)) and "," not in first else ","
    # strict: an unclosed quote must refuse the file, not swallow the rows after it.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:
            raise _file_error(
                "malformed_csv",
                f"{line}行目付近のCSVの形式が正しくありません（引用符の対応など）。",
                f"The CSV is malformed near line {line} (unbalanced quotes or an over-long cell).",
                line=line,
            ) from None
        if any(cell.strip(_WHITESPACE) for cell in row):
            yield line, row
        line = reader.line_num + 1


def parse_csv(data: bytes, *, max_rows: int = MAX_ROWS) -> ImportResult:
    """Subjects from a CSV file. Raises BadRequest when the file as a whole cannot be
    read (encoding, header, size); otherwise every row is a record or a rejection."""
    text, encoding = decode(data)
    rows = _rows(text)
    header = next(rows, None)
    if header is None:
        raise _file_error("empty", "ファイルにデータがありません。", "The file is empty.")
    layout = _layout(header[1])
    collector = _Collector()
    for count, (line, row) in enumerate(rows, 1):
        if count > max_rows:
            raise _too_many_rows(max_rows)
        try:
            subject = _subject_from_row(row, layout)
        except KuraError as error:
            collector.reject(line, error)
        else:
            collector.accept(line, subject)
    return collector.result(encoding)


def parse_rows(rows: Iterable[Mapping[str, Any]], *, max_rows: int = MAX_ROWS) -> ImportResult:
    """Subjects from a JSON list of objects (the API's import), each checked like a
    single registration; ``line`` is the 1-based position in the list."""
    if isinstance(rows, str | bytes | Mapping) or not isinstance(rows, Iterable):
        raise _file_error(
            "not_a_list",
            "対象者の配列を指定してください。",
            "Give a list of subjects.",
        )
    collector = _Collector()
    for line, row in enumerate(rows, 1):
        if line > max_rows:
            raise _too_many_rows(max_rows)
        try:
            subject = subjects.subject_from_json(row)
        except KuraError as error:
            collector.reject(line, error)
        else:
            collector.accept(line, subject)
    return collector.result()


_REPORT_HEADER = ("行 / line", "項目 / field", "理由", "reason")


def rejection_report_csv(rejections: Iterable[Rejection], encoding: str = "utf-8-sig") -> bytes:
    """The rejected rows as a CSV file to download: line, field, reason in Japanese
    and in English. ``encoding`` is "utf-8-sig" (Excel opens it) or "cp932"."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise _file_error(
            "encoding", "不明な文字コードです。", "Unknown encoding.", field="encoding"
        ) from None
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(_REPORT_HEADER)
    for rejection in rejections:
        label = FIELD_LABELS_JA.get(rejection.field)
        shown = f"{label} ({rejection.field})" if label else rejection.field
        # Spreadsheets run a cell that starts like a formula; a report never does.
        writer.writerow(
            spreadsheet.as_text_row([str(rejection.line), shown, rejection.ja, rejection.en])
        )
    return out.getvalue().encode(encoding, errors="replace")
