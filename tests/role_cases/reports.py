"""Role-matrix rows for reports and the appliance (see tests/role_cases/__init__.py).

From DESIGN.md: the SA reads the access history and the audit log and
verifies it; the handling-status ledger is the SA's and the MA's (who
approves the files' use and disposal); the appliance's status is the DA's.
No number, and no subject's name, appears in any of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support import Response
    from tests.test_role_matrix import Case, World

SA, DA = frozenset({"SA"}), frozenset({"DA"})
SA_MA = frozenset({"SA", "MA"})
SA_DA = frozenset({"SA", "DA"})


def access_report(world: World, role: str | None) -> Case:
    mu = world.mu.username

    def counted(r: Response) -> None:
        users = {u["user"]: u for u in r.json["users"]}
        assert users[mu]["counts"]["login"] >= 1
        assert r.json["user"] == mu and r.json["entries"]

    return world.case(world.client(role), "GET", "/reports/access",
                      query={"since": "2000-01-01T00:00:00+00:00", "user": mu, "limit": 50},
                      followup=counted)


def ledger(world: World, role: str | None) -> Case:
    def listed(r: Response) -> None:
        files = {f["file"]: f for f in r.json["files"]}
        assert set(files) == {"employee", "dependent", "payee", "documents"}
        assert files["payee"]["held"] >= 2
        assert world.mu.username in {a["username"] for a in r.json["access"]}

    return world.case(world.client(role), "GET", "/reports/ledger", followup=listed)


def verify(world: World, role: str | None) -> Case:
    def intact(r: Response) -> None:
        assert r.json["ok"] is True and r.json["entries"] > 0, r.json

    return world.case(world.client(role), "POST", "/audit/verify", followup=intact)


def acknowledge(world: World, role: str | None) -> Case:
    def nothing_to_acknowledge(r: Response) -> None:
        assert r.json["resumed"] is False and r.json["audit_integrity"] == {"state": "ok"}

    return world.case(world.client(role), "POST", "/audit/acknowledge",
                      followup=nothing_to_acknowledge)


def appliance(world: World, role: str | None) -> Case:
    def sane(r: Response) -> None:
        assert r.json["sealed"] is False and r.json["database_size"] > 0
        assert r.json["users_total"] >= 4

    return world.case(world.client(role), "GET", "/appliance", followup=sane)


EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/reports/access"): SA,
    ("GET", "/reports/ledger"): SA_MA,
    ("POST", "/audit/verify"): SA,
    ("POST", "/audit/acknowledge"): SA_DA,
    ("GET", "/appliance"): DA,
}
BUILDERS: dict[tuple[str, str], Callable[[World, str | None], Any]] = {
    ("GET", "/reports/access"): access_report,
    ("GET", "/reports/ledger"): ledger,
    ("POST", "/audit/verify"): verify,
    ("POST", "/audit/acknowledge"): acknowledge,
    ("GET", "/appliance"): appliance,
}
