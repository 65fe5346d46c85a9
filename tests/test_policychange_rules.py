"""Which edits of the security policy weaken it (and wait for a second
person) and which strengthen it (and apply at once): kura.core.policychange,
without I/O."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kura.core import accounts, policychange
from kura.core.accounts import SecurityPolicy
from kura.core.errors import BadRequest
from kura.core.policychange import PolicyChangeStale, classify, covers, split
from kura.core.roles import Role

BASE = SecurityPolicy()  # the defaults: min_length 12, max_age 90, SA and DA with TOTP …


# (field, current value, asked-for value, weaker?)
CASES: list[tuple[str, Any, Any, bool]] = [
    ("min_length", 12, 8, True),
    ("min_length", 12, 16, False),
    ("required_classes", 3, 1, True),
    ("required_classes", 3, 4, False),
    ("history", 5, 0, True),
    ("history", 5, 10, False),
    ("max_age_days", 90, 365, True),
    ("max_age_days", 90, 0, True),  # never expires: the weakest
    ("max_age_days", 3650, 0, True),
    ("max_age_days", 0, 3650, False),
    ("max_age_days", 90, 30, False),
    ("lockout_threshold", 5, 10, True),
    ("lockout_threshold", 5, 3, False),
    ("lockout_base_seconds", 30, 1, True),  # a shorter lockout lets a guesser try sooner
    ("lockout_base_seconds", 30, 60, False),
    ("lockout_max_seconds", 3600, 60, True),
    ("lockout_max_seconds", 3600, 86400, False),
    ("mfa_roles", ["SA", "DA"], ["SA"], True),
    ("mfa_roles", ["SA", "DA"], ["MU", "MA", "SA", "DA"], False),
    ("mfa_roles", ["MU", "SA", "DA"], ["SA", "DA"], True),  # MFA off for the MU
    ("mfa_roles", ["MU", "SA", "DA"], ["MA", "SA", "DA"], True),  # one off, one on: waits
    ("mfa_roles", ["MU", "MA", "SA", "DA"], [], True),
    ("session_idle_minutes", 15, 60, True),
    ("session_idle_minutes", 15, 5, False),
    ("session_absolute_hours", 10, 24, True),
    ("session_absolute_hours", 10, 8, False),
    ("export_approval_threshold", 100, 100_000, True),
    ("export_approval_threshold", 100, 0, False),
    ("allowed_networks", ["192.0.2.0/24"], [], True),  # empty: any address
    ("allowed_networks", ["192.0.2.0/24"], ["192.0.2.0/23"], True),
    ("allowed_networks", ["192.0.2.0/24"], ["192.0.2.0/25", "198.51.100.0/24"], True),
    ("allowed_networks", [], ["192.0.2.0/24"], False),
    ("allowed_networks", ["192.0.2.0/24"], ["192.0.2.128/25"], False),
    ("allowed_networks", ["192.0.2.0/25", "192.0.2.128/25"], ["192.0.2.0/24"], False),
    ("allowed_networks", ["192.0.2.0/24", "2001:db8::/32"], ["2001:db8:1::/48"], False),
    ("allowed_networks", ["192.0.2.0/24"], ["2001:db8::/32"], True),
    ("audit_checkpoint_seconds", 5, 60, True),
    ("audit_checkpoint_seconds", 5, 1, False),
    ("require_enrolled_terminal", True, False, True),  # MU/MA from any PC again: waits
    ("require_enrolled_terminal", False, True, False),
]


def _policy(**values: Any) -> SecurityPolicy:
    return SecurityPolicy.from_json(values, base=BASE)


@pytest.mark.parametrize(("field", "old", "new", "weaker"), CASES,
                         ids=[f"{c[0]}:{c[1]}->{c[2]}" for c in CASES])
def test_each_field_is_judged(field: str, old: Any, new: Any, weaker: bool) -> None:
    extra: dict[str, Any] = {}
    if field == "lockout_base_seconds":
        extra["lockout_max_seconds"] = 86400
    current, asked = _policy(**{field: old, **extra}), _policy(**{field: new, **extra})
    (change,) = classify(current, asked)
    assert change.name == field and change.weaker is weaker
    parts = split(current, {field: new})
    if weaker:
        assert parts.now == current and parts.pending == {field: asked.to_json()[field]}
    else:
        assert parts.now == asked and parts.pending == {}


def test_every_setting_has_a_rule() -> None:
    assert set(policychange.WEAKER) == set(policychange.policy_fields())
    assert set(policychange.WEAKER) == {c[0] for c in CASES}


def test_the_checkpoint_interval_is_a_setting() -> None:
    assert BASE.audit_checkpoint_seconds == 5
    assert accounts.POLICY_SCHEMA["properties"]["audit_checkpoint_seconds"]["maximum"] == 3600
    for bad in (0, 3601):
        with pytest.raises(BadRequest) as raised:
            _policy(audit_checkpoint_seconds=bad)
        assert raised.value.detail["field"] == "audit_checkpoint_seconds"
        assert raised.value.message_ja and raised.value.message_en


def test_the_enrolled_terminal_rule_is_a_strict_boolean() -> None:
    assert BASE.require_enrolled_terminal is False
    assert accounts.POLICY_SCHEMA["properties"]["require_enrolled_terminal"]["type"] == "boolean"
    assert _policy(require_enrolled_terminal=True).to_json()["require_enrolled_terminal"] is True
    for bad in (1, "true", None):
        with pytest.raises(BadRequest) as raised:
            _policy(require_enrolled_terminal=bad)
        assert raised.value.detail["field"] == "require_enrolled_terminal"
        assert raised.value.message_ja and raised.value.message_en


def test_a_mixed_edit_splits() -> None:
    parts = split(BASE, {"min_length": 16, "mfa_roles": ["SA"], "session_idle_minutes": 10,
                         "export_approval_threshold": 100_000})
    assert [c.name for c in parts.stronger] == ["min_length", "session_idle_minutes"]
    assert parts.pending == {"mfa_roles": ["SA"], "export_approval_threshold": 100_000}
    assert parts.now == _policy(min_length=16, session_idle_minutes=10)
    assert policychange.apply_pending(parts.now, parts.pending) == _policy(
        min_length=16, session_idle_minutes=10, mfa_roles=["SA"],
        export_approval_threshold=100_000)


def test_lists_in_another_order_apply_at_once() -> None:
    current = _policy(allowed_networks=["192.0.2.0/24", "198.51.100.0/24"])
    reordered = ["198.51.100.0/24", "192.0.2.0/24"]
    (change,) = classify(current, _policy(allowed_networks=reordered))
    assert not change.weaker
    assert split(current, {"allowed_networks": reordered}).now.allowed_networks == tuple(reordered)
    assert split(BASE, {"mfa_roles": ["DA", "SA"]}).stronger == ()  # roles have no order


def test_a_stale_change_is_refused_with_a_reason() -> None:
    # Proposed: idle 600 minutes (10 h allowed then); since then the longest
    # session was cut to 5 hours, which the proposal no longer fits.
    now = _policy(session_absolute_hours=5)
    with pytest.raises(PolicyChangeStale) as raised:
        policychange.apply_pending(now, {"session_idle_minutes": 600})
    error = raised.value
    assert error.status == 409 and error.detail["field"] == "session_idle_minutes"
    assert "却下" in error.message_ja and "session_absolute_hours" in error.message_en


def test_invalid_edits_are_refused_whole() -> None:
    with pytest.raises(BadRequest):
        split(BASE, {"min_length": 16, "lockout_max_seconds": 10})  # max below base (30)
    with pytest.raises(BadRequest):
        split(BASE, {"mfa_roles": ["XX"]})


@pytest.mark.parametrize(
    ("role", "username", "active_sas", "allowed"),
    [
        ("SA", "sa-2", 2, True),
        ("SA", "sa-1", 2, False),  # the proposer
        ("SA", "sa-1", 1, False),
        ("MA", "ma-1", 1, True),  # one SA: an MA is the second person
        ("MA", "ma-1", 2, False),  # another SA can: the MA may not
        ("MA", "ma-1", 0, False),
        ("DA", "da-1", 1, False),
        ("MU", "mu-1", 1, False),
    ],
)
def test_who_may_decide(role: str, username: str, active_sas: int, allowed: bool) -> None:
    assert policychange.may_decide(role, username, "sa-1", active_sas) is allowed


# --- properties ----------------------------------------------------------------------------


small_nets = st.builds(
    lambda host, prefix: str(ipaddress.ip_network(f"10.0.0.{host}/{prefix}", strict=False)),
    st.integers(0, 255), st.integers(26, 32),
)


@settings(max_examples=300)
@given(st.lists(small_nets, max_size=5), st.lists(small_nets, max_size=5))
def test_covers_agrees_with_counting_addresses(outer: list[str], inner: list[str]) -> None:
    def addresses(nets: list[str]) -> set[int]:
        if not nets:
            return set(range(2**32))  # stands for "any address"; only compared below
        return {int(a) for n in nets for a in ipaddress.ip_network(n)}

    if not outer:
        assert covers(outer, inner)
    elif not inner:
        assert not covers(outer, inner)
    else:
        assert covers(outer, inner) == (addresses(inner) <= addresses(outer))


int_values = {name: st.integers(low, high)
              for name, (low, high, _, _) in accounts._INT_FIELDS.items()}
policies = st.fixed_dictionaries(
    {},
    optional={
        **int_values,
        "mfa_roles": st.lists(st.sampled_from([r.value for r in Role]), unique=True),
        "allowed_networks": st.lists(small_nets, unique=True, max_size=3),
        "require_enrolled_terminal": st.booleans(),
    },
)


def _valid(edit: dict[str, Any], base: SecurityPolicy = BASE) -> SecurityPolicy:
    try:
        return SecurityPolicy.from_json(edit, base=base)
    except BadRequest:
        assume(False)
        raise


@settings(max_examples=400)
@given(policies, policies)
def test_split_applies_strength_now_and_weakness_later(a: dict[str, Any],
                                                      b: dict[str, Any]) -> None:
    current = _valid(a)
    target = _valid(b, current)
    parts = split(current, b)
    # What applies now never weakens anything …
    assert not any(c.weaker for c in classify(current, parts.now))
    # … what waits is only weaker …
    assert all(c.weaker for c in classify(parts.now, _valid(parts.pending, parts.now)))
    # … and once approved the SA has exactly what they asked for.
    assert policychange.apply_pending(parts.now, parts.pending) == target
    assert {c.name for c in classify(current, target)} == (
        {c.name for c in parts.stronger} | set(parts.pending))


@settings(max_examples=300)
@given(st.sampled_from(sorted(accounts._INT_FIELDS)), st.data())
def test_undoing_a_weakening_strengthens(field: str, data: st.DataObject) -> None:
    low, high, _, _ = accounts._INT_FIELDS[field]
    old, new = data.draw(st.integers(low, high)), data.draw(st.integers(low, high))
    assume(old != new)
    wide = {"lockout_max_seconds": 86400, "session_absolute_hours": 168}
    a = _valid({**wide, field: old})
    b = _valid({**wide, field: new})
    forth, back = classify(a, b), classify(b, a)
    assert forth[0].weaker != back[0].weaker
