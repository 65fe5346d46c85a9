"""Disposal against the shared appliance (real vault, console and PostgreSQL):
subjects whose retention event is past appear in the due list with the
right dates, an MU proposes a batch, an MA other than the proposer approves
it, the subjects' keys and rows are gone, a disposal record is kept, the
audit log holds counts and never a number or a name, and the SA's rules
move the due dates."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from kura import config
from kura.core.disposal import RetentionRule, tokyo_date
from kura.devserver import LocalAppliance
from kura.vault.service import Vault
from kura.vault.store import Store
from tests.support import Api, my_numbers

NUMBERS = my_numbers(12, seed=4505)
TODAY = tokyo_date(datetime.now(UTC)).isoformat()


def owner_sql(appliance: LocalAppliance, sql: str, *params: Any) -> Any:
    """The first column of the first row, straight from the database (as its owner)."""
    with psycopg.connect(appliance.cluster.dsn("kura_owner")) as conn:
        row = conn.execute(sql.encode(), params).fetchone()
    return row[0] if row else None


@dataclass
class Cast:
    """The subjects this module registers, by role in the story."""

    subjects: dict[str, dict[str, Any]] = field(default_factory=dict)
    numbers: dict[str, str] = field(default_factory=dict)

    def id(self, key: str) -> str:
        return str(self.subjects[key]["id"])


def register(mu: Api, cast: Cast, key: str, body: dict[str, Any]) -> None:
    number = NUMBERS[len(cast.numbers)]
    r = mu.post("/subjects", {**body, "number": number})
    assert r.status == 201, r.body
    cast.subjects[key] = r.json["subject"]
    cast.numbers[key] = number


def set_event(ma: Api, subject_id: str, event: str | None) -> dict[str, Any]:
    r = ma.patch(f"/subjects/{subject_id}", {"retention_event": event})
    assert r.status == 200, r.body
    subject: dict[str, Any] = r.json["subject"]
    return subject


def due_list(client: Api, **query: Any) -> dict[str, dict[str, Any]]:
    r = client.get("/disposals/due", query=query or None)
    assert r.status == 200, r.body
    return {s["id"]: s for s in r.json["subjects"]}


@pytest.fixture(scope="module")
def cast(users: dict[str, Api]) -> Iterator[Cast]:
    mu, ma = users["MU"], users["MA"]
    c = Cast()
    register(mu, c, "employee", {"kind": "employee", "code": "DSP-E1", "name": "廃棄 一郎"})
    register(mu, c, "child", {"kind": "dependent", "code": "DSP-E1-1", "name": "廃棄 花子",
                              "employee_code": "DSP-E1"})
    register(mu, c, "payee", {"kind": "payee", "code": "DSP-P1", "name": "支払 廃棄"})
    register(mu, c, "contractor", {"kind": "payee", "code": "DSP-P2", "name": "契約 終子",
                                   "retention_basis": "contract"})
    register(mu, c, "own", {"kind": "payee", "code": "DSP-P3", "name": "自己 申請"})
    register(mu, c, "staying", {"kind": "employee", "code": "DSP-E2", "name": "在籍 続"})
    register(mu, c, "recent", {"kind": "payee", "code": "DSP-P4", "name": "最近 支払",
                               "retention_basis": "contract"})
    # The events: left in 2016 (employment: due 2024-01-11), last paid in
    # 2018 (due 2025-05-01), a contract that ended in 2010 (due 2017-01-01).
    set_event(ma, c.id("employee"), "2016-03-31")
    set_event(ma, c.id("payee"), "2018-05-01")
    set_event(ma, c.id("contractor"), "2010-01-01")
    set_event(ma, c.id("own"), "2012-07-07")
    set_event(ma, c.id("recent"), "2015-06-30")
    yield c


def test_subjects_carry_their_disposal_date(users: dict[str, Api], cast: Cast) -> None:
    r = users["MA"].get(f"/subjects/{cast.id('employee')}")
    subject = r.json["subject"]
    assert subject["retention_event"] == "2016-03-31"
    assert subject["disposal_due"] == "2024-01-11"
    assert subject["retention_rule"]["basis"] == "employment"
    assert subject["retention_rule"]["anchor"] == "jan11_next_year"
    assert subject["retention_rule"]["ja"] == "退職"
    staying = users["MU"].get(f"/subjects/{cast.id('staying')}").json["subject"]
    assert staying["disposal_due"] is None


def test_the_due_list(users: dict[str, Api], cast: Cast) -> None:
    r = users["MU"].get("/disposals/due")
    assert r.status == 200
    assert r.json["as_of"] == TODAY
    due = {s["id"]: s for s in r.json["subjects"]}
    employee = due[cast.id("employee")]
    assert (employee["kind"], employee["code"], employee["name"]) == ("employee", "DSP-E1",
                                                                       "廃棄 一郎")
    assert (employee["basis"], employee["event"], employee["due"]) == (
        "employment", "2016-03-31", "2024-01-11")
    # The dependent has no event of its own: it is due with its employee.
    child = due[cast.id("child")]
    assert child["with_employee"] and child["due"] == "2024-01-11"
    assert child["employee_code"] == "DSP-E1"
    assert due[cast.id("payee")]["due"] == "2025-05-01"
    assert due[cast.id("contractor")]["due"] == "2017-01-01"
    assert cast.id("staying") not in due
    # Never a number.
    for number in cast.numbers.values():
        assert number not in r.body.decode()
    # As of an earlier day, only what was due then.
    then = due_list(users["MA"], as_of="2024-01-10")
    assert cast.id("contractor") in then
    assert cast.id("employee") not in then and cast.id("child") not in then
    assert cast.id("payee") not in then
    assert cast.id("employee") in due_list(users["MA"], as_of="2024-01-11")
    assert cast.id("contractor") in due_list(users["MA"], as_of="2017-01-01")
    assert cast.id("contractor") not in due_list(users["MA"], as_of="2016-12-31")
    bad = users["MA"].get("/disposals/due", query={"as_of": "2024-02-30"})
    assert bad.status == 400 and bad.error_code == "bad_request"


def test_an_ma_cannot_approve_their_own_proposal(users: dict[str, Api], cast: Cast) -> None:
    ma, sa = users["MA"], users["SA"]
    r = ma.post("/disposals", {"subject_ids": [cast.id("own")]})
    assert r.status == 200, r.body
    batch = r.json["batch"]
    assert (batch["state"], batch["proposed_by"], batch["subject_count"]) == (
        "proposed", ma.username, 1)
    refused = ma.post(f"/disposals/{batch['id']}/decision", {"decision": "approve"})
    assert refused.status == 403 and refused.error_code == "own_proposal"
    assert ma.get(f"/subjects/{cast.id('own')}").status == 200
    denials = sa.get("/audit", query={"action": "disposal.decide", "actor": ma.username}).json
    assert any(e["outcome"] == "denied" and e["target"] == batch["id"]
               and e["detail"]["reason"] == "own_proposal" for e in denials["entries"])
    # The same subject cannot be in two batches waiting at once.
    again = users["MU"].post("/disposals", {"subject_ids": [cast.id("own")]})
    assert again.status == 409 and again.error_code == "already_proposed"
    # The proposer may withdraw it, with a reason.
    no_reason = ma.post(f"/disposals/{batch['id']}/decision", {"decision": "reject"})
    assert no_reason.status == 400
    withdrawn = ma.post(f"/disposals/{batch['id']}/decision",
                        {"decision": "reject", "reason": "申請の誤り"})
    assert withdrawn.status == 200, withdrawn.body
    assert withdrawn.json["batch"]["state"] == "rejected"
    assert withdrawn.json["records"] == []
    assert ma.get(f"/subjects/{cast.id('own')}").status == 200


def test_only_due_subjects_can_be_proposed(users: dict[str, Api], cast: Cast) -> None:
    r = users["MU"].post("/disposals", {"subject_ids": [cast.id("payee"), cast.id("staying")]})
    assert r.status == 409 and r.error_code == "not_due"
    gone = users["MU"].post("/disposals", {"subject_ids": [str(uuid.UUID(int=0, version=4))]})
    assert gone.status == 404
    for bad in ("-" * 36, "0" * 36):
        r = users["MU"].post("/disposals", {"subject_ids": [bad]})
        assert r.status == 400 and r.error_code == "bad_request", r.body
        r = users["MA"].post(f"/disposals/{bad}/decision", {"decision": "approve"})
        assert r.status == 400 and r.error_code == "bad_request", r.body


def test_propose_approve_and_the_record(
    users: dict[str, Api], cast: Cast, appliance: LocalAppliance
) -> None:
    mu, ma, sa = users["MU"], users["MA"], users["SA"]
    ids = {k: cast.id(k) for k in ("employee", "child", "payee", "contractor")}
    id_list = list(ids.values())
    # A document image kept with the employee goes with it.
    owner_sql(appliance, "INSERT INTO documents (id, subject_id, kind, content_type, size,"
              " kek_version, wrapped_key, content_ct) SELECT gen_random_uuid(), %s, 'number',"
              " 'image/png', 3, max(version), '\\x00', '\\x01' FROM keyring RETURNING id",
              ids["employee"])
    ciphertexts = owner_sql(appliance, "SELECT array_agg(number_ct) || array_agg(wrapped_key)"
                            " FROM subjects WHERE id = ANY(%s::uuid[])", id_list)
    assert len(ciphertexts) == 8

    # The MU proposes the employee and the payees; the dependent comes along.
    r = mu.post("/disposals", {"subject_ids": [ids["employee"], ids["payee"],
                                               ids["contractor"]]})
    assert r.status == 200, r.body
    batch = r.json["batch"]
    assert batch["subject_count"] == 4
    assert batch["counts"] == {"employee": 1, "dependent": 1, "payee": 2}
    listed = {b["id"]: b for b in ma.get("/disposals", query={"state": "proposed"}).json["batches"]}
    assert {s["id"] for s in listed[batch["id"]]["subjects"]} == set(ids.values())
    # The SA sees the batch and its counts, not who is in it.
    seen_by_sa = sa.get("/disposals").json["batches"]
    assert "subjects" not in next(b for b in seen_by_sa if b["id"] == batch["id"])

    r = ma.post(f"/disposals/{batch['id']}/decision", {"decision": "approve"})
    assert r.status == 200, r.body
    assert r.json["batch"]["state"] == "approved"
    assert r.json["batch"]["decided_by"] == ma.username
    lines = {(x["kind"], x["basis"]): x for x in r.json["records"]}
    assert {k: x["count"] for k, x in lines.items()} == {
        ("employee", "employment"): 1,
        ("dependent", "employment"): 1,
        ("payee", "last_payment"): 1,
        ("payee", "contract"): 1,
        ("documents", "employment"): 1,
    }
    for line in lines.values():
        assert (line["method"], line["operator"], line["approver"]) == (
            "crypto_shred", mu.username, ma.username)

    # Gone: by id, by number, from the tables, keys and ciphertexts alike.
    for subject_id in ids.values():
        assert ma.get(f"/subjects/{subject_id}").status == 404
    for key in ("employee", "child", "payee", "contractor"):
        assert mu.post("/subjects/lookup", {"number": cast.numbers[key]}).json["subjects"] == []
    assert owner_sql(appliance, "SELECT count(*) FROM subjects WHERE id = ANY(%s::uuid[])",
                     id_list) == 0
    assert owner_sql(appliance, "SELECT count(*) FROM documents"
                     " WHERE subject_id = ANY(%s::uuid[])", id_list) == 0
    assert owner_sql(appliance, "SELECT count(*) FROM subjects WHERE number_ct = ANY(%s)"
                     " OR wrapped_key = ANY(%s)", ciphertexts, ciphertexts) == 0
    assert owner_sql(appliance, "SELECT count(*) FROM request_entries"
                     " WHERE number_ct = ANY(%s)", ciphertexts) == 0
    assert owner_sql(appliance, "SELECT cardinality(subject_ids) FROM disposal_batches"
                     " WHERE id = %s", batch["id"]) == 0
    # A decided batch stays decided.
    again = ma.post(f"/disposals/{batch['id']}/decision", {"decision": "approve"})
    assert again.status == 409 and again.error_code == "illegal_transition"

    # The record, as the SA reads it for the period.
    records = sa.get("/disposal-records", query={"since": TODAY, "until": TODAY})
    assert records.status == 200
    mine = [x for x in records.json["records"] if x["batch_id"] == batch["id"]]
    assert sorted((x["kind"], x["count"]) for x in mine) == [
        ("dependent", 1), ("documents", 1), ("employee", 1), ("payee", 1), ("payee", 1)]
    earlier = sa.get("/disposal-records", query={"until": "2020-12-31"}).json["records"]
    assert all(x["batch_id"] != batch["id"] for x in earlier)
    assert ma.get("/disposal-records").status == 200
    assert mu.get("/disposal-records").status == 403

    # The audit log: counts, never a number or a name.
    entries = sa.get("/audit", query={"action": "disposal.", "limit": 500}).json["entries"]
    decided = next(e for e in entries if e["action"] == "disposal.decide"
                   and e["target"] == batch["id"] and e["outcome"] == "ok")
    assert decided["detail"]["subjects"] == 4 and decided["detail"]["documents"] == 1
    assert decided["detail"]["by_kind"] == {"employee": 1, "dependent": 1, "payee": 2}
    text = json.dumps(entries, ensure_ascii=False)
    for key, subject in cast.subjects.items():
        assert cast.numbers[key] not in text
        assert subject["name"] not in text

    # The same number registers again, as someone new.
    again_payee = mu.post("/payees", {"code": "DSP-P1", "name": "支払 再登録",
                                      "number": cast.numbers["payee"]})
    assert again_payee.status == 201, again_payee.body
    assert again_payee.json["subject"]["id"] != ids["payee"]
    assert again_payee.json["subject"]["retention_event"] is None


def test_the_sa_changes_a_rule_and_the_due_dates_move(
    users: dict[str, Api], cast: Cast
) -> None:
    sa, ma, mu = users["SA"], users["MA"], users["MU"]
    rules = {r["basis"]: r for r in mu.get("/retention-rules").json["rules"]}
    assert rules["employment"]["anchor"] == "jan11_next_year"
    original = rules["contract"]
    recent = cast.id("recent")  # a contract that ended on 2015-06-30
    assert due_list(ma)[recent]["due"] == "2022-06-30"
    try:
        r = sa.put("/retention-rules/contract", {"keep_years": 20, "anchor": "event"})
        assert r.status == 200, r.body
        assert r.json["rule"]["keep_years"] == 20
        assert recent not in due_list(ma)
        assert ma.get(f"/subjects/{recent}").json["subject"]["disposal_due"] == "2035-06-30"
        r = sa.put("/retention-rules/contract", {"keep_years": 3, "anchor": "jan11_next_year"})
        assert r.status == 200
        assert due_list(ma)[recent]["due"] == "2019-01-11"
        # Out of range: refused, nothing changes.
        for bad in ({"keep_years": 101, "anchor": "event"}, {"keep_years": -1, "anchor": "event"},
                    {"keep_years": 7, "anchor": "someday"}):
            refused = sa.put("/retention-rules/contract", bad)
            assert refused.status == 400, refused.body
        assert sa.put("/retention-rules/nothing", {"keep_years": 1, "anchor": "event"}).status \
            == 400
        assert ma.put("/retention-rules/contract", {"keep_years": 1, "anchor": "event"}).status \
            == 403
        changes = sa.get("/audit", query={"action": "retention.set"}).json["entries"]
        assert changes[0]["outcome"] == "denied" and changes[0]["role"] == "MA"
        newest = next(e for e in changes if e["outcome"] == "ok")
        assert newest["target"] == "contract"
        assert newest["detail"] == {"old": {"keep_years": 20, "anchor": "event"},
                                    "new": {"keep_years": 3, "anchor": "jan11_next_year"}}
    finally:
        back = sa.put("/retention-rules/contract", {"keep_years": original["keep_years"],
                                                    "anchor": original["anchor"]})
        assert back.status == 200
    assert due_list(ma)[recent]["due"] == "2022-06-30"


def test_a_vault_reads_the_stored_rules_when_it_opens(
    appliance: LocalAppliance, users: dict[str, Api]
) -> None:
    # A subject's summary gives its disposal date from the rules in the
    # vault's memory: they must be the SA's, not the defaults, from the start.
    sa = users["SA"]
    before = {r["basis"]: r for r in sa.get("/retention-rules").json["rules"]}["last_payment"]

    async def opened() -> tuple[Mapping[str, RetentionRule], Mapping[str, RetentionRule]]:
        cfg = config.load(appliance.config_path)
        store = Store(cfg.database.dsn, 1, 2)
        await store.open()
        try:
            vault = Vault(cfg, store)
            defaults = vault.retention_rules
            await vault.start()  # the host seal opens by itself
            assert not vault.sealed
            return defaults, vault.retention_rules
        finally:
            await store.close()

    r = sa.put("/retention-rules/last_payment", {"keep_years": 9, "anchor": "jan11_next_year"})
    assert r.status == 200, r.body
    try:
        defaults, read = asyncio.run(opened())
    finally:
        back = sa.put("/retention-rules/last_payment",
                      {"keep_years": before["keep_years"], "anchor": before["anchor"]})
        assert back.status == 200
    assert defaults["last_payment"].keep_years == 7
    assert (read["last_payment"].keep_years, read["last_payment"].anchor) == (9, "jan11_next_year")
