"""The enrolled-terminal rule (docs/agents.md, "The console and the vault").

When the SA's security policy says ``require_enrolled_terminal``, a MyNumber
User or Admin works only from an enrolled clerk PC whose agent is compliant.
kura-console asks each browser for a client certificate, verifies it against
the agent CA and passes its serial (lower-case hex) as the request's
``terminal``; the vault asks its agent records for that serial's standing and
judges here. A session is bound to the terminal it signed in from, so a
stolen session cookie is of no use on another PC, enrolled or not.

Nothing here touches I/O: the vault (kura.vault.terminals) gathers the facts.
"""

from __future__ import annotations

from kura.core.accounts import SecurityPolicy
from kura.core.roles import Role

COMPLIANT = "compliant"
STANDINGS = ("compliant", "noncompliant", "revoked", "unknown")
"""What kura.vault.agents says of a certificate serial."""

NO_CERTIFICATE = "no_certificate"
OTHER_TERMINAL = "other_terminal"

BOUND_ROLES = frozenset({Role.MU, Role.MA})
"""The roles that see numbers, and so the ones the rule binds."""


def normalise_serial(text: str) -> str:
    """A certificate serial as the vault stores it (``format(serial, "x")``),
    from whatever hex form a TLS library gives (capitals, leading zeros);
    "" for anything that is not hex."""
    cleaned = text.strip().replace(":", "").lower()
    # Hex digits only: int() would also take "-", "0x" and "_", and a serial
    # must read the same whichever way in (vault, console, kura-policy).
    if not cleaned or len(cleaned) > 64 or cleaned.strip("0123456789abcdef"):
        return ""
    return format(int(cleaned, 16), "x")


def applies(policy: SecurityPolicy, role: Role) -> bool:
    """Does the rule bind this role under this policy?"""
    return policy.require_enrolled_terminal and role in BOUND_ROLES


def refusal(presented: str, standing: str, bound: str | None = None) -> str | None:
    """Why a call from the terminal ``presented`` (its serial, "" without a
    certificate) is refused, or None when it may go on. ``standing`` is the
    vault's word for ``presented``; ``bound`` is the terminal the session
    signed in from (None while signing in)."""
    if not presented:
        return NO_CERTIFICATE
    if bound is not None and presented != bound:
        return OTHER_TERMINAL
    if standing != COMPLIANT:
        return standing if standing in STANDINGS else "unknown"
    return None


__all__ = [
    "BOUND_ROLES",
    "COMPLIANT",
    "NO_CERTIFICATE",
    "OTHER_TERMINAL",
    "STANDINGS",
    "applies",
    "normalise_serial",
    "refusal",
]
