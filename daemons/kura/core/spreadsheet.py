"""Text that goes into a CSV file a person opens in a spreadsheet.

A spreadsheet runs a cell that starts like a formula (``=``, ``+``, ``-``,
``@``, or a tab or carriage return before one), so a name such as
``=HYPERLINK(...)`` in an export would become a live formula on the clerk's
desk. OWASP's advice, followed by every CSV Kura writes: such a cell is
prefixed with a single quote, which makes the spreadsheet show it as text.
The quote is ASCII, so a Shift_JIS (JIS X 0208) file still encodes.

Where a person types a name for others to export later (the employee's
one-time link), such names are refused outright (``refuse_formula``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kura.core.errors import BadRequest

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def looks_like_formula(text: str) -> bool:
    return text.startswith(FORMULA_STARTS)


def as_text(cell: str) -> str:
    """``cell`` as a spreadsheet shows it as text, never as a formula."""
    return "'" + cell if looks_like_formula(cell) else cell


def as_text_row(row: Sequence[str]) -> list[str]:
    return [as_text(cell) for cell in row]


def as_text_rows(rows: Iterable[Sequence[str]]) -> Iterable[list[str]]:
    return (as_text_row(row) for row in rows)


class FormulaLikeText(BadRequest):
    """A name entered on the employee's form starts like a spreadsheet formula."""

    ja = "先頭に「=」「+」「-」「@」は使えません。"
    en = "must not start with =, +, - or @."


def refuse_formula(field: str, label_ja: str, text: str) -> str:
    """``text`` unless it starts like a formula; then an error naming the field."""
    if looks_like_formula(text):
        raise FormulaLikeText(
            f"{field}: {FormulaLikeText.en}",
            f"{label_ja}: {FormulaLikeText.ja}",
            field=field,
            reason="formula",
        )
    return text
