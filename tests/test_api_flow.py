"""The JSON API as a payroll integration uses it: register, look up, reveal,
list, import and export, against the real console, vault and PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import io
import random

from tests.support import Api, hyphenated, my_number, my_numbers, wrong_check_digit


def test_openapi_document_lists_every_route(anon: Api) -> None:
    r = anon.get("/openapi.json")
    assert r.status == 200
    doc = r.json
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/session", "/api/v1/unseal", "/api/v1/payees", "/api/v1/subjects/lookup",
                 "/api/v1/subjects/{id}/reveal", "/api/v1/subjects", "/api/v1/subjects/import",
                 "/api/v1/exports"):
        assert path in doc["paths"], path


def test_register_lookup_reveal_a_payee(users: dict[str, Api]) -> None:
    mu = users["MU"]
    number = my_number(random.Random(101))
    r = mu.post("/payees", {"code": "P-101", "name": "山田 太郎", "name_kana": "ヤマダ タロウ",
                            "number": hyphenated(number)})
    assert r.status == 201, r.body
    subject = r.json["subject"]
    assert subject["number_masked"] == "****-****-" + number[-4:]
    assert number not in r.body.decode()

    found = mu.post("/subjects/lookup", {"number": number})
    assert found.status == 200
    assert [s["id"] for s in found.json["subjects"]] == [subject["id"]]
    assert number not in found.body.decode()

    by_code = mu.post("/subjects/lookup", {"code": "P-101", "kind": "payee"})
    assert [s["id"] for s in by_code.json["subjects"]] == [subject["id"]]

    revealed = mu.post(f"/subjects/{subject['id']}/reveal", {"purpose": "payment_record"})
    assert revealed.status == 200
    assert revealed.json["number"] == number

    wrong_purpose = mu.post(f"/subjects/{subject['id']}/reveal", {"purpose": "health_pension"})
    assert wrong_purpose.status == 422
    assert wrong_purpose.error_code == "purpose_required"


def test_same_person_again_is_idempotent_but_another_person_is_refused(
    users: dict[str, Api],
) -> None:
    mu = users["MU"]
    number = my_number(random.Random(202))
    first = mu.post("/payees", {"code": "P-202", "name": "佐藤 花子", "number": number})
    assert first.status == 201
    again = mu.post("/payees", {"code": "P-202", "name": "佐藤 花子", "number": number})
    assert again.status == 200 and again.json["created"] is False
    other = mu.post("/payees", {"code": "P-203", "name": "鈴木 一郎", "number": number})
    assert other.status == 409
    assert other.error_code == "duplicate_number"
    listed = mu.get("/subjects", query={"query": "P-203"})
    assert listed.json["subjects"] == []


def test_bulk_import_csv_then_export_shift_jis(users: dict[str, Api]) -> None:
    mu = users["MU"]
    numbers = my_numbers(50, seed=303)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["支払先コード", "氏名", "フリガナ", "個人番号"])
    for i, n in enumerate(numbers):
        writer.writerow([f"IMP-{i:03d}", f"取引先 {i}", "トリヒキサキ", n])
    writer.writerow(["IMP-BAD", "誤り 太郎", "", wrong_check_digit(numbers[0])])
    r = mu.post("/subjects/import", body=out.getvalue().encode("cp932"), content_type="text/csv")
    assert r.status == 200, r.body
    assert r.json["created"] == 50
    assert [x["line"] for x in r.json["rejected"]] == [52]
    assert numbers[0] not in r.body.decode()

    ids = [s["id"] for s in mu.get("/subjects", query={"query": "IMP-", "limit": 500}).json[
        "subjects"]]
    assert len(ids) == 50
    export = mu.post("/exports", {"purpose": "payment_record", "ids": ids,
                                  "encoding": "shift_jis"})
    assert export.status == 200
    assert export.headers["x-kura-rows"] == "50"
    assert export.headers["x-kura-sha256"] == hashlib.sha256(export.body).hexdigest()
    rows = list(csv.reader(io.StringIO(export.body.decode("cp932"))))
    assert rows[0][4] == "個人番号"
    assert sorted(r[4] for r in rows[1:]) == sorted(numbers)


def test_employee_with_dependents_and_import_is_repeatable(users: dict[str, Api]) -> None:
    mu, ma = users["MU"], users["MA"]
    employee, spouse, child = my_numbers(3, seed=404)
    rows = [
        {"kind": "employee", "code": "E-404", "name": "高橋 健", "number": employee},
        {"kind": "dependent", "code": "E-404", "employee_code": "E-404", "name": "高橋 恵",
         "number": spouse},
        {"kind": "dependent", "code": "E-404", "employee_code": "E-404", "name": "高橋 陽",
         "number": child},
        {"kind": "dependent", "code": "X-1", "employee_code": "NOBODY", "name": "誰 か",
         "number": my_number(random.Random(405))},
    ]
    first = mu.post("/subjects/import", {"rows": rows})
    assert first.status == 200, first.body
    assert (first.json["created"], first.json["existing"]) == (3, 0)
    assert [(x["line"], x["field"]) for x in first.json["rejected"]] == [(4, "employee_code")]
    again = mu.post("/subjects/import", {"rows": rows[:3]})
    assert (again.json["created"], again.json["existing"]) == (0, 3)

    found = ma.post("/subjects/lookup", {"number": child})
    (kid,) = found.json["subjects"]
    boss = ma.post("/subjects/lookup", {"number": employee}).json["subjects"][0]
    assert kid["kind"] == "dependent" and kid["employee_id"] == boss["id"]
    # The MA corrects the child's name; MAs do not reveal numbers.
    fixed = ma.patch(f"/subjects/{kid['id']}", {"name": "高橋 陽太"})
    assert fixed.status == 200 and fixed.json["subject"]["name"] == "高橋 陽太"
    assert ma.post(f"/subjects/{kid['id']}/reveal", {"purpose": "dependents"}).status == 403
    shown = mu.post(f"/subjects/{kid['id']}/reveal", {"purpose": "dependents"})
    assert shown.json["number"] == child
