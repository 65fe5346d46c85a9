"""The whole story of one employee's My Number, in a real browser, as the
issue tells it: an MA creates a registration request; the employee opens
the one-time link without an account and submits their number, a
dependent's and two document images; the MA compares the documents with the
numbers and approves; an MU finds the employee, reveals the number for a
purpose and exports a Shift_JIS CSV for the withholding slips (decoded and
checked here); the employee leaves, and after the retention period the
subject is proposed for disposal and an MA approves it; the SA finds every
step in the audit log and in the access report. A screenshot of every page
goes to test-artifacts/web/test_the_whole_story/."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, expect

from tests.support import Api, hyphenated, my_numbers, png, wrong_check_digit

Shot = Callable[[Page, str], Path]


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def test_the_whole_story(
    as_role: Callable[[str], Page], new_context: Callable[..., BrowserContext],
    users: dict[str, Api], base_url: str, shot: Shot, tmp_path: Path,
) -> None:
    started = datetime.now(UTC).isoformat()
    rng = random.Random()
    own, spouse = my_numbers(2, seed=rng.randrange(1 << 30))
    code = f"E-STORY-{rng.randrange(10**6):06d}"
    visited: list[str] = []

    # 1. The MA creates the registration request and prints the handout.
    ma = as_role("MA")
    ma.on("framenavigated", lambda frame: visited.append(frame.url))
    ma.goto(base_url + "/requests/new")
    shot(ma, "ma-new-request")
    ma.fill("[name=name]", "山田 太郎")
    ma.fill("[name=name_kana]", "ヤマダ タロウ")
    ma.fill("[name=employee_code]", code)
    for purpose in ("withholding_slip", "salary_report", "dependents"):
        ma.check(f"[name=purposes][value={purpose}]")
    ma.click("#create-request")
    link = ma.locator("#request-link").inner_text().strip()
    assert "/r/" in link
    expect(ma.locator("img.qr")).to_be_visible()
    shot(ma, "ma-handout")

    # 2. The employee opens the link in a browser of their own, no account.
    employee = new_context().new_page()
    employee.on("framenavigated", lambda frame: visited.append(frame.url))
    employee.goto(link)
    expect(employee.locator("main")).to_contain_text("源泉徴収票")
    employee.fill("#number", wrong_check_digit(own))
    employee.locator("#number").blur()
    expect(employee.locator("#number")).to_have_attribute("aria-invalid", "true")
    shot(employee, "employee-wrong-digit")
    employee.fill("#number", hyphenated(own))
    employee.locator("#number").blur()
    expect(employee.locator("#number")).to_have_attribute("aria-invalid", "false")
    employee.select_option("[name=dep-1-relation]", "spouse")
    employee.fill("[name=dep-1-name]", "山田 花子")
    employee.fill("[name=dep-1-kana]", "ヤマダ ハナコ")
    employee.fill("[name=dep-1-birth]", "1990-04-01")
    employee.fill("[name=dep-1-number]", spouse)
    employee.set_input_files("[name=number_document]", files=[
        {"name": "card-back.png", "mimeType": "image/png", "buffer": png(120, 76, (40, 90, 160))}])
    employee.set_input_files("[name=identity_document]", files=[
        {"name": "licence.png", "mimeType": "image/png", "buffer": png(120, 76, (160, 90, 40))}])
    shot(employee, "employee-form")
    employee.click("#submit-request")
    expect(employee.locator("h1")).not_to_contain_text("エラー")
    shot(employee, "employee-thanks")
    # The link has done its work: opening it again is refused.
    response = employee.goto(link)
    assert response is not None and response.status == 410
    shot(employee, "employee-link-used")

    # 3. The MA compares the documents with the numbers and approves.
    ma.goto(base_url + "/requests")
    ma.locator(f"#queue-table tr:has-text('{code}') a").first.click()
    expect(ma.locator("main")).to_contain_text(own[-4:])
    images = ma.locator("main img")
    expect(images).to_have_count(2)
    for i in range(2):
        assert images.nth(i).evaluate("img => img.complete && img.naturalWidth") == 120
    shot(ma, "ma-review")
    ma.once("dialog", lambda dialog: dialog.accept())  # "Register these numbers?"
    ma.click("#approve")
    expect(ma.locator(".flash")).to_be_visible()
    expect(ma.locator(".state-approved").first).to_be_visible()
    shot(ma, "ma-approved")

    # 4. An MU finds the employee by kana, reveals the number for a purpose.
    mu = as_role("MU")
    mu.on("framenavigated", lambda frame: visited.append(frame.url))
    mu.goto(base_url + "/search")
    mu.fill("#query", "ヤマダ タロウ")
    mu.click("#search-button")
    row = mu.locator(f"tr[data-subject-id]:has-text('{code}')")
    expect(row).to_have_count(1)
    expect(row.locator("td.masked")).to_have_text(f"****-****-{own[-4:]}")
    shot(mu, "mu-search")
    # …and by number: the number goes in the form, never in the address.
    mu.fill("#query", own)
    mu.click("#search-button")
    expect(mu.locator(f"tr[data-subject-id]:has-text('{code}')")).to_have_count(1)
    mu.locator(f"tr[data-subject-id]:has-text('{code}') a").first.click()
    subject_url = mu.url
    mu.select_option("#purpose", "withholding_slip")
    mu.click("#reveal-button")
    expect(mu.locator("#revealed-number")).to_be_visible()
    assert digits(mu.locator("#revealed-number").inner_text()) == own
    assert own not in mu.title()
    shot(mu, "mu-revealed")

    # 5. The MU exports the withholding-slip CSV in Shift_JIS and checks it.
    mu.goto(base_url + "/exports")
    mu.select_option("#export-purpose", "withholding_slip")
    mu.select_option("#export-kind", "employee")
    mu.check("[name=encoding][value=shift_jis]")
    mu.click("#prepare-export")
    shot(mu, "mu-export-prepared")
    with mu.expect_download() as download_info:
        mu.click("#download-export")
    path = download_info.value.path()
    content = Path(path).read_bytes()
    rows = list(csv.reader(io.StringIO(content.decode("cp932"))))
    ours = [r for r in rows if code in r]
    assert len(ours) == 1 and own in ours[0] and "山田 太郎" in ours[0]
    shot(mu, "mu-export-downloaded")

    # 6. The employee left long ago: the MA records it; the MU proposes the
    #    disposal, the MA approves; the number is gone.
    subject_id = subject_url.rstrip("/").rsplit("/", 1)[1]
    ma.goto(subject_url)
    expect(ma.locator("#reveal-button")).to_have_count(0)  # an MA never reveals
    ma.fill("#retention-event", "2015-03-31")
    ma.click("#correct-button")
    expect(ma.locator(".flash")).to_have_text("記録を訂正しました。")
    expect(ma.locator("#disposal-due")).to_be_visible()
    shot(ma, "ma-corrected")
    mu.goto(base_url + "/disposal")
    due = mu.locator(f"tr[data-subject-id='{subject_id}']")
    expect(due).to_have_count(1)
    due.locator("input[name=subject]").check()
    shot(mu, "mu-disposal-due")
    mu.click("#propose-disposal")
    ma.goto(base_url + "/disposal")
    approve = ma.locator("[id^=approve-batch-]").first
    ma.once("dialog", lambda dialog: dialog.accept())
    approve.click()
    shot(ma, "ma-disposal-approved")
    gone = users["MU"].post("/subjects/lookup", {"number": own})
    assert gone.status == 404 or gone.json.get("subjects") == [], gone.body
    ma.goto(base_url + "/disposal/records")
    expect(ma.locator("main table")).to_contain_text(users["MU"].username)
    shot(ma, "ma-disposal-records")

    # 7. The SA sees every step in the audit log and the access report.
    sa = as_role("SA")
    sa.goto(base_url + "/audit")
    text = sa.locator("main").inner_text()
    shot(sa, "sa-audit")
    sa.goto(base_url + "/reports/access")
    expect(sa.locator("main")).to_contain_text(users["MU"].username)
    shot(sa, "sa-access-report")
    sa_audit = users["SA"].get("/audit", query={"since": started, "limit": 500}).json
    actions = {e["action"] for e in sa_audit["entries"]}
    for step in ("request.create", "request.submit", "request.approve", "subject.reveal",
                 "export.download", "disposal.propose", "disposal.decide"):
        assert step in actions, f"{step} is missing from the audit log"
    assert text  # the page rendered the log

    # Never a number in an address the browsers went to, or in the audit.
    for url in visited:
        assert own not in digits(url) and spouse not in digits(url), url
    assert own not in str(sa_audit) and spouse not in str(sa_audit)
