"""Collecting an employee's numbers in a real browser: an MA creates a
request and gets the handout (link and QR code); the employee, in a browser
of their own and without an account, opens the link, sees a wrong number
flagged as they type and refused by the server, adds a dependent, uploads two
document images and submits; the link then refuses a second use; the MA finds
the request in the queue, sees the documents beside the numbers and approves."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable

from playwright.sync_api import BrowserContext, FilePayload, Page, expect

from tests.support import Api, hyphenated, my_numbers, png, wrong_check_digit

# Numbers of this module only, never a real person's.
EMPLOYEE, CHILD = my_numbers(2, seed=0xC011EC7)


def spaced(number: str) -> str:
    return f"{number[:4]} {number[4:8]} {number[8:]}"


def attach_documents(page: Page) -> None:
    for field, name, colour in (
        ("number_document", "card-back.png", (40, 90, 170)),
        ("identity_document", "licence.png", (30, 140, 60)),
    ):
        document: FilePayload = {
            "name": name, "mimeType": "image/png", "buffer": png(160, 100, colour),
        }
        page.set_input_files(f"input[name={field}]", files=[document])


def test_request_link_submit_review_approve(
    as_role: Callable[[str], Page],
    new_context: Callable[..., BrowserContext],
    base_url: str,
    users: dict[str, Api],
    shot: Callable[[Page, str], object],
) -> None:
    code = "WEB-" + uuid.uuid4().hex[:6]

    # The MA asks for the employee's number.
    ma = as_role("MA")
    ma.goto(base_url + "/requests")
    expect(ma.locator("h1")).to_have_text("登録依頼")
    ma.click("#new-request")
    expect(ma).to_have_url(base_url + "/requests/new")
    ma.fill("input[name=name]", "画面 花子")
    ma.fill("input[name=name_kana]", "がめん はなこ")
    ma.fill("input[name=employee_code]", code)
    ma.check("input[name=purposes][value=employment_insurance]")
    ma.fill("input[name=expires_days]", "7")
    shot(ma, "new-request")
    ma.click("#create-request")

    # The handout: the link once, a QR code, printable; not a redirect.
    expect(ma.locator("#shown-once")).to_be_visible()
    expect(ma).to_have_url(base_url + "/requests/new")
    link = ma.locator("#request-link").inner_text().strip()
    assert link.startswith(base_url.replace("127.0.0.1", "127.0.0.1") + "/r/")
    assert (ma.locator("img.qr").get_attribute("src") or "").startswith("data:image/svg+xml")
    expect(ma.locator("#handout")).to_contain_text("画面 花子")
    expect(ma.locator("#handout")).to_contain_text("雇用保険届出事務")
    expect(ma.locator("[data-print]")).to_be_visible()
    shot(ma, "handout")

    # The employee opens the link in a browser of their own.
    employee = new_context().new_page()
    employee.goto(link)
    expect(employee.locator("h1")).to_have_text("マイナンバーの登録")
    expect(employee.locator("#link-name")).to_have_text("画面 花子")
    expect(employee.locator("#link-purposes")).to_contain_text("源泉徴収票作成事務")
    expect(employee.locator("nav.sidebar")).to_have_count(0)
    employee.fill("#number", wrong_check_digit(EMPLOYEE))
    employee.locator("#number").blur()
    expect(employee.locator("#number-check")).to_have_text(
        "正しい個人番号ではありません。数字を確認してください。"
    )
    shot(employee, "live-check")

    # The server checks too, whatever the browser did; the message has no number.
    attach_documents(employee)
    employee.click("#submit-request")
    expect(employee.locator(".error")).to_contain_text("チェックデジット")
    assert wrong_check_digit(EMPLOYEE) not in employee.locator(".error").inner_text()
    expect(employee.locator("#number")).to_have_attribute("aria-invalid", "true")
    assert wrong_check_digit(EMPLOYEE) not in employee.title()
    shot(employee, "server-refused")

    employee.fill("#number", hyphenated(EMPLOYEE))
    expect(employee.locator("#number-check")).to_have_text("")
    employee.select_option("#dep-1-relation", "child")
    employee.fill("#dep-1-name", "画面 一郎")
    employee.fill("#dep-1-kana", "ガメン イチロウ")
    employee.fill("#dep-1-birth", "2016-04-01")
    employee.fill("#dep-1-number", CHILD)
    attach_documents(employee)
    shot(employee, "filled-in")
    employee.click("#submit-request")
    expect(employee.locator("h1")).to_have_text("提出を受け付けました。ありがとうございました")
    shot(employee, "thanks")

    # The link works once.
    again = employee.goto(link)
    assert again is not None and again.status == 410
    expect(employee.locator("h1")).to_have_text("このリンクは無効です")
    shot(employee, "link-used")

    # The MA's queue, the documents beside the numbers, the approval.
    ma.goto(base_url + "/requests")
    queue = ma.locator("#approval-queue")
    expect(queue).to_contain_text("画面 花子")
    shot(ma, "queue")
    queue.get_by_role("link", name="画面 花子").click()
    expect(ma.locator("#entries")).to_contain_text(spaced(EMPLOYEE))
    expect(ma.locator("#entries")).to_contain_text(spaced(CHILD))
    expect(ma.locator("#entries")).to_contain_text("子")
    images = ma.locator("#documents img.document-image")
    expect(images).to_have_count(2)
    for i in range(2):
        expect(images.nth(i)).to_have_js_property("complete", True)
        assert images.nth(i).evaluate("img => img.naturalWidth") == 160
    assert EMPLOYEE not in ma.url and EMPLOYEE not in ma.title()
    shot(ma, "review")
    ma.once("dialog", lambda dialog: dialog.accept())
    ma.click("#approve")
    expect(ma.locator(".flash")).to_have_text("依頼を承認し、番号を登録しました。")
    expect(ma.locator("#request-state")).to_contain_text("登録済み")
    shot(ma, "approved")

    # The employee and the child are registered (masked for everyone).
    found = users["MU"].post("/subjects/lookup", {"number": CHILD}).json["subjects"]
    assert found and found[0]["kind"] == "dependent" and found[0]["code"] == f"{code}-1"
    assert found[0]["number_masked"] == "****-****-" + CHILD[-4:]


def test_mu_sees_status_only_and_reissues_a_sent_back_request(
    as_role: Callable[[str], Page],
    new_context: Callable[..., BrowserContext],
    users: dict[str, Api],
    anon: Api,
    base_url: str,
    shot: Callable[[Page, str], object],
) -> None:
    (number,) = my_numbers(1, seed=0xC011EC8)
    created = users["MU"].post("/requests", {
        "name": "差戻 次郎", "employee_code": "WEB-" + uuid.uuid4().hex[:6],
        "purposes": ["withholding_slip"]})
    assert created.status == 200, created.body
    request_id, token = created.json["request"]["id"], created.json["token"]
    sent = anon.post("/registration/submit", {
        "token": token, "entries": [{"relation": "self", "number": number}],
        "documents": [{"kind": k, "content": base64.b64encode(png()).decode()}
                      for k in ("number", "identity")]})
    assert sent.status == 200, sent.body
    review = users["MA"].get(f"/requests/{request_id}").json
    assert users["MA"].post(f"/requests/{request_id}/reject",
                            {"reason": "<b>画像が暗い</b>"}).status == 200

    mu = as_role("MU")
    mu.goto(f"{base_url}/requests/{request_id}")
    expect(mu.locator("#request-state")).to_contain_text("差戻し")
    expect(mu.locator("#reject-reason")).to_have_text("<b>画像が暗い</b>")  # escaped, not bold
    expect(mu.locator("#entries")).to_have_count(0)
    expect(mu.locator("#approve")).to_have_count(0)
    assert number not in mu.content()
    denied = mu.goto(f"{base_url}/requests/{request_id}/documents/{review['documents'][0]['id']}")
    assert denied is not None and denied.status == 403
    mu.goto(f"{base_url}/requests/{request_id}")
    shot(mu, "mu-status")
    mu.click("#reissue")
    new_link = mu.locator("#request-link").inner_text().strip()
    assert new_link.endswith("/r/" + token) is False and "/r/" in new_link
    shot(mu, "reissued-handout")

    # The old link says so, in the language the employee picks.
    employee = new_context().new_page()
    employee.goto(f"{base_url}/r/{token}")
    expect(employee.locator("h1")).to_have_text("このリンクは無効です")
    employee.click("button[lang=en]")
    expect(employee.locator("h1")).to_have_text("This link is no longer valid")
    employee.goto(new_link)
    expect(employee.locator("h1")).to_have_text("Register your My Number")
    shot(employee, "new-link-en")


def test_the_link_refuses_a_name_that_a_spreadsheet_would_run(
    new_context: Callable[..., BrowserContext],
    base_url: str,
    users: dict[str, Api],
    shot: Callable[[Page, str], object],
) -> None:
    made = users["MA"].post("/requests", {"name": "数式 花子", "employee_code":
                                          "WEBF-" + uuid.uuid4().hex[:6],
                                          "purposes": ["withholding_slip"]})
    assert made.status == 200, made.body
    employee = new_context().new_page()
    employee.goto(f"{base_url}/r/{made.json['token']}")
    own, child = my_numbers(2, seed=0xF0A11)
    employee.fill("#number", own)
    employee.select_option("#dep-1-relation", "child")
    employee.fill("#dep-1-name", "=SUM(A1:A9)")
    employee.fill("#dep-1-kana", "スウシキ")
    employee.fill("#dep-1-birth", "2016-04-01")
    employee.fill("#dep-1-number", child)
    attach_documents(employee)
    employee.click("#submit-request")
    expect(employee.locator(".error")).to_contain_text("扶養親族1")
    expect(employee.locator(".error")).to_contain_text("先頭に「=」「+」「-」「@」は使えません")
    expect(employee.locator("#dep-1-name")).to_have_attribute("aria-invalid", "true")
    shot(employee, "formula-name-refused")
    # Nothing was used up: the employee corrects the name and sends it.
    employee.fill("#dep-1-name", "数式 一郎")
    attach_documents(employee)
    employee.click("#submit-request")
    expect(employee.locator("h1")).to_have_text("提出を受け付けました。ありがとうございました")
