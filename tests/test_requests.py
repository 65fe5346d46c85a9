"""Collecting an employee's numbers through a one-time link: the request's
state machine and the document rules (pure), then the whole flow through
the JSON API and the employee's web form against the real console, vault
and PostgreSQL — create, open, submit with two documents, approve or reject,
reissue, and every way a link or a submission is refused."""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from kura.core import requests as core
from kura.core.errors import BadRequest, InvalidNumber, KuraError
from kura.devserver import LocalAppliance
from tests.support import Api, hyphenated, my_numbers, png, wrong_check_digit

# --- documents made on the spot ----------------------------------------------------


def jpeg(marker: bytes = b"kura-test-identity") -> bytes:
    """A JPEG's header and a body: enough for a type check by content."""
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + marker * 8 + (
        b"\xff\xd9"
    )


ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x90" * 200


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def documents(number_doc: bytes | None = None, identity_doc: bytes | None = None) -> list[Any]:
    return [
        {"kind": "number", "content_type": "image/png", "content": b64(number_doc or png())},
        {"kind": "identity", "content_type": "image/jpeg", "content": b64(identity_doc or jpeg())},
    ]


# Numbers of this module only (a seed no other test uses), never a real person's.
NUMBERS = iter(my_numbers(120, seed=0x5EC0))
USED: list[str] = []


def fresh_number() -> str:
    number = next(NUMBERS)
    USED.append(number)
    return number


# --- the pure core -------------------------------------------------------------------


def test_the_state_machine_is_the_table() -> None:
    assert core.next_state("open", "submit") == "submitted"
    assert core.next_state("submitted", "approve") == "approved"
    assert core.next_state("submitted", "reject") == "rejected"
    assert core.next_state("rejected", "reissue") == "open"
    assert core.next_state("expired", "reissue") == "open"
    assert core.next_state("open", "cancel") == "cancelled"
    for state, event in [
        ("open", "approve"),
        ("submitted", "submit"),
        ("approved", "reject"),
        ("approved", "reissue"),
        ("cancelled", "reissue"),
        ("submitted", "cancel"),
        ("expired", "submit"),
        ("open", "reissue"),
    ]:
        with pytest.raises(core.IllegalTransition) as caught:
            core.next_state(state, event)
        assert caught.value.status == 409
    assert core.allowed_events("submitted") == {"approve", "reject"}
    assert core.allowed_events("approved") == frozenset()


def test_expired_is_an_open_request_past_its_time() -> None:
    now = datetime(2026, 4, 1, 9, tzinfo=UTC)
    assert core.effective_state("open", now + timedelta(seconds=1), now) == "open"
    assert core.effective_state("open", now, now) == "expired"
    assert core.effective_state("rejected", now - timedelta(days=3), now) == "rejected"


def test_documents_are_recognised_by_content_not_by_name() -> None:
    assert core.check_document("number", png()).content_type == "image/png"
    assert core.check_document("identity", jpeg()).content_type == "image/jpeg"
    pdf = b"%PDF-1.7\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"
    assert core.check_document("number", pdf).content_type == "application/pdf"
    for bad in (ELF, b"MZ" + b"\x90" * 100, b"GIF89a" + b"\x00" * 40, b"\x89PNG\r\n\x1a\n" * 3):
        with pytest.raises(core.DocumentRejected) as caught:
            core.check_document("number", bad)
        assert caught.value.status == 422
    with pytest.raises(core.DocumentRejected):
        core.check_document("number", b"\xff\xd8\xff")  # cut short
    too_big = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + b"\x00" * core.MAX_DOCUMENT_BYTES
    with pytest.raises(core.DocumentTooLarge) as big:
        core.check_document("number", too_big)
    assert big.value.status == 413


