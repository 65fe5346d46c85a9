"""Exports for forms and their approval: the pure rules (state machine,
JIS X 0208, the tax year) and the whole flow through the JSON API against
the real console, vault and PostgreSQL — prepared, approved at once or by an
MA, downloaded once, logged as a take-out with its row count and SHA-256."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from kura.core import exports
from kura.core.errors import BadRequest
from tests.support import Api, approve, approver_for, my_numbers, provision

THRESHOLD = 100  # the default policy's export_approval_threshold
YEAR = datetime.now(exports.TOKYO).year

# --- the pure core -----------------------------------------------------------------


def test_the_transition_table_is_the_whole_state_machine() -> None:
    S, E = exports.State, exports.Event
    assert exports.transition(S.PENDING, E.APPROVE) is S.APPROVED
    assert exports.transition(S.PENDING, E.REJECT) is S.REJECTED
    assert exports.transition(S.PENDING, E.CANCEL) is S.CANCELLED
    assert exports.transition(S.APPROVED, E.DOWNLOAD) is S.DOWNLOADED
    legal = set(exports.TRANSITIONS)
    for state in S:
        for event in E:
            if (state, event) in legal:
                continue
            with pytest.raises(exports.IllegalTransition) as refused:
                exports.transition(state, event)
            assert refused.value.detail == {"state": state.value, "event": event.value}
    with pytest.raises(exports.IllegalTransition, match="already downloaded"):
        exports.transition("downloaded", "download")
    with pytest.raises(exports.IllegalTransition, match="waiting for an MA"):
        exports.transition("pending", "download")


def test_at_or_under_the_threshold_is_approved_at_once() -> None:
    assert exports.initial_state(0, 0) is exports.State.APPROVED
    assert exports.initial_state(100, 100) is exports.State.APPROVED
    assert exports.initial_state(101, 100) is exports.State.PENDING
    assert exports.initial_state(1, 0) is exports.State.PENDING


def test_characters_outside_jis_x_0208_are_named() -> None:
    problem = exports.character_problem
    assert problem("髙") == exports.OUTSIDE_JIS  # IBM extension in cp932
    assert problem("①") == exports.OUTSIDE_JIS  # NEC row 13
    assert problem("﨑") == exports.OUTSIDE_JIS  # NEC-selected IBM extension
    assert problem("𠮷") == exports.UNENCODABLE  # not in cp932 at all
    assert [problem(c) for c in "高橋ヤマダｱA-ー　"] == [None] * 10
    assert exports.text_problems("髙橋 𠮷男 髙", "shift_jis") == {
        exports.OUTSIDE_JIS: "髙", exports.UNENCODABLE: "𠮷"}
    assert exports.text_problems("髙橋 𠮷男", "utf-8-bom") == {}


def _candidate(code: str, name: str, purposes: tuple[str, ...] = ("payment_record",),
               created: datetime | None = None, event: date | None = None) -> exports.Candidate:
    return exports.Candidate(id=f"id-{code}", kind="payee", code=code, name=name,
                             name_kana="", purposes=purposes,
                             created_at=created or datetime(2025, 6, 1, tzinfo=UTC),
                             retention_event=event)


def test_selection_skips_purposes_and_reports_characters_never_numbers() -> None:
    chosen = exports.select(
        [_candidate("A", "高橋 一郎"), _candidate("B", "髙橋 二郎"),
         _candidate("C", "𠮷田 三郎"), _candidate("D", "山田 四郎", ("withholding_slip",))],
        "payment_record", "shift_jis")
    assert chosen.included == ("id-A",)
    assert chosen.skipped_purpose == ("id-D",)
    assert chosen.unencodable == ("id-B", "id-C")
    assert [i.to_json() for i in chosen.issues] == [
        {"kind": "payee", "code": "B", "problem": "outside_jis_x_0208", "field": "name",
         "characters": "髙"},
        {"kind": "payee", "code": "C", "problem": "unencodable", "field": "name",
         "characters": "𠮷"},
        {"kind": "payee", "code": "D", "problem": "purpose", "field": "", "characters": ""},
    ]
    utf8 = exports.select([_candidate("B", "髙橋 二郎")], "payment_record", "utf-8-bom")
    assert utf8.included == ("id-B",) and utf8.issues == ()


def test_the_tax_year_keeps_subjects_on_the_books_that_year() -> None:
    # Registered 1 January 2025 00:30 in Tokyo (still 2024 in UTC): in 2025, not in 2024.
    new_year = datetime(2024, 12, 31, 15, 30, tzinfo=UTC)
    assert exports.active_in(2025, new_year, None)
    assert not exports.active_in(2024, new_year, None)
    # Left on 31 December 2025: still in 2025's forms, gone from 2026's.
    assert exports.active_in(2025, new_year, date(2025, 12, 31))
    assert not exports.active_in(2026, new_year, date(2025, 12, 31))
    chosen = exports.select([_candidate("A", "甲"), _candidate("B", "乙", event=date(2024, 3, 1))],
                            "payment_record", "shift_jis", 2025)
    assert chosen.included == ("id-A",) and chosen.issues == ()


def test_a_rejection_needs_a_reason_without_a_number_in_it() -> None:
    assert exports.clean_reason(exports.Event.APPROVE, "") == ""
    assert exports.clean_reason(exports.Event.REJECT, " 対象が多すぎます ") == "対象が多すぎます"
    with pytest.raises(BadRequest):
        exports.clean_reason(exports.Event.REJECT, "  ")
    with pytest.raises(BadRequest):
        exports.clean_reason(exports.Event.REJECT, "番号 1234 5678 9018 が違う")


def test_file_names_and_the_default_tax_year() -> None:
    assert exports.filename("withholding_slip", 2026, "abcdef0123456789") == (
        "kura-withholding_slip-2026-abcdef01.csv")
    assert exports.filename("payment_record", None, "fedcba98") == (
        "kura-payment_record-all-fedcba98.csv")
    assert exports.default_tax_year(date(2027, 1, 20)) == 2026
    assert exports.default_tax_year(date(2026, 11, 26)) == 2026


# --- through the API -----------------------------------------------------------------


def import_payees(mu: Api, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Register payees; returns their subjects (masked) in the order given."""
    r = mu.post("/subjects/import", {"rows": [{"kind": "payee", **row} for row in rows]})
    assert r.status == 200, r.body
    assert r.json["created"] + r.json["existing"] == len(rows), r.json["rejected"]
    found = []
    for row in rows:
        listed = mu.get("/subjects", query={"query": row["code"], "kind": "payee"})
        [subject] = [s for s in listed.json["subjects"] if s["code"] == row["code"]]
        found.append(subject)
    return found


