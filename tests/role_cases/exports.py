"""Role-matrix rows for export requests (see tests/role_cases/__init__.py):
an MU prepares and downloads their own exports, an MA lists and decides them;
SA and DA do neither."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support import Response
    from tests.test_role_matrix import Case, World

ROLES_MU, ROLES_MA = frozenset({"MU"}), frozenset({"MA"})
ROLES_MU_MA = ROLES_MU | ROLES_MA
NOBODY_S_REQUEST = str(uuid.UUID(int=0, version=4))  # for the calls without a session


def _prepared(world: World, threshold: int | None = None) -> str:
    """An export request of the world's subject, made by the MU; with
    ``threshold`` the SA's threshold is set to it for the moment it is made."""
    original = world.policy()
    if threshold is not None:
        r = world.sa.put("/policy", {"policy": {**original,
                                                "export_approval_threshold": threshold}})
        assert r.status == 200, r.body
    try:
        r = world.mu.post("/export-requests",
                          {"purpose": "payment_record", "ids": [world.subject["id"]]})
        assert r.status == 201, r.body
    finally:
        if threshold is not None:
            # Raising the threshold again weakens the policy: the MA approves
            # (the shared appliance's only active SA being the one who asked).
            back = world.sa.put("/policy", {"policy": original})
            assert back.status == 200, back.body
            if back.json["pending"]:
                world.approve_policy(back.json["pending"]["id"])
    request_id: str = r.json["request"]["id"]
    return request_id


def _pending(world: World) -> str:
    return _prepared(world, threshold=0)  # one row is over a threshold of none


def _every_request(world: World) -> list[tuple[str, str]]:
    r = world.client("MA").get("/export-requests", query={"limit": 500})
    assert r.status == 200, r.body
    return sorted((x["id"], x["state"]) for x in r.json["requests"])


def _state(world: World, request_id: str) -> Callable[[], object]:
    def state() -> object:
        r = world.client("MA").get(f"/export-requests/{request_id}")
        assert r.status == 200, r.body
        return r.json["requests"][0]["state"]

    return state


def prepare(world: World, role: str | None) -> Case:
    def approved_at_once(r: Response) -> None:
        request = r.json["request"]
        assert (request["state"], request["rows"]) == ("approved", 1)
        assert world.number not in r.body.decode()

    return world.case(world.client(role), "POST", "/export-requests",
                      {"purpose": "payment_record", "ids": [world.subject["id"]]},
                      snapshot=lambda: _every_request(world), followup=approved_at_once)


def list_requests(world: World, role: str | None) -> Case:
    def own_or_all(r: Response) -> None:
        if role == "MU":
            assert {x["requested_by"] for x in r.json["requests"]} <= {world.mu.username}

    return world.case(world.client(role), "GET", "/export-requests", query={"limit": 20},
                      followup=own_or_all)


def get_request(world: World, role: str | None) -> Case:
    request_id = _prepared(world) if role else NOBODY_S_REQUEST

    def that_one(r: Response) -> None:
        assert [x["id"] for x in r.json["requests"]] == [request_id]

    return world.case(world.client(role), "GET", f"/export-requests/{request_id}",
                      followup=that_one)


def decide(world: World, role: str | None) -> Case:
    request_id = _pending(world) if role else NOBODY_S_REQUEST

    def approved(r: Response) -> None:
        assert r.json["request"]["state"] == "approved"

    return world.case(world.client(role), "POST", f"/export-requests/{request_id}/decision",
                      {"decision": "approve"},
                      snapshot=_state(world, request_id) if role else lambda: None,
                      followup=approved)


def download(world: World, role: str | None) -> Case:
    request_id = _prepared(world) if role else NOBODY_S_REQUEST

    def taken(r: Response) -> None:
        assert r.headers["x-kura-rows"] == "1"
        assert world.number in r.body.decode("cp932")
        assert _state(world, request_id)() == "downloaded"

    return world.case(world.client(role), "POST", f"/export-requests/{request_id}/download",
                      snapshot=_state(world, request_id) if role else lambda: None,
                      followup=taken)


EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/export-requests"): ROLES_MU,
    ("GET", "/export-requests"): ROLES_MU_MA,
    ("GET", "/export-requests/{id}"): ROLES_MU_MA,
    ("POST", "/export-requests/{id}/decision"): ROLES_MA,
    ("POST", "/export-requests/{id}/download"): ROLES_MU,
}
BUILDERS: dict[tuple[str, str], Callable[[World, str | None], Any]] = {
    ("POST", "/export-requests"): prepare,
    ("GET", "/export-requests"): list_requests,
    ("GET", "/export-requests/{id}"): get_request,
    ("POST", "/export-requests/{id}/decision"): decide,
    ("POST", "/export-requests/{id}/download"): download,
}