def test_a_submission_is_checked_without_echoing_a_number() -> None:
    mine, spouse = my_numbers(2, seed=77)
    good = [
        {"relation": "self", "number": hyphenated(mine)},
        {"relation": "spouse", "name": "山田 花子", "name_kana": "やまだ はなこ",
         "birth_date": "1990-02-03", "number": spouse},
    ]
    made = core.make_submission(good, documents(), "山田 太郎", "ヤマダ タロウ")
    assert [e.number for e in made.entries] == [mine, spouse]
    assert made.entries[0].name == "山田 太郎"
    assert made.entries[1].name_kana == "ヤマダ\u3000ハナコ"
    assert mine not in repr(made) and spouse not in repr(made)

    wrong = [good[0], {**good[1], "number": wrong_check_digit(spouse)}]
    with pytest.raises(InvalidNumber) as caught:
        core.make_submission(wrong, documents(), "山田 太郎")
    assert caught.value.detail["entry"] == 1 and caught.value.detail["field"] == "number"
    assert "チェックデジット" in caught.value.message_ja
    assert wrong_check_digit(spouse) not in str(caught.value.to_json())

    twice = [good[0], {**good[1], "number": mine}]
    with pytest.raises(core.DuplicateInSubmission):
        core.make_submission(twice, documents(), "山田 太郎")

    with pytest.raises(BadRequest) as missing:
        core.make_submission(good, documents()[:1], "山田 太郎")
    assert missing.value.detail["field"] == "identity_document"

    no_birth: list[dict[str, Any]] = [good[0], {**good[1], "birth_date": None}]
    with pytest.raises(KuraError) as undated:
        core.make_submission(no_birth, documents(), "山田 太郎")
    assert undated.value.detail["field"] == "birth_date"


def test_a_draft_is_checked() -> None:
    draft = core.make_draft(name="山田 太郎", employee_code="E-100",
                            purposes=["salary_report", "withholding_slip"])
    assert draft.purposes == ("withholding_slip", "salary_report")  # catalogue order
    assert draft.expires_days == 14
    bad: dict[str, Any]
    for bad in (
        {"employee_code": "E 100"},
        {"employee_code": "E" * 29},
        {"purposes": []},
        {"purposes": ["lunch_money"]},
        {"expires_days": 61},
        {"expires_days": 0},
    ):
        args: dict[str, Any] = {"name": "山田 太郎", "employee_code": "E-1",
                                "purposes": ["salary_report"], **bad}
        with pytest.raises(BadRequest):
            core.make_draft(**args)


def test_tokens_are_random_and_only_their_digest_is_kept() -> None:
    token, digest = core.new_token()
    other, _ = core.new_token()
    assert token != other and core.well_formed_token(token)
    assert core.token_digest(token) == digest and token.encode() not in digest
    assert core.burnt_digest() != core.burnt_digest()


# --- through the API: the whole flow --------------------------------------------------

_SERIAL = iter(range(1, 10_000))


def create(client: Api, **extra: Any) -> tuple[dict[str, Any], str]:
    code = f"RQ-{next(_SERIAL)}-{uuid.uuid4().hex[:6]}"
    body = {"name": "依頼 太郎", "name_kana": "イライ タロウ", "employee_code": code,
            "purposes": ["withholding_slip", "salary_report", "dependents"], **extra}
    r = client.post("/requests", body)
    assert r.status == 200, r.body
    assert r.json["request"]["state"] == "open"
    return r.json["request"], r.json["token"]


def submit(anon: Api, token: str, entries: list[Any], docs: list[Any] | None = None) -> Any:
    return anon.post("/registration/submit",
                     {"token": token, "entries": entries, "documents": docs or documents()})


def family(dependents: int = 1) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = [{"relation": "self", "number": fresh_number(),
                                      "birth_date": "1985-05-05"}]
    for i in range(dependents):
        kana = ("イチ", "ニ", "サン", "ヨン")[i % 4]
        entries.append({"relation": ("spouse", "child")[min(i, 1)], "name": f"家族 {i + 1}",
                        "name_kana": f"カゾク {kana}", "birth_date": f"201{i}-01-0{i + 1}",
                        "number": fresh_number()})
    return entries


