"""Role-matrix rows for the changes of the security policy that wait for a
second person: SA, MA and DA see them; an SA (not the proposer) or, where
the appliance has one SA, an MA approves or rejects; the proposing SA
cancels. MU never; the DA never decides."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support import Api, Response
    from tests.test_role_matrix import Case, World

NOBODY_S_CHANGE = str(uuid.UUID(int=0, version=4))  # for the calls without a session
SA_MA = frozenset({"SA", "MA"})


def _pending(world: World) -> Any:
    r = world.client("SA").get("/policy/changes")
    assert r.status == 200, r.body
    return r.json["pending"]


def _proposal(world: World, role: str | None) -> tuple[str, Api | None, dict[str, Any]]:
    """A weakening waiting for a second person, its proposer, and the policy
    before it. For the SA's cell it is another SA's (one's own cannot be
    approved), made for this cell and disabled afterwards."""
    original = world.policy()
    if role is None:
        return NOBODY_S_CHANGE, None, original
    world.one_sa()  # earlier cells made SAs; the MA decides only where there is one
    proposer = world.fully_active("SA") if role == "SA" else world.client("SA")
    weaker = {"export_approval_threshold": original["export_approval_threshold"] + 1}
    r = proposer.put("/policy", {"policy": weaker})
    assert r.status == 200 and r.json["pending"], r.body
    return r.json["pending"]["id"], proposer, original


def _cleanup(world: World, proposer: Api | None, original: dict[str, Any]
             ) -> Callable[[Response], None]:
    def put_back(r: Response) -> None:
        pending = _pending(world)
        if pending and proposer is not None:
            proposer.post(f"/policy/changes/{pending['id']}/cancel")
        # Back to the lower threshold: a strengthening, in force at once.
        back = world.client("SA").put("/policy", {"policy": original})
        assert back.status == 200 and back.json["pending"] is None, back.body
        if proposer is not None and proposer is not world.client("SA"):
            gone = world.client("DA").patch(f"/users/{proposer.username}", {"disabled": True})
            assert gone.status == 200, gone.body
        assert world.policy() == original

    return put_back


def list_changes(world: World, role: str | None) -> Case:
    return world.case(world.client(role), "GET", "/policy/changes")


def _decide(world: World, role: str | None, verb: str) -> Case:
    change, proposer, original = _proposal(world, role)

    def decided(r: Response) -> None:
        assert r.json["change"]["state"] == ("approved" if verb == "approve" else "rejected")
        threshold = world.policy()["export_approval_threshold"]
        raised = original["export_approval_threshold"] + 1
        assert threshold == (raised if verb == "approve" else original["export_approval_threshold"])

    return world.case(world.client(role), "POST", f"/policy/changes/{change}/{verb}", {},
                      snapshot=lambda: (world.policy(), _pending(world)), followup=decided,
                      cleanup=_cleanup(world, proposer, original))


def approve(world: World, role: str | None) -> Case:
    return _decide(world, role, "approve")


def reject(world: World, role: str | None) -> Case:
    return _decide(world, role, "reject")


def cancel(world: World, role: str | None) -> Case:
    original = world.policy()
    change = NOBODY_S_CHANGE
    if role is not None:
        weaker = {"export_approval_threshold": original["export_approval_threshold"] + 1}
        r = world.client("SA").put("/policy", {"policy": weaker})
        assert r.status == 200 and r.json["pending"], r.body
        change = r.json["pending"]["id"]

    def cancelled(r: Response) -> None:
        assert r.json["change"]["state"] == "cancelled" and _pending(world) is None

    return world.case(world.client(role), "POST", f"/policy/changes/{change}/cancel",
                      snapshot=lambda: (world.policy(), _pending(world)), followup=cancelled,
                      cleanup=_cleanup(world, world.client("SA") if role else None, original))


EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/policy/changes"): frozenset({"SA", "MA", "DA"}),
    ("POST", "/policy/changes/{id}/approve"): SA_MA,
    ("POST", "/policy/changes/{id}/reject"): SA_MA,
    ("POST", "/policy/changes/{id}/cancel"): frozenset({"SA"}),
}

BUILDERS: dict[tuple[str, str], Callable[[World, str | None], Case]] = {
    ("GET", "/policy/changes"): list_changes,
    ("POST", "/policy/changes/{id}/approve"): approve,
    ("POST", "/policy/changes/{id}/reject"): reject,
    ("POST", "/policy/changes/{id}/cancel"): cancel,
}
