"""My Number and corporate number validation (DESIGN.md's check-digit rules)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kura.core import numbers
from kura.core.errors import InvalidNumber
from tests.support import corporate_number, my_number

digits = st.text(alphabet="0123456789", min_size=11, max_size=11)


def reference_check_digit(first11: str) -> int:
    # Written out from the published rule, apart from the code under test:
    # Pn weights 2..7 from the right, Q = 1..6 then 1..5.
    total = 0
    for n in range(1, 12):
        p = int(first11[11 - n])
        q = n + 1 if n <= 6 else n - 5
        total += p * q
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


@given(digits)
def test_check_digit_matches_the_published_rule(first11: str) -> None:
    assert numbers.my_number_check_digit(first11) == reference_check_digit(first11)


@given(digits)
def test_a_number_with_its_check_digit_is_valid_unless_all_zero(first11: str) -> None:
    number = first11 + str(reference_check_digit(first11))
    if number == "0" * 12:
        assert numbers.my_number_problem(number) == numbers.ALL_ZERO
    else:
        assert numbers.my_number_problem(number) is None
        assert numbers.parse_my_number(number) == number


@given(digits, st.integers(1, 9))
def test_any_other_last_digit_is_refused(first11: str, shift: int) -> None:
    good = reference_check_digit(first11)
    bad = first11 + str((good + shift) % 10)
    assert numbers.my_number_problem(bad) in (numbers.CHECK_DIGIT, numbers.ALL_ZERO)


@given(digits, st.sampled_from(["-", " ", "　", "－", "‐"]))
def test_full_width_digits_and_separators_are_normalised(first11: str, sep: str) -> None:
    number = first11 + str(reference_check_digit(first11))
    if number == "0" * 12:
        return
    wide = number.translate({ord(str(i)): ord("０") + i for i in range(10)})
    for text in (f"{number[:4]}{sep}{number[4:8]}{sep}{number[8:]}", wide, f" {number} "):
        assert numbers.parse_my_number(text) == number


@given(st.text(max_size=20))
def test_arbitrary_text_never_crashes_and_never_echoes_digits(text: str) -> None:
    problem = numbers.my_number_problem(text)
    if problem is None:
        assert len(numbers.normalise(text)) == 12
    else:
        with pytest.raises(InvalidNumber) as caught:
            numbers.parse_my_number(text)
        # The message is the fixed text of the reason: nothing of the input in it.
        assert caught.value.message_en == problem.en
        assert caught.value.message_ja == problem.ja


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("12345", "length"),
        ("1234567890123", "length"),
        ("-".join(["0" * 4] * 3), "all_zero"),
        ("12345678901a", "not_digits"),
        ("123456789O12", "not_digits"),
    ],
)
def test_clear_reasons(text: str, reason: str) -> None:
    problem = numbers.my_number_problem(text)
    assert problem is not None and problem.code == reason
    assert problem.ja and problem.en


def test_design_examples_are_valid() -> None:
    # The examples DESIGN.md gives, rebuilt from their first digits so that no
    # twelve-digit literal sits in the repository.
    for first11, check in (("12345678901", "8"), ("62149832025", "7")):
        assert numbers.my_number_problem(first11 + check) is None
    assert numbers.corporate_number_problem("5" + "835678" + "256246") is None


@given(st.integers(0, 2**32))
def test_corporate_numbers(seed: int) -> None:
    number = corporate_number(random.Random(seed))
    if number[1:] == "0" * 12:
        return
    assert numbers.corporate_number_problem(number) is None
    wrong = str((int(number[0]) + 1) % 10) + number[1:]
    assert numbers.corporate_number_problem(wrong) == numbers.CHECK_DIGIT
    assert numbers.corporate_number_problem(number[1:]) == numbers.LENGTH_CORP


def test_mask_shows_only_the_last_four() -> None:
    number = my_number(random.Random(7))
    assert numbers.mask(number) == "****-****-" + number[-4:]