@pytest.fixture(scope="module")
def bulk(users: dict[str, Api]) -> list[str]:
    """One more payee than the threshold allows without an MA: their ids."""
    numbers = my_numbers(THRESHOLD + 1, seed=4401)
    rows = [{"code": f"EXPB-{i:03d}", "name": f"持出 {i}", "name_kana": "モチダシ",
             "number": n} for i, n in enumerate(numbers)]
    r = users["MU"].post("/subjects/import", {"rows": [{"kind": "payee", **row} for row in rows]})
    assert r.status == 200 and r.json["created"] == len(rows), r.body
    listed = users["MU"].get("/subjects", query={"query": "EXPB-", "limit": 500})
    ids = [s["id"] for s in listed.json["subjects"]]
    assert len(ids) == THRESHOLD + 1
    return ids


def prepare(mu: Api, body: dict[str, Any]) -> dict[str, Any]:
    r = mu.post("/export-requests", body)
    assert r.status == 201, r.body
    request: dict[str, Any] = r.json["request"]
    return request


def csv_rows(body: bytes, encoding: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode(encoding))))


def audit(sa: Api, action: str, target: str) -> list[dict[str, Any]]:
    r = sa.get("/audit", query={"action": action, "limit": 500})
    assert r.status == 200, r.body
    return [e for e in r.json["entries"] if e["action"] == action and e["target"] == target]


