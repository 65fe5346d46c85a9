"""Bad input and faults: malformed JSON, wrong types, oversize bodies, unknown
fields, invalid numbers, a number already registered for someone else,
forged, signed-out and disabled sessions, a locked account, and a role asking
for what it may not do. Each gets a clear 4xx answer — JSON with a stable
code and a message in Japanese and in English, no internals, never the
number — and changes nothing.

Every My Number here is generated at run time."""

from __future__ import annotations

import json
import random
import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from kura.devserver import LocalAppliance
from tests.support import (
    Api,
    Response,
    hyphenated,
    my_number,
    propose_and_approve,
    provision,
    wrong_check_digit,
)

JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|psycopg|asyncio|aiohttp|jsonschema|Exception|Error\(|/work/|/tmp/"
)
TWELVE_DIGITS = re.compile(r"\d{12}")
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
CODE_PREFIX = "AE-"  # every subject this module tries to register has a code starting so


def full_width(text: str) -> str:
    return text.translate(FULL_WIDTH)


def assert_refused(r: Response, status: int, code: str, *, withheld: tuple[str, ...] = ()) -> None:
    """A clear refusal: the status, a JSON error in both languages, nothing
    internal, and none of ``withheld`` (numbers, passwords) anywhere in it."""
    assert r.status == status, (r.status, r.body[:400])
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    text = r.body.decode("utf-8")
    body = json.loads(text)
    error = body["error"]
    assert error["code"] == code, error
    assert JAPANESE.search(error["message"]), f"not Japanese: {error['message']!r}"
    assert re.search(r"[A-Za-z]{3}", error["message_en"]), error
    assert not JAPANESE.search(error["message_en"]), f"not English: {error['message_en']!r}"
    assert not INTERNALS.search(text), text
    assert not TWELVE_DIGITS.search(error["message"] + error["message_en"]), error
    assert not TWELVE_DIGITS.search(json.dumps(error.get("detail", {}))), error
    # Computed first, so that a failure does not print the secret either.
    repeated = any(secret in text or full_width(secret) in text for secret in withheld)
    assert not repeated, "the refusal repeats what was sent"


class Numbers:
    """Fresh My Numbers, never the same one twice in this module."""

    def __init__(self) -> None:
        self.rng = random.Random("api-errors")
        self.seen: set[str] = set()

    def new(self) -> str:
        while True:
            number = my_number(self.rng)
            if number not in self.seen:
                self.seen.add(number)
                return number


@pytest.fixture(scope="module")
def numbers() -> Numbers:
    return Numbers()


@pytest.fixture(autouse=True)
def no_number_in_the_logs(numbers: Numbers, appliance: LocalAppliance) -> Iterator[None]:
    """Whatever a test sent, no number it made may reach a daemon's log."""
    yield
    text = logs(appliance)
    leaked = [n for n in numbers.seen if n in text or full_width(n) in text]
    assert not leaked, f"{len(leaked)} number(s) written to a log"


@pytest.fixture()
def mu(users: dict[str, Api]) -> Api:
    return users["MU"]


def subject_total(mu: Api) -> int:
    total, offset = 0, 0
    while True:
        r = mu.get("/subjects", query={"offset": offset, "limit": 500})
        assert r.status == 200, r.body
        total += len(r.json["subjects"])
        if len(r.json["subjects"]) < 500:
            return total
        offset += 500


def codes(mu: Api) -> set[str]:
    r = mu.get("/subjects", query={"query": CODE_PREFIX, "limit": 500})
    assert r.status == 200, r.body
    return {s["code"] for s in r.json["subjects"]}


@pytest.fixture()
def unchanged(mu: Api) -> Iterator[None]:
    """The test must leave the subjects exactly as it found them."""
    before_total, before_codes = subject_total(mu), codes(mu)
    yield
    assert subject_total(mu) == before_total, "a refused request registered someone"
    assert codes(mu) == before_codes


_serial = iter(range(1_000_000))


def payee(number: str, **extra: Any) -> dict[str, Any]:
    return {"code": f"{CODE_PREFIX}{next(_serial)}", "name": "誤入 力", "number": number,
            **extra}


def logs(appliance: LocalAppliance) -> str:
    return "".join(p.read_text("utf-8", "replace") for p in Path(appliance.logs).glob("*"))


# --- the body is not what the API takes ------------------------------------------


def test_malformed_json(mu: Api, numbers: Numbers, unchanged: None) -> None:
    number = numbers.new()
    broken = json.dumps(payee(number))[:-5].encode()
    r = mu.post("/payees", body=broken, content_type="application/json")
    assert_refused(r, 400, "bad_request", withheld=(number,))