def test_create_open_submit_approve_registers_the_family(
    users: dict[str, Api], anon: Api
) -> None:
    mu, ma = users["MU"], users["MA"]
    req, token = create(mu)
    assert "token" not in req and token not in json.dumps(req)

    opened = anon.post("/registration/open", {"token": token})
    assert opened.status == 200, opened.body
    assert opened.json["name"] == "依頼 太郎"
    assert [p["code"] for p in opened.json["purposes"]] == [
        "withholding_slip", "salary_report", "dependents"]
    assert opened.json["purposes"][0]["ja"] == "源泉徴収票作成事務"

    entries = family(2)
    sent = submit(anon, token, entries, documents(png(rgb=(200, 40, 40)), jpeg()))
    assert sent.status == 200, sent.body
    assert sent.json == {"state": "submitted", "dependents": 2, "documents": 2}

    # The link is dead now, and says the same as any unknown link.
    again = anon.post("/registration/open", {"token": token})
    unknown = anon.post("/registration/open", {"token": "x" * 43})
    assert again.status == unknown.status == 404
    assert again.json == unknown.json
    assert again.json["error"]["message_en"] == "This link is no longer valid."
    assert submit(anon, token, family(0)).status == 404

    # The MA's queue starts with the submitted requests; no number in a list.
    listed = ma.get("/requests")
    assert listed.status == 200
    states = [r["state"] for r in listed.json["requests"]]
    assert states == sorted(states, key=lambda s: s != "submitted")
    assert req["id"] in {r["id"] for r in listed.json["requests"]}
    assert all(e["number"] not in listed.body.decode() for e in entries)

    review = ma.get(f"/requests/{req['id']}")
    assert review.status == 200, review.body
    assert [e["number"] for e in review.json["entries"]] == [e["number"] for e in entries]
    assert [e["relation"] for e in review.json["entries"]] == ["self", "spouse", "child"]
    assert review.json["entries"][0]["name"] == "依頼 太郎"
    kinds = {d["kind"]: d for d in review.json["documents"]}
    assert kinds["number"]["content_type"] == "image/png"
    assert kinds["identity"]["content_type"] == "image/jpeg"  # declared type ignored
    doc = ma.get(f"/requests/{req['id']}/documents/{kinds['number']['id']}")
    assert doc.status == 200
    assert base64.b64decode(doc.json["content"]) == png(rgb=(200, 40, 40))

    approved = ma.post(f"/requests/{req['id']}/approve")
    assert approved.status == 200, approved.body
    assert approved.json["request"]["state"] == "approved"
    employee_id = approved.json["subject_id"]

    # Found by number, masked, with the request's purposes; dependents linked.
    found = mu.post("/subjects/lookup", {"number": entries[0]["number"]})
    employee = found.json["subjects"][0]
    assert employee["id"] == employee_id and employee["kind"] == "employee"
    assert employee["code"] == req["employee_code"]
    assert employee["number_masked"] == "****-****-" + entries[0]["number"][-4:]
    assert employee["purposes"] == ["withholding_slip", "salary_report", "dependents"]
    assert employee["retention_basis"] == "employment"
    assert entries[0]["number"] not in found.body.decode()
    for position, entry in enumerate(entries[1:], 1):
        dep = mu.post("/subjects/lookup", {"number": entry["number"]}).json["subjects"][0]
        assert dep["kind"] == "dependent" and dep["employee_id"] == employee_id
        assert dep["code"] == f"{req['employee_code']}-{position}"
        assert dep["birth_date"] == entry["birth_date"]
    revealed = mu.post(f"/subjects/{employee_id}/reveal", {"purpose": "salary_report"})
    assert revealed.json["number"] == entries[0]["number"]

    # The documents stay with the employee (still shown on the request); entries are gone.
    after = ma.get(f"/requests/{req['id']}").json
    assert after["entries"] == [] and len(after["documents"]) == 2
    assert ma.get(f"/requests/{req['id']}/documents/{kinds['identity']['id']}").status == 200
    # Approving twice is refused by the state machine.
    twice = ma.post(f"/requests/{req['id']}/approve")
    assert twice.status == 409 and twice.error_code == "illegal_transition"


