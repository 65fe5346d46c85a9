"""The pure core of disposal (kura.core.disposal): due dates from the SA's
rules, the cut-off the vault queries with, a batch's transitions, and the
record lines a batch leaves.

The 扶養控除等申告書 rule as read from DESIGN.md: the form is kept for seven
years from the day after 10 January of the year following its filing
deadline. An employee's last form is the one for the year they leave (its
deadline falls in that year), so an employee who left on 2026-03-31 is kept
from 2027-01-11 for seven years, through 2034-01-10, and is due for disposal
on 2034-01-11 (``jan11_next_year`` with seven years)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kura.core import disposal
from kura.core.disposal import (
    DEFAULT_RULES,
    Due,
    IllegalTransition,
    InvalidRetentionRule,
    OwnProposal,
    RecordRow,
    RetentionRule,
    add_years,
    check_decider,
    checked_rule,
    clean_reason,
    due_date,
    latest_due_event,
    next_state,
    record_rows,
    subject_due,
    summary_fields,
    tokyo_date,
)
from kura.core.errors import BadRequest, Conflict, PermissionDenied
from tests.support import my_numbers


def rule(keep_years: int = 7, anchor: str = "event", basis: str = "contract") -> RetentionRule:
    return RetentionRule(basis, basis, basis, keep_years, anchor)


EMPLOYMENT = DEFAULT_RULES["employment"]


# --- due dates ------------------------------------------------------------------


def test_the_seven_year_dependents_rule() -> None:
    assert EMPLOYMENT.anchor == "jan11_next_year" and EMPLOYMENT.keep_years == 7
    assert due_date(EMPLOYMENT, date(2026, 3, 31)) == date(2034, 1, 11)
    # Leaving on the first or the last day of a year makes no difference.
    assert due_date(EMPLOYMENT, date(2026, 1, 1)) == date(2034, 1, 11)
    assert due_date(EMPLOYMENT, date(2026, 12, 31)) == date(2034, 1, 11)


def test_event_anchor_adds_whole_years() -> None:
    assert due_date(rule(7), date(2026, 3, 31)) == date(2033, 3, 31)
    assert due_date(rule(2), date(2025, 10, 15)) == date(2027, 10, 15)


def test_leap_day_events() -> None:
    # The period has not ended on 28 February: a leap day falls due on 1 March.
    assert add_years(date(2024, 2, 29), 1) == date(2025, 3, 1)
    assert due_date(rule(1), date(2024, 2, 29)) == date(2025, 3, 1)
    assert due_date(rule(4), date(2024, 2, 29)) == date(2028, 2, 29)
    assert due_date(rule(7, "jan11_next_year"), date(2024, 2, 29)) == date(2032, 1, 11)


def test_keep_years_zero() -> None:
    assert due_date(rule(0), date(2026, 3, 31)) == date(2026, 3, 31)
    assert due_date(rule(0, "jan11_next_year"), date(2026, 3, 31)) == date(2027, 1, 11)
    assert due_date(rule(0), date(2024, 2, 29)) == date(2024, 2, 29)


def test_the_end_of_the_calendar() -> None:
    # An event typed far in the future is due "never", not an error.
    assert due_date(rule(7), date(9999, 12, 31)) == date.max
    assert due_date(rule(100, "jan11_next_year"), date(9990, 5, 5)) == date.max
    assert latest_due_event(rule(0), date.max) == date.max
    assert latest_due_event(rule(7), date(1, 1, 1)) is None
    assert latest_due_event(rule(7, "jan11_next_year"), date(8, 1, 11)) is None


def test_no_event_means_not_due() -> None:
    assert due_date(rule(), None) is None
    assert subject_due(DEFAULT_RULES, "contract", None) is None


def test_the_cut_off_on_the_examples() -> None:
    # On 2034-01-10 the 2026 leaver is still kept; on 2034-01-11 it is due.
    assert latest_due_event(EMPLOYMENT, date(2034, 1, 10)) == date(2025, 12, 31)
    assert latest_due_event(EMPLOYMENT, date(2034, 1, 11)) == date(2026, 12, 31)
    assert latest_due_event(rule(1), date(2025, 3, 1)) == date(2024, 3, 1)
    assert latest_due_event(rule(1), date(2025, 2, 28)) == date(2024, 2, 28)
    assert latest_due_event(rule(0), date(2026, 3, 31)) == date(2026, 3, 31)


rules = st.builds(
    rule,
    keep_years=st.integers(0, 100),
    anchor=st.sampled_from(disposal.ANCHORS),
)
days = st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)) | st.dates()


@given(rules, days, days)
def test_the_cut_off_agrees_with_the_due_date(r: RetentionRule, event: date, as_of: date) -> None:
    # The vault asks SQL for events up to the cut-off: exactly the due ones.
    latest = latest_due_event(r, as_of)
    due = due_date(r, event)
    assert due is not None
    assert (due <= as_of) == (latest is not None and event <= latest)


@given(rules, days)
def test_due_dates_never_go_down(r: RetentionRule, event: date) -> None:
    later = event + timedelta(days=1)
    assert due_date(r, event) <= due_date(r, later)  # type: ignore[operator]


def test_dependents_go_with_their_employee() -> None:
    # The employee left in 2026: due 2034-01-11, through the employee.
    through = subject_due(DEFAULT_RULES, "employment", None, "employment", date(2026, 3, 31))
    assert through == Due(date(2034, 1, 11), date(2026, 3, 31), True)
    # A dependent's own event (e.g. no longer a dependent in 2024) comes first.
    own = subject_due(DEFAULT_RULES, "employment", date(2024, 6, 1), "employment",
                      date(2026, 3, 31))
    assert own == Due(date(2032, 1, 11), date(2024, 6, 1), False)
    # A dependent alone is due only through its own event.
    assert subject_due(DEFAULT_RULES, "employment", None, "employment", None) is None


def test_tokyo_date() -> None:
    assert tokyo_date(datetime(2026, 3, 31, 14, 59, tzinfo=UTC)) == date(2026, 3, 31)
    assert tokyo_date(datetime(2026, 3, 31, 15, 0, tzinfo=UTC)) == date(2026, 4, 1)


def test_summary_fields() -> None:
    fields = summary_fields(DEFAULT_RULES, "employee", "employment", date(2026, 3, 31))
    assert fields["disposal_due"] == "2034-01-11"
    assert fields["retention_rule"]["ja"] == "退職"
    assert fields["retention_rule"]["with_employee"] is False
    child = summary_fields(DEFAULT_RULES, "dependent", "employment", None)
    assert child["disposal_due"] is None and child["retention_rule"]["with_employee"]


# --- what the SA types in -----------------------------------------------------------


@pytest.mark.parametrize(("years", "anchor"), [("0", "event"), ("100", "jan11_next_year"),
                                               (7, "event"), (" 7 ", "event")])
def test_good_rules(years: object, anchor: str) -> None:
    assert checked_rule(years, anchor) == (int(str(years)), anchor)


@pytest.mark.parametrize(("years", "anchor"), [("-1", "event"), ("101", "event"),
                                               ("seven", "event"), ("７", "event"),
                                               ("", "event"), (None, "event"), (True, "event"),
                                               ("7.5", "event"), ("7", "sometime")])
def test_bad_rules(years: object, anchor: str) -> None:
    with pytest.raises(InvalidRetentionRule) as caught:
        checked_rule(years, anchor)
    assert caught.value.status == 422


# --- batches --------------------------------------------------------------------------


def test_transition_table() -> None:
    assert next_state("proposed", "approve") == "approved"
    assert next_state("proposed", "reject") == "rejected"
    for state in ("approved", "rejected"):
        for decision in disposal.DECISIONS:
            with pytest.raises(IllegalTransition) as caught:
                next_state(state, decision)
            assert isinstance(caught.value, Conflict)
    with pytest.raises(IllegalTransition):
        next_state("proposed", "execute")
    # Every state a transition leads to is a known state, and only one has exits.
    assert {s for (s, _) in disposal.TRANSITIONS} == {"proposed"}
    assert set(disposal.TRANSITIONS.values()) <= set(disposal.STATES)


def test_the_proposer_may_withdraw_but_never_approve() -> None:
    with pytest.raises(OwnProposal) as caught:
        check_decider("ma-1", "ma-1", "approve")
    assert isinstance(caught.value, PermissionDenied)
    check_decider("ma-1", "ma-1", "reject")
    check_decider("mu-1", "ma-1", "approve")


def test_reasons() -> None:
    assert clean_reason("  期限  到来 ", required=True) == "期限 到来"
    assert clean_reason("", required=False) == ""
    with pytest.raises(BadRequest):
        clean_reason("   ", required=True)
    with pytest.raises(BadRequest):
        clean_reason("x" * 501, required=False)
    number = my_numbers(1, seed=7)[0]
    with pytest.raises(BadRequest) as caught:
        clean_reason(f"wrong {number}", required=False)
    assert number not in str(caught.value.to_json())


def test_record_rows_group_by_kind_and_basis() -> None:
    rows = record_rows(
        [("payee", "last_payment"), ("employee", "employment"), ("dependent", "employment"),
         ("dependent", "employment"), ("payee", "contract"), ("payee", "last_payment")],
        {"employment": 2, "last_payment": 0},
    )
    assert rows == [
        RecordRow("employee", "employment", 1),
        RecordRow("dependent", "employment", 2),
        RecordRow("payee", "contract", 1),
        RecordRow("payee", "last_payment", 2),
        RecordRow("documents", "employment", 2),
    ]
    assert record_rows([]) == []
