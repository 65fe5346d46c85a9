"""Role-matrix rows for registration requests (see tests/role_cases/__init__.py).

From DESIGN.md: MU and MA create requests, list them, reissue and cancel
them; only an MA reads what an employee entered (numbers and documents) and
approves or rejects; SA and DA see none of it. The employee's two routes are
public: the one-time token in the body is the credential, whoever calls."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support import Response
    from tests.test_role_matrix import Case, World

ROLES_MU, ROLES_MA = frozenset({"MU"}), frozenset({"MA"})
ROLES_MU_MA = ROLES_MU | ROLES_MA
EVERYONE = frozenset({"MU", "MA", "SA", "DA"})

# The routes that need no session (tests/test_role_matrix.py's PUBLIC should take these).
PUBLIC = frozenset({("POST", "/registration/open"), ("POST", "/registration/submit")})

EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/requests"): ROLES_MU_MA,
    ("GET", "/requests"): ROLES_MU_MA,
    ("GET", "/requests/{id}"): ROLES_MA,
    ("GET", "/requests/{id}/documents/{document_id}"): ROLES_MA,
    ("POST", "/requests/{id}/approve"): ROLES_MA,
    ("POST", "/requests/{id}/reject"): ROLES_MA,
    ("POST", "/requests/{id}/reissue"): ROLES_MU_MA,
    ("POST", "/requests/{id}/cancel"): ROLES_MU_MA,
    ("POST", "/registration/open"): EVERYONE,
    ("POST", "/registration/submit"): EVERYONE,
}

# A PNG's signature and header chunk, then a body: a document by its content.
_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + b"\x00" * 64
_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x11" * 64 + b"\xff\xd9"


def _create(world: World) -> tuple[dict[str, Any], str]:
    r = world.mu.post(
        "/requests",
        {
            "name": "行列 依頼",
            "employee_code": world.unique("RM-Q"),
            "purposes": ["withholding_slip", "salary_report"],
        },
    )
    assert r.status == 200, r.body
    return r.json["request"], r.json["token"]


def _submission(world: World, token: str) -> dict[str, Any]:
    return {
        "token": token,
        "entries": [{"relation": "self", "number": world.new_number()}],
        "documents": [
            {"kind": "number", "content": base64.b64encode(_PNG).decode()},
            {"kind": "identity", "content": base64.b64encode(_JPEG).decode()},
        ],
    }


def _submitted(world: World) -> dict[str, Any]:
    request, token = _create(world)
    r = world.anon.post("/registration/submit", _submission(world, token))
    assert r.status == 200, r.body
    return request


def _state(world: World, request_id: str) -> Callable[[], tuple[str, int, str]]:
    def seen() -> tuple[str, int, str]:
        r = world.mu.get("/requests", query={"id": request_id})
        assert r.status == 200 and len(r.json["requests"]) == 1, r.body
        found = r.json["requests"][0]
        return found["state"], found["links_issued"], found["reason"]

    return seen


def create(world: World, role: str | None) -> Case:
    code = world.unique("RM-Q")

    def codes() -> set[str]:
        r = world.mu.get("/requests", query={"state": "open", "limit": 500})
        assert r.status == 200, r.body
        return {x["employee_code"] for x in r.json["requests"]}

    def created(r: Response) -> None:
        assert r.json["token"] and code in codes()

    return world.case(
        world.client(role),
        "POST",
        "/requests",
        {"name": "行列 作成", "employee_code": code, "purposes": ["salary_report"]},
        snapshot=codes,
        followup=created,
    )


def list_requests(world: World, role: str | None) -> Case:
    request, _ = _create(world)

    def listed(r: Response) -> None:
        assert request["id"] in {x["id"] for x in r.json["requests"]}

    return world.case(world.client(role), "GET", "/requests", followup=listed)


def get_request(world: World, role: str | None) -> Case:
    request = _submitted(world)

    def with_entries(r: Response) -> None:
        assert len(r.json["entries"]) == 1 and len(r.json["documents"]) == 2

    return world.case(
        world.client(role), "GET", f"/requests/{request['id']}", followup=with_entries
    )


def get_document(world: World, role: str | None) -> Case:
    request = _submitted(world)
    r = world.users["MA"].get(f"/requests/{request['id']}")
    assert r.status == 200, r.body
    doc = next(d for d in r.json["documents"] if d["kind"] == "number")

    def content(r: Response) -> None:
        assert base64.b64decode(r.json["content"]) == _PNG
        assert r.json["content_type"] == "image/png"

    return world.case(
        world.client(role),
        "GET",
        f"/requests/{request['id']}/documents/{doc['id']}",
        followup=content,
    )


def approve(world: World, role: str | None) -> Case:
    request = _submitted(world)

    def approved(r: Response) -> None:
        assert r.json["request"]["state"] == "approved" and r.json["subject_id"]

    return world.case(
        world.client(role),
        "POST",
        f"/requests/{request['id']}/approve",
        snapshot=_state(world, request["id"]),
        followup=approved,
    )


def reject(world: World, role: str | None) -> Case:
    request = _submitted(world)

    def rejected(r: Response) -> None:
        assert r.json["request"]["state"] == "rejected"

    return world.case(
        world.client(role),
        "POST",
        f"/requests/{request['id']}/reject",
        {"reason": "書類が読めません"},
        snapshot=_state(world, request["id"]),
        followup=rejected,
    )


def reissue(world: World, role: str | None) -> Case:
    request = _submitted(world)
    r = world.users["MA"].post(f"/requests/{request['id']}/reject", {"reason": "再提出"})
    assert r.status == 200, r.body

    def reissued(r: Response) -> None:
        assert r.json["request"]["state"] == "open" and r.json["token"]

    return world.case(
        world.client(role),
        "POST",
        f"/requests/{request['id']}/reissue",
        {},
        snapshot=_state(world, request["id"]),
        followup=reissued,
    )


def cancel(world: World, role: str | None) -> Case:
    request, token = _create(world)

    def cancelled(r: Response) -> None:
        assert world.anon.post("/registration/open", {"token": token}).status == 404

    return world.case(
        world.client(role),
        "POST",
        f"/requests/{request['id']}/cancel",
        snapshot=_state(world, request["id"]),
        followup=cancelled,
    )


def open_link(world: World, role: str | None) -> Case:
    _, token = _create(world)

    def opened(r: Response) -> None:
        assert r.json["name"] == "行列 依頼"

    return world.case(
        world.client(role), "POST", "/registration/open", {"token": token}, followup=opened
    )


def submit_link(world: World, role: str | None) -> Case:
    request, token = _create(world)

    def submitted(r: Response) -> None:
        assert r.json["state"] == "submitted"
        assert _state(world, request["id"])()[0] == "submitted"

    return world.case(
        world.client(role),
        "POST",
        "/registration/submit",
        _submission(world, token),
        followup=submitted,
    )


BUILDERS: dict[tuple[str, str], Callable[[World, str | None], Any]] = {
    ("POST", "/requests"): create,
    ("GET", "/requests"): list_requests,
    ("GET", "/requests/{id}"): get_request,
    ("GET", "/requests/{id}/documents/{document_id}"): get_document,
    ("POST", "/requests/{id}/approve"): approve,
    ("POST", "/requests/{id}/reject"): reject,
    ("POST", "/requests/{id}/reissue"): reissue,
    ("POST", "/requests/{id}/cancel"): cancel,
    ("POST", "/registration/open"): open_link,
    ("POST", "/registration/submit"): submit_link,
}