def test_reject_with_reason_then_reissue_and_resubmit(users: dict[str, Api], anon: Api) -> None:
    mu, ma = users["MU"], users["MA"]
    req, token = create(mu)
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    assert submit(anon, token, family(1), documents(identity_doc=pdf)).status == 200
    sent = ma.get(f"/requests/{req['id']}").json["documents"]
    kinds = {d["kind"]: d["content_type"] for d in sent}
    assert kinds == {"number": "image/png", "identity": "application/pdf"}
    no_reason = ma.post(f"/requests/{req['id']}/reject", {"reason": "   "})
    assert no_reason.status == 400
    number_in_reason = ma.post(f"/requests/{req['id']}/reject",
                               {"reason": "番号 " + hyphenated(fresh_number()) + " が不鮮明"})
    assert number_in_reason.status == 400
    rejected = ma.post(f"/requests/{req['id']}/reject", {"reason": "書類の画像が不鮮明です"})
    assert rejected.status == 200, rejected.body
    assert rejected.json["request"]["state"] == "rejected"
    assert rejected.json["request"]["reason"] == "書類の画像が不鮮明です"
    assert ma.post(f"/requests/{req['id']}/approve").error_code == "illegal_transition"

    reissued = mu.post(f"/requests/{req['id']}/reissue", {})
    assert reissued.status == 200, reissued.body
    new_token = reissued.json["token"]
    assert new_token != token
    assert reissued.json["request"]["state"] == "open"
    assert reissued.json["request"]["links_issued"] == 2
    assert anon.post("/registration/open", {"token": token}).status == 404
    # What was sent the first time is gone.
    assert ma.get(f"/requests/{req['id']}").json["entries"] == []

    entries = family(0)
    assert submit(anon, new_token, entries).status == 200
    assert ma.post(f"/requests/{req['id']}/approve").status == 200
    assert mu.post("/subjects/lookup", {"number": entries[0]["number"]}).json["subjects"]


@pytest.fixture(scope="module")
def owner_db(appliance: LocalAppliance) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(appliance.cluster.dsn("kura_owner"), autocommit=True) as conn:
        yield conn


def test_an_expired_link_is_refused_and_can_be_reissued(
    users: dict[str, Api], anon: Api, owner_db: psycopg.Connection[Any]
) -> None:
    mu = users["MU"]
    req, token = create(mu, expires_days=1)
    owner_db.execute(
        "UPDATE registration_requests SET expires_at = now() - interval '1 minute' WHERE id = %s",
        (req["id"],),
    )
    opened = anon.post("/registration/open", {"token": token})
    assert opened.status == 404 and opened.error_code == "link_invalid"
    assert submit(anon, token, family(0)).status == 404
    expired = mu.get("/requests", query={"state": "expired"}).json["requests"]
    assert req["id"] in {r["id"] for r in expired}
    reissued = mu.post(f"/requests/{req['id']}/reissue", {"expires_days": 3})
    assert reissued.status == 200
    assert anon.post("/registration/open", {"token": reissued.json["token"]}).status == 200


def test_cancel_kills_the_link(users: dict[str, Api], anon: Api) -> None:
    ma = users["MA"]
    req, token = create(ma)
    assert ma.post(f"/requests/{req['id']}/approve").error_code == "illegal_transition"
    cancelled = ma.post(f"/requests/{req['id']}/cancel")
    assert cancelled.status == 200 and cancelled.json["request"]["state"] == "cancelled"
    assert anon.post("/registration/open", {"token": token}).status == 404
    assert ma.post(f"/requests/{req['id']}/cancel").error_code == "illegal_transition"
    assert ma.post(f"/requests/{req['id']}/reissue", {}).error_code == "illegal_transition"


def test_bad_submissions_are_refused_and_the_link_still_works(
    users: dict[str, Api], anon: Api
) -> None:
    _, token = create(users["MU"])
    good = family(1)

    wrong = [good[0], {**good[1], "number": wrong_check_digit(good[1]["number"])}]
    r = submit(anon, token, wrong)
    assert r.status == 422 and r.error_code == "invalid_number"
    assert r.json["error"]["detail"]["entry"] == 1
    assert wrong[1]["number"] not in r.body.decode()

    twice = [good[0], {**good[1], "number": good[0]["number"]}]
    assert submit(anon, token, twice).error_code == "duplicate_in_submission"

    renamed = submit(anon, token, good, documents(number_doc=ELF))  # declared image/png
    assert renamed.status == 422 and renamed.error_code == "document_type"

    too_many = [good[0]] + [{**good[1], "number": fresh_number()} for _ in range(11)]
    assert submit(anon, token, too_many).status == 400

    # Over the API's body limit: refused before it reaches the vault.
    big = documents(number_doc=png() + b"\x00" * (1 << 20))
    assert submit(anon, token, good, big).status == 413

    # None of that used the link up.
    assert submit(anon, token, good).status == 200


