"""Role-matrix rows for retention and disposal (see tests/role_cases/__init__.py).

From DESIGN.md: the MU and MA see what is due and propose disposals, only an
MA approves one (kura.core.roles also keeps the proposer from approving it:
tests/test_disposal.py), the SA owns the retention rules and reads the
batches and the disposal records, and everyone who handles numbers reads the
rules. The SA never sees who is in a batch, and the DA nothing of this."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support import Api, Response
    from tests.test_role_matrix import Case, World

ROLES_MU, ROLES_MA = frozenset({"MU"}), frozenset({"MA"})
MU_MA = frozenset({"MU", "MA"})
MA_SA = frozenset({"MA", "SA"})
MU_MA_SA = frozenset({"MU", "MA", "SA"})
LONG_AGO = "2000-01-31"  # a retention event every rule has left behind


def _due_payee(world: World, name: str) -> dict[str, Any]:
    """A new payee whose last payment was long ago: due for disposal today."""
    subject, _ = world.register(name)
    r = world.users["MA"].patch(f"/subjects/{subject['id']}", {"retention_event": LONG_AGO})
    assert r.status == 200, r.body
    return subject


def _proposed(world: World, subject_id: str) -> list[str]:
    """The ids of the batches waiting for a decision that hold ``subject_id``."""
    r = world.users["MA"].get("/disposals", query={"state": "proposed", "limit": 500})
    assert r.status == 200, r.body
    return sorted(b["id"] for b in r.json["batches"]
                  if subject_id in {s["id"] for s in b.get("subjects", [])})


def _withdraw(world: World, batch_id: str) -> None:
    r = world.users["MA"].post(f"/disposals/{batch_id}/decision",
                               {"decision": "reject", "reason": "行列テストの後始末"})
    assert r.status in (200, 409), r.body


def _rules(world: World) -> Any:
    r = world.sa.get("/retention-rules")
    assert r.status == 200, r.body
    return r.json["rules"]


def list_rules(world: World, role: str | None) -> Case:
    def listed(r: Response) -> None:
        rules = {x["basis"]: x for x in r.json["rules"]}
        assert rules["employment"]["anchor"] == "jan11_next_year"

    return world.case(world.client(role), "GET", "/retention-rules", followup=listed)


def set_rule(world: World, role: str | None) -> Case:
    before = {x["basis"]: x for x in _rules(world)}["last_payment"]
    changed = {"keep_years": before["keep_years"] + 1, "anchor": before["anchor"]}

    def took_effect(r: Response) -> None:
        assert r.json["rule"]["keep_years"] == changed["keep_years"]

    def put_back(r: Response) -> None:
        if r.status == 200:
            back = world.sa.put("/retention-rules/last_payment",
                                {"keep_years": before["keep_years"], "anchor": before["anchor"]})
            assert back.status == 200, back.body

    return world.case(world.client(role), "PUT", "/retention-rules/last_payment", changed,
                      snapshot=lambda: _rules(world), cleanup=put_back, followup=took_effect)


def due(world: World, role: str | None) -> Case:
    subject = _due_payee(world, "期限 到来") if role in MU_MA else {"id": ""}

    def listed(r: Response) -> None:
        assert subject["id"] in {s["id"] for s in r.json["subjects"]}

    return world.case(world.client(role), "GET", "/disposals/due", followup=listed)


def propose(world: World, role: str | None) -> Case:
    subject = _due_payee(world, "廃棄 申請")

    def proposed(r: Response) -> None:
        assert r.json["batch"]["state"] == "proposed"
        assert _proposed(world, subject["id"]) == [r.json["batch"]["id"]]

    def withdraw(r: Response) -> None:
        for batch_id in _proposed(world, subject["id"]):
            _withdraw(world, batch_id)

    return world.case(world.client(role), "POST", "/disposals", {"subject_ids": [subject["id"]]},
                      snapshot=lambda: _proposed(world, subject["id"]), cleanup=withdraw,
                      followup=proposed)


def list_batches(world: World, role: str | None) -> Case:
    def listed(r: Response) -> None:
        assert isinstance(r.json["batches"], list)
        if role == "SA":
            assert all("subjects" not in b for b in r.json["batches"])

    return world.case(world.client(role), "GET", "/disposals", followup=listed)


def decide(world: World, role: str | None) -> Case:
    subject = _due_payee(world, "廃棄 承認")
    mu: Api = world.mu
    r = mu.post("/disposals", {"subject_ids": [subject["id"]]})
    assert r.status == 200, r.body
    batch_id = r.json["batch"]["id"]

    def state() -> object:
        return _proposed(world, subject["id"]), world.users["MA"].get(
            f"/subjects/{subject['id']}").status

    def disposed(r: Response) -> None:
        assert r.json["batch"]["state"] == "approved"
        assert world.users["MA"].get(f"/subjects/{subject['id']}").status == 404
        assert [x["count"] for x in r.json["records"]] == [1]

    def withdraw(r: Response) -> None:
        if r.status != 200:
            _withdraw(world, batch_id)

    return world.case(world.client(role), "POST", f"/disposals/{batch_id}/decision",
                      {"decision": "approve"}, snapshot=state, cleanup=withdraw,
                      followup=disposed)


def records(world: World, role: str | None) -> Case:
    def listed(r: Response) -> None:
        assert all(x["method"] == "crypto_shred" for x in r.json["records"])

    return world.case(world.client(role), "GET", "/disposal-records", followup=listed)


EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/retention-rules"): MU_MA_SA,
    ("PUT", "/retention-rules/{basis}"): frozenset({"SA"}),
    ("GET", "/disposals/due"): MU_MA,
    ("POST", "/disposals"): MU_MA,
    ("GET", "/disposals"): MU_MA_SA,
    ("POST", "/disposals/{id}/decision"): ROLES_MA,
    ("GET", "/disposal-records"): MA_SA,
}
BUILDERS: dict[tuple[str, str], Callable[[World, str | None], Any]] = {
    ("GET", "/retention-rules"): list_rules,
    ("PUT", "/retention-rules/{basis}"): set_rule,
    ("GET", "/disposals/due"): due,
    ("POST", "/disposals"): propose,
    ("GET", "/disposals"): list_batches,
    ("POST", "/disposals/{id}/decision"): decide,
    ("GET", "/disposal-records"): records,
}
