"""The JSON API as a payroll integration uses it: register, look up, reveal,
list, import and export, against the real console, vault and PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import io
import random

from tests.support import Api, hyphenated, my_number, my_numbers


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
    writer.writerow(["IMP-BAD", "誤り 太郎", "", numbers[0][:11] + str((int(numbers[0][11]) + 1) % 10)])
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