def test_a_number_registered_for_someone_else_is_refused_at_approval(
    users: dict[str, Api], anon: Api
) -> None:
    mu, ma = users["MU"], users["MA"]
    taken = fresh_number()
    payee = mu.post("/payees", {"code": f"RQ-P-{uuid.uuid4().hex[:6]}", "name": "既存 支払先",
                                "number": taken})
    assert payee.status == 201, payee.body
    req, token = create(mu)
    entries = family(1)
    entries[1]["number"] = taken
    assert submit(anon, token, entries).status == 200
    refused = ma.post(f"/requests/{req['id']}/approve")
    assert refused.status == 409 and refused.error_code == "duplicate_number"
    assert "扶養親族1" in refused.json["error"]["message"]
    assert taken not in refused.body.decode()
    # Nothing was registered; the request waits for a decision.
    assert mu.post("/subjects/lookup", {"number": entries[0]["number"]}).json["subjects"] == []
    assert ma.get(f"/requests/{req['id']}").json["request"]["state"] == "submitted"
    sent_back = ma.post(f"/requests/{req['id']}/reject", {"reason": "扶養親族の番号が重複"})
    assert sent_back.status == 200


def test_purge_documents_deletes_them_at_approval(
    users: dict[str, Api], anon: Api, owner_db: psycopg.Connection[Any]
) -> None:
    mu, ma = users["MU"], users["MA"]
    req, token = create(mu, purge_documents=True)
    assert submit(anon, token, family(0)).status == 200
    docs = ma.get(f"/requests/{req['id']}").json["documents"]
    assert len(docs) == 2
    approved = ma.post(f"/requests/{req['id']}/approve")
    assert approved.status == 200
    assert approved.json["request"]["documents_purged_at"]
    assert ma.get(f"/requests/{req['id']}").json["documents"] == []
    assert ma.get(f"/requests/{req['id']}/documents/{docs[0]['id']}").status == 404
    left = owner_db.execute(
        "SELECT count(*) FROM documents WHERE id = ANY(%s::uuid[])", ([d["id"] for d in docs],)
    ).fetchone()
    assert left == (0,)


def test_sa_and_da_cannot_see_requests(users: dict[str, Api]) -> None:
    for role in ("SA", "DA"):
        r = users[role].get("/requests")
        assert r.status == 403 and r.error_code == "permission_denied"
    # An MU sees the list but not the entered numbers.
    req, _ = create(users["MU"])
    refused = users["MU"].get(f"/requests/{req['id']}")
    assert refused.status == 403


# --- the employee's web form: streamed, CSRF first, size-capped -----------------------


class WebForm:
    """The employee's browser without a browser: cookies and the form's token."""

    def __init__(self, appliance: LocalAppliance, token: str) -> None:
        self.appliance = appliance
        self.path = f"/r/{token}"
        self.cookie = ""
        self.csrf = ""

    def _conn(self) -> http.client.HTTPSConnection:
        parts = urlsplit(self.appliance.url)
        assert parts.hostname and parts.port
        context = ssl.create_default_context(cafile=str(self.appliance.cert))
        return http.client.HTTPSConnection(parts.hostname, parts.port, context=context,
                                           timeout=60)

    def open(self) -> tuple[int, str]:
        conn = self._conn()
        conn.request("GET", self.path)
        r = conn.getresponse()
        body = r.read().decode()
        for header, value in r.getheaders():
            if header.lower() == "set-cookie" and value.startswith("kura_pre="):
                self.cookie = value.split(";")[0]
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', body)
        self.csrf = found.group(1) if found else ""
        return r.status, body

    def post(
        self, fields: list[tuple[str, str]], files: list[tuple[str, bytes]]
    ) -> tuple[int, str]:
        """The fields in this order, then the files."""
        boundary = "kura" + uuid.uuid4().hex
        parts = []
        for name, value in fields:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
                         f"\r\n\r\n{value}\r\n".encode())
        for name, content in files:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}";'
                f' filename="{name}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                + content + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        conn = self._conn()
        conn.request("POST", self.path, body=body, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Cookie": self.cookie, "Sec-Fetch-Site": "same-origin",
        })
        r = conn.getresponse()
        return r.status, r.read().decode()