def test_under_the_threshold_it_is_approved_at_once_and_downloaded_once(
    users: dict[str, Api],
) -> None:
    mu, sa = users["MU"], users["SA"]
    numbers = my_numbers(3, seed=4402)
    subjects = import_payees(mu, [{"code": f"EXPS-{i}", "name": f"小口 {i}", "number": n}
                                  for i, n in enumerate(numbers)])
    request = prepare(mu, {"purpose": "payment_record", "ids": [s["id"] for s in subjects],
                           "tax_year": YEAR})
    assert (request["state"], request["rows"], request["threshold"]) == ("approved", 3, THRESHOLD)
    assert request["encoding"] == "shift_jis" and request["report"] == []

    taken = mu.post(f"/export-requests/{request['id']}/download")
    assert taken.status == 200, taken.body
    assert taken.headers["content-type"] == "text/csv; charset=Shift_JIS"
    assert taken.headers["x-kura-rows"] == "3"
    digest = hashlib.sha256(taken.body).hexdigest()
    assert taken.headers["x-kura-sha256"] == digest
    rows = csv_rows(taken.body, "cp932")
    assert rows[0] == ["種別", "コード", "氏名", "フリガナ", "個人番号"]
    assert sorted(r[4] for r in rows[1:]) == sorted(numbers)

    again = mu.post(f"/export-requests/{request['id']}/download")
    assert again.status == 409 and again.error_code == "export_state"
    assert "already downloaded" in again.json["error"]["message_en"]
    shown = mu.get(f"/export-requests/{request['id']}").json["requests"][0]
    assert (shown["state"], shown["downloaded_rows"], shown["sha256"]) == ("downloaded", 3, digest)

    # The take-out is in the audit log with its rows and hash, and no number.
    entries = audit(sa, "export.download", request["id"])
    [takeout] = [e for e in entries if e["outcome"] == "ok"]
    assert takeout["purpose"] == "payment_record"
    assert takeout["detail"]["rows"] == 3 and takeout["detail"]["sha256"] == digest
    assert takeout["detail"]["takeout"] is True
    [refused] = [e for e in entries if e["outcome"] == "denied"]
    assert refused["detail"]["reason"] == "export_state"
    everything = sa.get("/audit", query={"action": "export.", "limit": 500}).body.decode()
    assert not any(n in everything for n in numbers)


def test_over_the_threshold_it_waits_for_an_ma(users: dict[str, Api], bulk: list[str]) -> None:
    mu, ma, sa = users["MU"], users["MA"], users["SA"]
    request = prepare(mu, {"purpose": "payment_record", "ids": bulk, "encoding": "utf-8-bom"})
    assert (request["state"], request["rows"]) == ("pending", THRESHOLD + 1)
    assert request["subject_count"] == THRESHOLD + 1

    early = mu.post(f"/export-requests/{request['id']}/download")
    assert early.status == 409 and early.error_code == "export_state"
    assert "waiting for an MA" in early.json["error"]["message_en"]

    # The MA's queue puts it first; the MU sees only their own requests.
    queue = ma.get("/export-requests", query={"state": "pending"}).json["requests"]
    assert request["id"] in [r["id"] for r in queue]
    listed = ma.get("/export-requests").json["requests"]
    assert listed[0]["state"] == "pending"
    assert {r["requested_by"] for r in mu.get("/export-requests").json["requests"]} == {
        mu.username}

    approved = ma.post(f"/export-requests/{request['id']}/decision", {"decision": "approve"})
    assert approved.status == 200, approved.body
    assert approved.json["request"]["state"] == "approved"
    assert approved.json["request"]["decided_by"] == ma.username
    twice = ma.post(f"/export-requests/{request['id']}/decision", {"decision": "reject",
                                                                    "reason": "遅すぎ"})
    assert twice.status == 409 and twice.error_code == "export_state"

    taken = mu.post(f"/export-requests/{request['id']}/download")
    assert taken.status == 200, taken.body
    assert taken.body.startswith(b"\xef\xbb\xbf")
    assert taken.headers["content-type"] == "text/csv; charset=UTF-8"
    assert len(csv_rows(taken.body, "utf-8-sig")) == THRESHOLD + 2
    assert mu.post(f"/export-requests/{request['id']}/download").status == 409

    [decision] = audit(sa, "export.decide", request["id"])
    assert decision["detail"]["decision"] == "approve" and decision["actor"] == ma.username
    [takeout] = [e for e in audit(sa, "export.download", request["id"]) if e["outcome"] == "ok"]
    assert takeout["detail"]["rows"] == THRESHOLD + 1
    assert takeout["detail"]["approved_by"] == ma.username