def test_body_not_utf8(mu: Api, unchanged: None) -> None:
    r = mu.post("/payees", body=b'{"name": "\x82\xa0"}', content_type="application/json")
    assert_refused(r, 400, "bad_request")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_content_type_not_json(mu: Api, numbers: Numbers, unchanged: None,
                               content_type: str) -> None:
    number = numbers.new()
    r = mu.post("/payees", body=json.dumps(payee(number)).encode(), content_type=content_type)
    assert_refused(r, 400, "bad_request", withheld=(number,))
    assert "application/json" in r.json["error"]["message_en"]


def test_body_is_an_array_not_an_object(mu: Api, numbers: Numbers, unchanged: None) -> None:
    number = numbers.new()
    r = mu.post("/payees", [payee(number)])
    assert_refused(r, 400, "bad_request", withheld=(number,))


AS_INTEGER = object()  # the number itself as a JSON number
IN_A_LIST = object()  # the number inside a list


@pytest.mark.parametrize(("field", "value"), [
    ("name", 123),
    ("name", ["山田"]),
    ("code", None),
    ("purposes", "payment_record"),
    ("birth_date", 19800101),
    ("number", AS_INTEGER),
    ("number", IN_A_LIST),
])
def test_wrong_types(mu: Api, numbers: Numbers, unchanged: None, field: str, value: Any) -> None:
    number = numbers.new()
    body = payee(number)
    body[field] = int(number) if value is AS_INTEGER else [number] if value is IN_A_LIST else value
    r = mu.post("/payees", body)
    assert_refused(r, 400, "bad_request", withheld=(number,))
    assert field in r.json["error"]["message_en"], "the message names the field"


def test_wrong_type_in_query(mu: Api) -> None:
    r = mu.get("/subjects", query={"limit": "many"})
    assert_refused(r, 400, "bad_request")
    assert "limit" in r.json["error"]["message_en"]


def test_unknown_field(mu: Api, numbers: Numbers, unchanged: None) -> None:
    number = numbers.new()
    r = mu.post("/payees", payee(number, nickname="タロちゃん"))
    assert_refused(r, 400, "bad_request", withheld=(number,))
    assert "nickname" in r.json["error"]["message_en"]


def test_unknown_field_named_with_a_number_is_not_repeated(
    mu: Api, numbers: Numbers, unchanged: None
) -> None:
    # A clerk pasting into the wrong place: the field's name is itself a number.
    number, stray = numbers.new(), numbers.new()
    r = mu.post("/payees", payee(number, **{stray: "x"}))
    assert_refused(r, 400, "bad_request", withheld=(number, stray))


def test_unknown_query_parameter(mu: Api) -> None:
    r = mu.get("/subjects", query={"sort": "name"})
    assert_refused(r, 400, "bad_request")
    assert "sort" in r.json["error"]["message_en"]


def test_unknown_query_parameter_holding_a_number(mu: Api, numbers: Numbers) -> None:
    number = numbers.new()
    r = mu.get("/subjects", query={"number": number})
    assert_refused(r, 400, "bad_request", withheld=(number,))


def test_oversize_body(mu: Api, numbers: Numbers, unchanged: None) -> None:
    number = numbers.new()
    body = json.dumps(payee(number, name_kana="ア" * (1 << 19))).encode()
    assert len(body) > 1 << 20
    r = mu.post("/payees", body=body, content_type="application/json")
    assert_refused(r, 413, "payload_too_large", withheld=(number,))


def test_oversize_body_on_a_route_that_reads_nothing_big(users: dict[str, Api]) -> None:
    sa = users["SA"]
    before = sa.get("/policy").json
    r = sa.put("/policy", {"policy": before["policy"], "pad": "x" * (1 << 20)})
    assert_refused(r, 413, "payload_too_large")
    assert sa.get("/policy").json == before


def test_unknown_route_and_method(mu: Api) -> None:
    assert_refused(mu.get("/nowhere"), 404, "not_found")
    wrong_method = mu.request("DELETE", "/subjects")
    assert_refused(wrong_method, 405, "method_not_allowed")
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "POST"}


# --- numbers -------------------------------------------------------------------------


def _invalid(kind: str, number: str) -> str:
    return {
        "wrong check digit": wrong_check_digit(number),
        "all zeros": "0" * 12,
        "too short": number[:11],
        "too long": number + "1",
        "letters": number[:5] + "O" + number[6:],
        "hyphens in the wrong places but a wrong digit": (
            f"{number[:3]}-{number[3:9]}-{wrong_check_digit(number)[9:]}"
        ),
    }[kind]


INVALID = ["wrong check digit", "all zeros", "too short", "too long", "letters",
           "hyphens in the wrong places but a wrong digit"]


@pytest.mark.parametrize("kind", INVALID)
def test_invalid_number_is_refused_and_not_repeated(mu: Api, numbers: Numbers,
                                                   unchanged: None, kind: str) -> None:
    number = numbers.new()
    typed = _invalid(kind, number)
    r = mu.post("/payees", payee(typed))
    assert_refused(r, 422, "invalid_number", withheld=(number, typed))
    assert r.json["error"]["detail"]["field"] == "number"