def test_the_web_form_checks_csrf_first_and_caps_uploads(
    users: dict[str, Api], anon: Api, appliance: LocalAppliance
) -> None:
    req, token = create(users["MU"])
    form = WebForm(appliance, token)
    status, page = form.open()
    assert status == 200 and "依頼 太郎" in page and form.csrf and form.cookie
    number = fresh_number()
    files = [("number_document", png()), ("identity_document", png(rgb=(0, 150, 0)))]

    # Without the CSRF field first, nothing is read.
    status, page = form.post([("number", number), ("csrf", form.csrf)], files)
    assert status == 403

    # A wrong check digit: the form again, 422, without the number in the message.
    status, page = form.post([("csrf", form.csrf), ("number", wrong_check_digit(number))], files)
    assert status == 422
    message = re.search(r'<p class="error" role="alert" id="form-error">(.*?)</p>', page, re.S)
    assert message and "チェックデジット" in message.group(1)
    assert wrong_check_digit(number) not in message.group(1)

    # A missing document is named (after the numbers are checked).
    status, page = form.post([("csrf", form.csrf), ("number", number)], files[:1])
    assert status == 400 and "身元確認書類" in page

    # A renamed executable is refused by its content.
    status, page = form.post([("csrf", form.csrf), ("number", number)],
                             [("number_document", ELF), files[1]])
    assert status == 422 and "JPEG" in page

    # Over the upload limit: refused as the file streams in, in Japanese.
    limit = 10 << 20
    status, page = form.post([("csrf", form.csrf), ("number", number)],
                             [("number_document", png() + b"\x00" * limit), files[1]])
    assert status == 413 and "MB以内" in page

    status, page = form.post([("csrf", form.csrf), ("number", number), ("dep-1-relation", "child"),
                              ("dep-1-name", "子 一郎"), ("dep-1-kana", "コ イチロウ"),
                              ("dep-1-birth", "2015-04-01"), ("dep-1-number", fresh_number())],
                             files)
    assert status == 200, page
    assert "提出を受け付けました" in page
    status, page = form.post([("csrf", form.csrf), ("number", number)], files)
    assert status == 410 and "このリンクは無効です" in page
    assert form.open()[0] == 410
    assert users["MA"].get(f"/requests/{req['id']}").json["request"]["state"] == "submitted"


# --- nothing readable left behind -------------------------------------------------------


def test_no_number_in_clear_in_the_database_or_the_audit_log(
    users: dict[str, Api], anon: Api, owner_db: psycopg.Connection[Any]
) -> None:
    # One request of its own in each state that keeps something (when run alone);
    # every number the tests above used is looked for too.
    ma = users["MA"]
    waiting, token = create(users["MU"])
    assert anon.post("/registration/open", {"token": token}).status == 200
    assert submit(anon, token, family(2)).status == 200
    ma.get(f"/requests/{waiting['id']}")
    approved, token = create(users["MU"])
    assert submit(anon, token, family(1)).status == 200
    assert ma.post(f"/requests/{approved['id']}/approve").status == 200
    spellings = [n.encode() for n in USED] + [hyphenated(n).encode() for n in USED]
    spellings += [n.encode("utf-16-le") for n in USED]
    tables = ("registration_requests", "request_entries", "documents", "subjects", "audit")
    for table in tables:
        rows = owner_db.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 (fixed names)
        for row in rows:
            for value in row:
                data = value if isinstance(value, bytes) else str(value).encode()
                assert not any(s in data for s in spellings), f"a number in clear in {table}"
    # The document images are sealed too.
    marker = b"kura-test-identity"
    contents = owner_db.execute("SELECT content_ct FROM documents").fetchall()
    assert contents and not any(marker in bytes(c[0]) for c in contents)

    log = users["SA"].get("/audit", query={"action": "request.", "limit": 500})
    assert log.status == 200
    text = log.body.decode()
    actions = {e["action"] for e in log.json["entries"]}
    assert {"request.create", "request.open", "request.submit", "request.approve",
            "request.get"} <= actions
    assert not any(n in text or hyphenated(n) in text for n in USED)