def test_another_mu_cannot_download_it(users: dict[str, Api], admin: Api) -> None:
    mu = users["MU"]
    [subject] = import_payees(mu, [{"code": "EXPO-1", "name": "他人 一郎",
                                    "number": my_numbers(1, seed=4403)[0]}])
    request = prepare(mu, {"purpose": "payment_record", "ids": [subject["id"]]})
    other = provision(admin, "mu-exports-other", "MU")
    r = other.post(f"/export-requests/{request['id']}/download")
    assert r.status == 403 and r.error_code == "permission_denied"
    assert other.get(f"/export-requests/{request['id']}").status == 404
    assert mu.post(f"/export-requests/{request['id']}/download").status == 200


def test_an_ma_cannot_decide_their_own_request(
    users: dict[str, Api], admin: Api, bulk: list[str]
) -> None:
    # An MU prepares an export, then becomes an MA: that MA may not approve it.
    clerk = provision(admin, "mu-exports-promoted", "MU")
    request = prepare(clerk, {"purpose": "payment_record", "ids": bulk})
    assert request["state"] == "pending"
    changed = admin.patch(f"/users/{clerk.username}", {"role": "MA"})
    assert changed.status == 200, changed.body
    # A role change into MA waits for a second person (the holder keeps their password).
    decided = approve(approver_for(admin, clerk.username), changed.json["proposal"]["proposal"])
    assert decided.status == 200 and decided.json["half_b"] is None, decided.body
    promoted = clerk.sign_in(clerk.username, clerk.password, clerk.totp_secret)
    own = promoted.post(f"/export-requests/{request['id']}/decision", {"decision": "approve"})
    assert own.status == 403 and own.error_code == "own_request"
    assert promoted.get(f"/export-requests/{request['id']}").json["requests"][0]["state"] == (
        "pending")
    [denied] = audit(users["SA"], "export.decide", request["id"])
    assert denied["outcome"] == "denied" and denied["detail"]["reason"] == "own_request"
    # Another MA may.
    rejected = users["MA"].post(f"/export-requests/{request['id']}/decision",
                                {"decision": "reject", "reason": "範囲が広すぎます"})
    assert rejected.status == 200


def test_a_rejection_carries_its_reason(users: dict[str, Api], bulk: list[str]) -> None:
    mu, ma = users["MU"], users["MA"]
    request = prepare(mu, {"purpose": "payment_record", "ids": bulk, "tax_year": YEAR})
    path = f"/export-requests/{request['id']}/decision"
    no_reason = ma.post(path, {"decision": "reject"})
    assert no_reason.status == 400 and no_reason.json["error"]["detail"]["field"] == "reason"
    rejected = ma.post(path, {"decision": "reject", "reason": "対象年の確認が必要です"})
    assert rejected.status == 200, rejected.body
    shown = mu.get(f"/export-requests/{request['id']}").json["requests"][0]
    assert (shown["state"], shown["reason"]) == ("rejected", "対象年の確認が必要です")
    refused = mu.post(f"/export-requests/{request['id']}/download")
    assert refused.status == 409 and "rejected" in refused.json["error"]["message_en"]


