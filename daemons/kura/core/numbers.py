"""My Number (個人番号, 12 digits) and corporate number (法人番号, 13 digits).

Input is normalised first: full-width digits become ASCII, and hyphens and
spaces (of either width) between digit groups are dropped. Anything else is
refused with a reason that names what is wrong but never echoes the digits.
"""

from __future__ import annotations

from dataclasses import dataclass

from kura.core.errors import InvalidNumber

_SEPARATORS = frozenset(" \u3000-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\uff0d\u30fc")
# One translation table: full-width digits to ASCII, separators deleted.
_TABLE: dict[int, int | None] = {ord("０") + i: ord("0") + i for i in range(10)}
_TABLE.update({ord(ch): None for ch in _SEPARATORS})
_MY_NUMBER_WEIGHTS = (6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


@dataclass(frozen=True)
class Reason:
    """Why a number was refused: a stable code and the two languages."""

    code: str
    ja: str
    en: str


EMPTY = Reason("empty", "番号が入力されていません。", "No number was given.")
NOT_DIGITS = Reason(
    "not_digits", "数字以外の文字が含まれています。", "It contains characters other than digits."
)
LENGTH_MY = Reason("length", "個人番号は12桁です。", "A My Number has 12 digits.")
LENGTH_CORP = Reason("length", "法人番号は13桁です。", "A corporate number has 13 digits.")
ALL_ZERO = Reason("all_zero", "すべて0の番号は無効です。", "An all-zero number is not valid.")
CHECK_DIGIT = Reason(
    "check_digit", "チェックデジットが一致しません。", "The check digit does not match."
)


def normalise(text: str) -> str:
    """Full-width digits to ASCII; hyphens and spaces removed. Other characters are kept
    so that validation can refuse them."""
    return text.translate(_TABLE).strip()


def my_number_check_digit(first11: str) -> int:
    """The check digit of a My Number from its first 11 digits (DESIGN.md)."""
    r = sum(int(d) * w for d, w in zip(first11, _MY_NUMBER_WEIGHTS, strict=True)) % 11
    return 0 if r <= 1 else 11 - r


def corporate_check_digit(last12: str) -> int:
    """The leading check digit of a corporate number from its other 12 digits:
    counting from the right, weight 1 at odd and 2 at even positions."""
    total = sum(int(d) * (1 if i % 2 == 1 else 2) for i, d in enumerate(reversed(last12), 1))
    return 9 - (total % 9)


def my_number_problem(text: str) -> Reason | None:
    """None if ``text`` is a valid My Number once normalised, else the reason."""
    digits = normalise(text)
    if not digits:
        return EMPTY
    if not (digits.isascii() and digits.isdigit()):
        return NOT_DIGITS
    if len(digits) != 12:
        return LENGTH_MY
    if digits == "0" * 12:
        return ALL_ZERO
    if my_number_check_digit(digits[:11]) != int(digits[11]):
        return CHECK_DIGIT
    return None


def corporate_number_problem(text: str) -> Reason | None:
    """None if ``text`` is a valid corporate number once normalised, else the reason."""
    digits = normalise(text)
    if not digits:
        return EMPTY
    if not (digits.isascii() and digits.isdigit()):
        return NOT_DIGITS
    if len(digits) != 13:
        return LENGTH_CORP
    if digits == "0" * 13:
        return ALL_ZERO
    if corporate_check_digit(digits[1:]) != int(digits[0]):
        return CHECK_DIGIT
    return None


def parse_my_number(text: str) -> str:
    """The normalised 12 digits, or InvalidNumber with the reason."""
    problem = my_number_problem(text)
    if problem:
        raise InvalidNumber(problem.en, problem.ja, reason=problem.code)
    return normalise(text)


def mask(number: str) -> str:
    """The form shown everywhere by default: only the last four digits, e.g. ****-****-1234."""
    return "****-****-" + number[-4:]
