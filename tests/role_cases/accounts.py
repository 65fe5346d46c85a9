"""Role-matrix rows for the two-person account changes (see
tests/role_cases/__init__.py).

From issue 10: the DA proposes an account that sees numbers or approves; an
SA or MA (never the DA) approves or rejects it; only the proposing DA
cancels it; the SA sees new number handlers' first sign-ins; the holder
activates the account with both halves of the code and no session."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.support import approve, holder_password

if TYPE_CHECKING:
    from tests.support import Response
    from tests.test_role_matrix import Case, World

EVERYONE = frozenset({"MU", "MA", "SA", "DA"})
SA, DA = frozenset({"SA"}), frozenset({"DA"})
SA_MA = frozenset({"SA", "MA"})
DA_SA_MA = frozenset({"DA", "SA", "MA"})

PUBLIC = frozenset({("POST", "/activation")})


def _proposal(world: World) -> dict[str, Any]:
    """A fresh proposal by the DA: a new MU account."""
    r = world.da.post("/users", {"username": world.unique("rm-prop-"), "role": "MU"})
    assert r.status == 200 and r.json["state"] == "pending", r.body
    return dict(r.json)


def _state(world: World, proposal: str) -> str:
    r = world.da.get("/users/proposals", query={"state": "all", "limit": 500})
    assert r.status == 200, r.body
    return next(p["state"] for p in r.json["proposals"] if p["id"] == proposal)


def list_proposals(world: World, role: str | None) -> Case:
    made = _proposal(world) if role else None

    def listed(r: Response) -> None:
        assert made is not None
        assert made["proposal"] in {p["id"] for p in r.json["proposals"]}
        assert "half_a_hash" not in r.body.decode()

    return world.case(world.client(role), "GET", "/users/proposals", followup=listed)


def _decide(world: World, role: str | None, action: str, final: str) -> Case:
    made = _proposal(world)
    proposal = made["proposal"]

    def decided(r: Response) -> None:
        assert _state(world, proposal) == final
        if action == "approve":
            assert r.json["half_b"] and r.json["half_b"] != made["half_a"]

    def close(r: Response) -> None:
        if _state(world, proposal) == "pending":
            world.da.post(f"/users/proposals/{proposal}/cancel")

    return world.case(world.client(role), "POST", f"/users/proposals/{proposal}/{action}",
                      snapshot=lambda: _state(world, proposal), followup=decided, cleanup=close)


def approve_proposal(world: World, role: str | None) -> Case:
    return _decide(world, role, "approve", "approved")


def reject_proposal(world: World, role: str | None) -> Case:
    return _decide(world, role, "reject", "rejected")


def cancel_proposal(world: World, role: str | None) -> Case:
    return _decide(world, role, "cancel", "cancelled")


def first_logins(world: World, role: str | None) -> Case:
    def listed(r: Response) -> None:
        assert isinstance(r.json["first_logins"], list)

    return world.case(world.client(role), "GET", "/users/first-logins", followup=listed)


def activation(world: World, role: str | None) -> Case:
    made = _proposal(world)
    decided = approve(world.sa, made["proposal"])
    assert decided.status == 200, decided.body
    username, password = made["username"], holder_password(made["username"])

    def active(r: Response) -> None:
        assert r.json["activated"] is True
        world.anon.sign_in(username, password)

    return world.case(world.client(role), "POST", "/activation",
                      {"username": username, "half_a": made["half_a"],
                       "half_b": decided.json["half_b"], "new_password": password},
                      followup=active)


EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/users/proposals"): DA_SA_MA,
    ("POST", "/users/proposals/{id}/approve"): SA_MA,
    ("POST", "/users/proposals/{id}/reject"): SA_MA,
    ("POST", "/users/proposals/{id}/cancel"): DA,
    ("GET", "/users/first-logins"): SA,
    ("POST", "/activation"): EVERYONE,
}

BUILDERS = {
    ("GET", "/users/proposals"): list_proposals,
    ("POST", "/users/proposals/{id}/approve"): approve_proposal,
    ("POST", "/users/proposals/{id}/reject"): reject_proposal,
    ("POST", "/users/proposals/{id}/cancel"): cancel_proposal,
    ("GET", "/users/first-logins"): first_logins,
    ("POST", "/activation"): activation,
}