def test_names_outside_jis_x_0208_are_reported_not_mangled(users: dict[str, Api]) -> None:
    mu, sa = users["MU"], users["SA"]
    numbers = my_numbers(4, seed=4404)
    names = [("高橋 一郎", "タカハシ イチロウ"), ("髙橋 二郎", "タカハシ ジロウ"),
             ("𠮷田 三郎", "ヨシダ サブロウ"), ("山﨑 四郎", "ヤマサキ シロウ")]
    subjects = import_payees(mu, [
        {"code": f"EXPJ-{i + 1}", "name": name, "name_kana": kana, "number": n}
        for i, ((name, kana), n) in enumerate(zip(names, numbers, strict=True))
    ])
    ids = [s["id"] for s in subjects]
    request = prepare(mu, {"purpose": "payment_record", "ids": ids, "encoding": "shift_jis"})
    assert request["rows"] == 1
    report = {(i["code"], i["field"], i["problem"]): i["characters"] for i in request["report"]}
    assert report == {
        ("EXPJ-2", "name", "outside_jis_x_0208"): "髙",
        ("EXPJ-3", "name", "unencodable"): "𠮷",
        ("EXPJ-4", "name", "outside_jis_x_0208"): "﨑",
    }
    assert not any(n in json.dumps(request, ensure_ascii=False) for n in numbers)
    taken = mu.post(f"/export-requests/{request['id']}/download")
    assert taken.status == 200
    # Pure JIS X 0208: Python's strict shift_jis and Windows' cp932 read the same text.
    assert taken.body.decode("shift_jis") == taken.body.decode("cp932")
    rows = csv_rows(taken.body, "shift_jis")
    assert rows[1:] == [["payee", "EXPJ-1", "高橋 一郎", "タカハシ\u3000イチロウ", numbers[0]]]
    [takeout] = [e for e in audit(sa, "export.download", request["id"]) if e["outcome"] == "ok"]
    assert takeout["detail"]["sha256"] == hashlib.sha256(taken.body).hexdigest()

    # UTF-8 with a BOM carries all four names.
    utf8 = prepare(mu, {"purpose": "payment_record", "ids": ids, "encoding": "utf-8-bom"})
    assert (utf8["rows"], utf8["report"]) == (4, [])
    body = mu.post(f"/export-requests/{utf8['id']}/download").body
    assert body.startswith(b"\xef\xbb\xbf")
    names = {r[2] for r in csv_rows(body, "utf-8-sig")[1:]}
    assert names == {"高橋 一郎", "髙橋 二郎", "𠮷田 三郎", "山﨑 四郎"}


def test_the_tax_year_and_purposes_choose_the_subjects(users: dict[str, Api]) -> None:
    mu, ma = users["MU"], users["MA"]
    numbers = my_numbers(3, seed=4405)
    subjects = import_payees(mu, [{"code": f"EXPY-{i}", "name": f"年分 {i}", "number": n}
                                  for i, n in enumerate(numbers)])
    ids = [s["id"] for s in subjects]
    # The first left two years ago; the second's purposes do not include the form's.
    left = (date(YEAR, 1, 1) - timedelta(days=400)).isoformat()
    assert ma.patch(f"/subjects/{ids[0]}", {"retention_event": left}).status == 200
    assert ma.patch(f"/subjects/{ids[1]}", {"purposes": ["health_pension"]}).status == 200
    this_year = prepare(mu, {"purpose": "payment_record", "ids": ids, "tax_year": YEAR})
    assert (this_year["rows"], this_year["skipped"]) == (1, 1)
    assert [(i["code"], i["problem"]) for i in this_year["report"]] == [("EXPY-1", "purpose")]
    taken = mu.post(f"/export-requests/{this_year['id']}/download")
    assert [r[1] for r in csv_rows(taken.body, "cp932")[1:]] == ["EXPY-2"]
    # Registered this year: nobody was on the books last year.
    last_year = prepare(mu, {"purpose": "payment_record", "ids": ids, "tax_year": YEAR - 1})
    assert last_year["rows"] == 0
    # Unknown ids are refused, not skipped.
    missing = mu.post("/export-requests", {"purpose": "payment_record",
                                           "ids": [str(uuid.UUID(int=0, version=4))]})
    assert missing.status == 404


def test_the_direct_export_cannot_bypass_the_approval(
    users: dict[str, Api], bulk: list[str]
) -> None:
    mu, sa = users["MU"], users["SA"]
    r = mu.post("/exports", {"purpose": "payment_record", "ids": bulk})
    assert r.status == 403 and r.error_code == "approval_required"
    error = r.json["error"]
    assert error["detail"] == {"rows": THRESHOLD + 1, "threshold": THRESHOLD}
    assert f"{THRESHOLD + 1} rows" in error["message_en"] and str(THRESHOLD) in error["message"]
    entries = sa.get("/audit", query={"action": "subject.export", "actor": mu.username,
                                      "limit": 50}).json["entries"]
    newest = max((e for e in entries if e["action"] == "subject.export"), key=lambda e: e["seq"])
    assert newest["outcome"] == "denied"
    assert newest["detail"]["reason"] == "approval_required"
    # At the threshold it still goes straight out.
    ok = mu.post("/exports", {"purpose": "payment_record", "ids": bulk[:THRESHOLD]})
    assert ok.status == 200 and ok.headers["x-kura-rows"] == str(THRESHOLD)
