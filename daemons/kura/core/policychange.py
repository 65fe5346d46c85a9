"""Which changes to the security policy weaken it, and which strengthen it.

Theory of operation. A Security Admin's edit is compared with the current
policy field by field (``classify``). A field whose new value lets in
something the old one kept out is *weaker*; every other changed field is
*stronger* (or merely rewritten, such as the same networks listed in another
order, which applies at once too). The vault applies the stronger fields at
once and keeps the weaker ones as one pending change that a second person
must approve (``split``); on approval they are laid over the policy as it is then
(``apply_pending``) and the whole policy is checked again.

What "weaker" means for each field:

- ``min_length``, ``required_classes``, ``history``: smaller is weaker;
- ``max_age_days``: longer is weaker, and 0 (never expires) is the weakest;
- ``lockout_threshold``: higher is weaker (more guesses before a lockout);
- ``lockout_base_seconds``, ``lockout_max_seconds``: *shorter* is weaker. The
  issue speaks of "longer lockout windows": Kura has no window in which
  failures are counted (every failure counts until a successful sign-in),
  so the lockout's length is the only time there is, and a shorter lockout
  gives a guesser more tries per hour;
- ``mfa_roles``: a role removed is weaker (even if another is added);
- ``session_idle_minutes``, ``session_absolute_hours``: longer is weaker;
- ``export_approval_threshold``: higher is weaker (more rows leave without
  an MA's approval);
- ``allowed_networks``: weaker if any address is allowed afterwards that was
  not before; an empty list allows any address and is the widest;
- ``audit_checkpoint_seconds``: longer is weaker (a longer stretch of the
  audit chain that is not yet signed);
- ``require_enrolled_terminal``: turning it off is weaker (MU and MA may
  then sign in from any PC again); turning it on applies at once.

A field is judged as a whole: an edit of ``mfa_roles`` that adds MA and
removes MU waits entirely for the second person.

Nothing here touches a database; the functions take and return policies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from kura.core.accounts import SecurityPolicy
from kura.core.argschema import EMPTY, UUID, Schema, obj, text
from kura.core.errors import BadRequest, Conflict, PermissionDenied

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

STATES = ("proposed", "approved", "rejected", "cancelled", "superseded")
"""A pending change's states: ``proposed`` until a second person approves or
rejects it, its proposer cancels it, or a newer proposal takes its place."""

RECENT_DAYS = 7
"""How far back the home pages show applied changes."""


class PolicyChangeNotPending(Conflict):
    """The change was already decided, cancelled or replaced by a newer one."""

    code = "policy_change_closed"
    ja = "このポリシー変更はすでに承認・却下・取消し済みか、新しい変更に置き換えられています。"
    en = "This policy change was already decided, cancelled or replaced by a newer one."


class PolicyChangeStale(Conflict):
    """On approval, the asked-for values no longer fit the current policy."""

    code = "policy_change_stale"
    ja = (
        "この変更は現在のポリシーと両立しなくなりました。却下して、"
        "改めて変更を申請してください。"
    )
    en = (
        "This change no longer fits the current policy. Reject it and propose the "
        "change again."
    )


class NotEligibleApprover(PermissionDenied):
    """The caller may not approve or reject this change (their own, or an MA
    where another SA can)."""

    code = "not_eligible_approver"
    ja = "このポリシー変更を承認・却下できるのは、申請者以外のセキュリティ管理者です。"
    en = "Only a Security Admin other than the proposer may approve or reject this change."


# --- comparing values --------------------------------------------------------------------


def _never_is_longest(days: int) -> float:
    return float("inf") if days == 0 else float(days)


def _networks(policy_value: Iterable[str]) -> list[IpNetwork]:
    return [ipaddress.ip_network(text) for text in policy_value]


def covers(outer: Iterable[str], inner: Iterable[str]) -> bool:
    """True if every address ``inner`` allows is allowed by ``outer``; an empty
    list allows every address."""
    outer_nets, inner_nets = _networks(outer), _networks(inner)
    if not outer_nets:
        return True
    if not inner_nets:
        return False
    # collapse_addresses merges neighbours into the largest blocks they make,
    # so a network covered by several listed ones lies inside one merged block.
    merged: list[IpNetwork] = [
        *ipaddress.collapse_addresses(n for n in outer_nets if n.version == 4),
        *ipaddress.collapse_addresses(n for n in outer_nets if n.version == 6),
    ]
    # subnet_of is typed for one address family; the version check comes first.
    return all(
        any(
            net.version == big.version and net.subnet_of(big)  # type: ignore[arg-type]
            for big in merged
        )
        for net in inner_nets
    )


def _smaller_is_weaker(old: Any, new: Any) -> bool:
    return bool(new < old)


def _larger_is_weaker(old: Any, new: Any) -> bool:
    return bool(new > old)


# Each field's rule: given (old value, new value) of a changed field, is the
# change weaker? Every SecurityPolicy field must be here (a test checks it).
WEAKER: dict[str, Callable[[Any, Any], bool]] = {
    "min_length": _smaller_is_weaker,
    "required_classes": _smaller_is_weaker,
    "history": _smaller_is_weaker,
    "max_age_days": lambda old, new: _never_is_longest(new) > _never_is_longest(old),
    "lockout_threshold": _larger_is_weaker,
    "lockout_base_seconds": _smaller_is_weaker,
    "lockout_max_seconds": _smaller_is_weaker,
    "mfa_roles": lambda old, new: not set(old) <= set(new),
    "session_idle_minutes": _larger_is_weaker,
    "session_absolute_hours": _larger_is_weaker,
    "export_approval_threshold": _larger_is_weaker,
    "allowed_networks": lambda old, new: not covers(old, new),
    "audit_checkpoint_seconds": _larger_is_weaker,
    "require_enrolled_terminal": lambda old, new: bool(old) and not new,
}


@dataclass(frozen=True)
class FieldChange:
    """One changed field: its old and new value (as in the policy's JSON) and
    whether the change weakens the policy."""

    name: str
    old: Any
    new: Any
    weaker: bool

    def to_json(self) -> dict[str, Any]:
        return {"field": self.name, "old": self.old, "new": self.new, "weaker": self.weaker}


def classify(old: SecurityPolicy, new: SecurityPolicy) -> list[FieldChange]:
    """Every field whose value differs, in the policy's field order."""
    before, after = old.to_json(), new.to_json()
    changes = []
    for name in before:
        if _same(name, before[name], after[name]):
            continue
        weaker = WEAKER[name](before[name], after[name])
        changes.append(FieldChange(name, before[name], after[name], weaker))
    return changes


def _same(name: str, a: Any, b: Any) -> bool:
    # Lists in another order are a change (the SA gets the order they typed),
    # never a weaker one: the rules above compare them as sets.
    return bool(a == b)


@dataclass(frozen=True)
class Split:
    """An edit divided: the policy to apply now (the current one with the
    stronger fields changed) and the weaker fields' asked-for values."""

    now: SecurityPolicy
    stronger: tuple[FieldChange, ...]
    weaker: tuple[FieldChange, ...]

    @property
    def pending(self) -> dict[str, Any]:
        return {c.name: c.new for c in self.weaker}


def split(current: SecurityPolicy, edit: Mapping[str, Any]) -> Split:
    """Divide an edit (a policy object, possibly partial) of ``current``.
    Raises BadRequest if the edited policy as a whole is not valid."""
    target = SecurityPolicy.from_json(edit, base=current)
    changes = classify(current, target)
    stronger = tuple(c for c in changes if not c.weaker)
    weaker = tuple(c for c in changes if c.weaker)
    now = SecurityPolicy.from_json({c.name: c.new for c in stronger}, base=current)
    return Split(now, stronger, weaker)


def apply_pending(current: SecurityPolicy, pending: Mapping[str, Any]) -> SecurityPolicy:
    """The policy once an approved change is laid over ``current``. Raises
    PolicyChangeStale (naming the rule that fails) if the values no longer fit."""
    try:
        return SecurityPolicy.from_json(pending, base=current)
    except BadRequest as exc:
        raise PolicyChangeStale(
            f"{PolicyChangeStale.en} ({exc.message_en})",
            f"{PolicyChangeStale.ja}（{exc.message_ja}）",
            field=exc.detail.get("field", ""),
        ) from exc


def describe(current: SecurityPolicy, pending: Mapping[str, Any]) -> list[FieldChange]:
    """A pending change's fields against the policy as it is now: what an
    approver would change (a field already at the asked-for value is left out)."""
    base = current.to_json()
    out = []
    for name, value in pending.items():
        if name in base and not _same(name, base[name], value):
            out.append(FieldChange(name, base[name], value, WEAKER[name](base[name], value)))
    return out


def may_decide(role: str, username: str, proposer: str, active_sas: int) -> bool:
    """Who may approve or reject a pending change: an SA who did not propose
    it, or an MA where the appliance has exactly one active SA (who then
    cannot be their own second person). Never a DA, never the proposer."""
    if username == proposer:
        return False
    if role == "SA":
        return True
    return role == "MA" and active_sas == 1


SCHEMAS: dict[str, Schema] = {
    "policy.pending": EMPTY,
    "policy.approve": obj({"id": UUID}, {"reason": text(500)}),
    "policy.reject": obj({"id": UUID}, {"reason": text(500)}),
    "policy.cancel": obj({"id": UUID}),
}


def policy_fields() -> list[str]:
    return [f.name for f in fields(SecurityPolicy)]


__all__ = [
    "RECENT_DAYS",
    "SCHEMAS",
    "STATES",
    "WEAKER",
    "FieldChange",
    "NotEligibleApprover",
    "PolicyChangeNotPending",
    "PolicyChangeStale",
    "Split",
    "apply_pending",
    "classify",
    "covers",
    "describe",
    "may_decide",
    "policy_fields",
    "split",
]