@pytest.mark.parametrize("kind", ["wrong check digit", "all zeros"])
def test_lookup_with_an_invalid_number(mu: Api, numbers: Numbers, kind: str) -> None:
    number = numbers.new()
    typed = _invalid(kind, number)
    r = mu.post("/subjects/lookup", {"number": typed})
    assert_refused(r, 422, "invalid_number", withheld=(number, typed))


def test_full_width_digits_are_fine(mu: Api, numbers: Numbers) -> None:
    number = numbers.new()
    typed = full_width(f"{number[:4]} {number[4:8]} {number[8:]}")
    r = mu.post("/payees", payee(typed))
    assert r.status == 201, r.body
    assert r.json["subject"]["number_masked"].endswith(number[-4:])
    found = mu.post("/subjects/lookup", {"number": number})
    assert [s["id"] for s in found.json["subjects"]] == [r.json["subject"]["id"]]
    revealed = mu.post(f"/subjects/{r.json['subject']['id']}/reveal",
                       {"purpose": "payment_record"})
    assert revealed.json["number"] == number, "stored as ASCII digits"


def test_duplicate_number_for_a_different_person(mu: Api, numbers: Numbers) -> None:
    number = numbers.new()
    first = mu.post("/payees", payee(number))
    assert first.status == 201, first.body
    before_total, before_codes = subject_total(mu), codes(mu)
    for typed in (number, full_width(number)):
        other = payee(typed)
        other["name"] = "別人 花子"
        r = mu.post("/payees", other)
        assert_refused(r, 409, "duplicate_number", withheld=(number,))
        assert "別人" not in r.body.decode() and first.json["subject"]["id"] not in r.body.decode()
    assert subject_total(mu) == before_total and codes(mu) == before_codes
    revealed = mu.post(f"/subjects/{first.json['subject']['id']}/reveal",
                       {"purpose": "payment_record"})
    assert revealed.json["number"] == number


def test_correcting_a_record_to_someone_elses_number(users: dict[str, Api],
                                                   numbers: Numbers) -> None:
    mu, ma = users["MU"], users["MA"]
    mine, theirs = numbers.new(), numbers.new()
    a = mu.post("/payees", payee(mine)).json["subject"]
    assert mu.post("/payees", payee(theirs)).status == 201
    r = ma.patch(f"/subjects/{a['id']}", {"number": theirs})
    assert_refused(r, 409, "duplicate_number", withheld=(mine, theirs))
    revealed = mu.post(f"/subjects/{a['id']}/reveal", {"purpose": "payment_record"})
    assert revealed.json["number"] == mine


def test_subject_id_that_is_not_an_id(mu: Api) -> None:
    assert_refused(mu.get("/subjects/not-an-id"), 400, "bad_request")
    assert_refused(mu.get(f"/subjects/{uuid.uuid4()}"), 404, "not_found")


@pytest.mark.parametrize("shape", ["plain", "hyphenated", "full-width"])
def test_number_pasted_into_the_path(mu: Api, numbers: Numbers, shape: str) -> None:
    # Refused, not repeated, and (checked after every test) not logged.
    number = numbers.new()
    typed = {"plain": number, "hyphenated": hyphenated(number),
             "full-width": quote(full_width(number))}[shape]
    assert_refused(mu.get(f"/subjects/{typed}"), 400, "bad_request", withheld=(number,))
    assert_refused(mu.post(f"/subjects/{typed}/reveal", {"purpose": "payment_record"}), 400,
                   "bad_request", withheld=(number,))


def test_openapi_never_takes_a_number_in_the_url(anon: Api) -> None:
    doc = anon.get("/openapi.json").json
    numberish = re.compile(r"number|mynumber|my_number|kojin|bangou|bango", re.IGNORECASE)
    for path, methods in doc["paths"].items():
        assert not numberish.search(path), path
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                assert not numberish.search(parameter["name"]), (method, path, parameter)


# --- sessions ---------------------------------------------------------------------


def test_forged_session(anon: Api, numbers: Numbers, unchanged: None) -> None:
    forged = anon.anonymous()
    forged.token = secrets.token_urlsafe(32)
    number = numbers.new()
    assert_refused(forged.get("/subjects"), 401, "not_authenticated")
    assert_refused(forged.post("/payees", payee(number)), 401, "not_authenticated",
                   withheld=(number,))
    assert_refused(forged.get("/session"), 401, "not_authenticated")


def test_forged_session_cookie(anon: Api) -> None:
    r = anon.get("/subjects", headers={"Cookie": f"kura_session={secrets.token_urlsafe(32)}"})
    assert_refused(r, 401, "not_authenticated")


