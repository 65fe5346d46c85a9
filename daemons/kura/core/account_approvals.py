"""Two people for every account that can see numbers or approve.

Theory of operation. An account change that would give someone access to My
Numbers (an MU or MA account) or the power to approve (an SA, and an MA) is a
*proposal* by the DA; it takes effect only when an SA or MA approves who is
neither the proposer nor the account's holder. The DA role never approves.
Accounts of the DA role, disabling and demoting stay one-person acts: they
give nobody access to numbers.

Split knowledge: where the change gives the account new credentials (a new
account, a reset, a DA's or SA's account moving into a number-handling role)
the holder receives an activation code in two halves, one shown once to the
proposer and one shown once to the approver. The vault keeps only an argon2
hash of each half; the holder types both halves with a password of their own
on the public activation page, then enrols their own second factor. Neither
administrator ever holds a complete credential.

The one exception is the appliance's very first SA (no SA account has ever
existed, disabled or demoted ones included): the DA creates it alone and gets
both halves, because otherwise no one could ever approve anything. An SA
never sees a number.

Everything here is pure: the vault asks these functions and stores the
answers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from kura.core.errors import Conflict, PermissionDenied
from kura.core.roles import Role

PROPOSAL_LIFETIME = timedelta(hours=72)
ACTIVATION_LIFETIME = timedelta(hours=72)
FIRST_LOGIN_WINDOW = timedelta(days=30)
"""How far back the SA's home page lists new number handlers' first sign-ins."""

GUARDED_ROLES = frozenset({Role.MU, Role.MA, Role.SA})
"""Roles whose accounts need two people: they see numbers or approve."""

APPROVER_ROLES = frozenset({Role.SA, Role.MA})

# Roles whose credentials a DA may have held: any DA account (one-person by
# design) and the first SA (created by the DA alone). An account moving from
# one of them into a guarded role starts over with a new activation code.
_DA_KNOWN_ROLES = frozenset({Role.DA, Role.SA})

KINDS = ("create", "reset", "enable", "role")

# Crockford's base32: no I, L, O or U, so a half read aloud or copied by hand
# is hard to get wrong. 12 characters carry 60 bits.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
HALF_LENGTH = 12
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_half() -> str:
    """One half of an activation code, grouped in fours for reading."""
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(HALF_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, HALF_LENGTH, 4))


def normalise_half(text: str) -> str:
    """A half as typed (any case, with or without hyphens or spaces) in the
    form its hash was made from; empty if it cannot be a half."""
    cleaned = "".join(ch for ch in text.upper() if ch not in "- \u3000").translate(_LOOKALIKES)
    if len(cleaned) != HALF_LENGTH or any(ch not in _ALPHABET for ch in cleaned):
        return ""
    return "-".join(cleaned[i : i + 4] for i in range(0, HALF_LENGTH, 4))


@dataclass(frozen=True)
class Change:
    """What a DA asks for, as the vault found it.

    ``kind`` is one of ``KINDS``; ``old_role`` is None for a new account;
    ``new_role`` is the role the account has afterwards."""

    kind: str
    new_role: Role
    old_role: Role | None = None


def needs_two_people(change: Change) -> bool:
    if change.kind == "create":
        return change.new_role in GUARDED_ROLES
    if change.kind == "role":
        return change.new_role in GUARDED_ROLES and change.new_role != change.old_role
    # reset and enable: what matters is the account's role
    return change.new_role in GUARDED_ROLES


def gives_new_credentials(change: Change) -> bool:
    """True if approval issues an activation code (and ends the old password)."""
    if change.kind in ("create", "reset"):
        return True
    if change.kind == "role":
        return change.old_role in _DA_KNOWN_ROLES
    return False


def check_approver(
    approver: str, approver_role: Role, proposer: str, target: str
) -> None:
    """Raise unless ``approver`` may approve or reject a proposal by
    ``proposer`` about the account ``target``."""
    if approver_role not in APPROVER_ROLES:
        raise PermissionDenied(
            "only an SA or MA may approve account changes",
            "アカウントの変更を承認できるのはセキュリティ管理者またはマイナンバー管理者だけです。",
        )
    if approver == proposer:
        raise Conflict(
            "you proposed this change; another person must approve it",
            "この変更はあなたが申請したものです。別の担当者が承認してください。",
        )
    if approver == target:
        raise Conflict(
            "this change concerns your own account; another person must approve it",
            "この変更はあなた自身のアカウントに関するものです。別の担当者が承認してください。",
        )


def expired(expires_at: datetime, now: datetime) -> bool:
    return now >= expires_at