def test_signed_out_session(users: dict[str, Api], numbers: Numbers, unchanged: None) -> None:
    clerk = provision(users["DA"], "ae-signed-out", "MU")
    assert clerk.get("/subjects").status == 200
    assert clerk.delete("/session").status == 200
    number = numbers.new()
    assert_refused(clerk.get("/subjects"), 401, "not_authenticated")
    assert_refused(clerk.post("/payees", payee(number)), 401, "not_authenticated",
                   withheld=(number,))
    assert_refused(clerk.delete("/session"), 401, "not_authenticated")


def test_session_of_a_disabled_user(users: dict[str, Api], numbers: Numbers,
                                    unchanged: None) -> None:
    clerk = provision(users["DA"], "ae-disabled", "MU")
    assert clerk.get("/subjects").status == 200
    r = users["DA"].patch("/users/ae-disabled", {"disabled": True})
    assert r.status == 200, r.body
    number = numbers.new()
    assert_refused(clerk.get("/subjects"), 401, "not_authenticated")
    assert_refused(clerk.post("/payees", payee(number)), 401, "not_authenticated",
                   withheld=(number,))
    # Nor can they sign in again, with the right password.
    again = clerk.anonymous().post("/session", {"username": "ae-disabled",
                                                "password": clerk.password})
    assert_refused(again, 401, "login_failed", withheld=(clerk.password,))


def test_lockout_after_five_wrong_passwords(users: dict[str, Api]) -> None:
    da = users["DA"]
    password = propose_and_approve(da, "ae-locked", "MU")
    anon = da.anonymous()
    wrong = [f"Wrong-Password-{i}!x" for i in range(5)]
    for attempt in wrong[:4]:
        r = anon.post("/session", {"username": "ae-locked", "password": attempt})
        assert_refused(r, 401, "login_failed", withheld=(attempt,))
    r = anon.post("/session", {"username": "ae-locked", "password": wrong[4]})
    assert_refused(r, 423, "account_locked", withheld=(wrong[4],))
    # While locked, even the right password is refused, and it says why.
    r = anon.post("/session", {"username": "ae-locked", "password": password})
    assert_refused(r, 423, "account_locked", withheld=(password,))
    assert "until" in r.json["error"]["detail"]
    row = next(u for u in da.get("/users").json["users"] if u["username"] == "ae-locked")
    assert row["locked_until"] and row["last_login_at"] is None


# --- a role asking for what it may not do --------------------------------------------


@pytest.fixture(scope="module")
def a_payee(users: dict[str, Api], numbers: Numbers) -> tuple[dict[str, Any], str]:
    number = numbers.new()
    r = users["MU"].post("/payees", payee(number))
    assert r.status == 201, r.body
    return r.json["subject"], number


@pytest.mark.parametrize("role", ["MA", "SA", "DA"])
def test_reveal_by_a_role_that_may_not(users: dict[str, Api], a_payee: tuple[dict[str, Any], str],
                                       role: str, unchanged: None) -> None:
    subject, number = a_payee
    r = users[role].post(f"/subjects/{subject['id']}/reveal", {"purpose": "payment_record"})
    assert_refused(r, 403, "permission_denied", withheld=(number,))


@pytest.mark.parametrize("role", ["MA", "SA", "DA"])
def test_export_by_a_role_that_may_not(users: dict[str, Api], a_payee: tuple[dict[str, Any], str],
                                       role: str) -> None:
    subject, number = a_payee
    r = users[role].post("/exports", {"purpose": "payment_record", "ids": [subject["id"]]})
    assert_refused(r, 403, "permission_denied", withheld=(number,))
    assert "x-kura-rows" not in r.headers


def test_mu_may_not_create_an_account(users: dict[str, Api]) -> None:
    r = users["MU"].post("/users", {"username": "ae-sneaky", "role": "DA"})
    assert_refused(r, 403, "permission_denied")
    names = {u["username"] for u in users["DA"].get("/users").json["users"]}
    assert "ae-sneaky" not in names


def test_mu_may_not_weaken_the_policy(users: dict[str, Api]) -> None:
    before = users["SA"].get("/policy").json
    r = users["MU"].put("/policy", {"policy": {"lockout_threshold": 100}})
    assert_refused(r, 403, "permission_denied")
    assert users["SA"].get("/policy").json == before


def test_reveal_for_a_purpose_the_subject_does_not_allow(
    users: dict[str, Api], a_payee: tuple[dict[str, Any], str]
) -> None:
    subject, number = a_payee
    r = users["MU"].post(f"/subjects/{subject['id']}/reveal", {"purpose": "health_pension"})
    assert_refused(r, 422, "purpose_required", withheld=(number,))
    r = users["MU"].post(f"/subjects/{subject['id']}/reveal", {"purpose": "curiosity"})
    assert_refused(r, 422, "purpose_required", withheld=(number,))
