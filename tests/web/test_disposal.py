"""Disposal in the browser: an MU proposes from the due list, an MA approves
(after the "cannot be undone" question), the records page shows the record
and prints it with its print layout; an MA never gets an approve button on
their own proposal; the SA edits the retention rules and a bad value comes
back with a message. No page breaks its Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from tests.support import Api, my_numbers

NUMBERS = my_numbers(6, seed=4506)


def csp_watch(page: Page) -> list[str]:
    """Collects the browser's complaints about the page (CSP violations among them)."""
    problems: list[str] = []

    def seen(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(msg.text)

    page.on("console", seen)
    return problems


@pytest.fixture(scope="module")
def story(users: dict[str, Api]) -> dict[str, Any]:
    """An employee (who left in 2015) with a dependent, and a payee last paid
    in 2016: all due today. And a payee for the MA's own proposal."""
    mu, ma = users["MU"], users["MA"]
    made: dict[str, Any] = {}
    bodies = {
        "employee": {"kind": "employee", "code": "WDSP-E1", "name": "画面 廃棄"},
        "child": {"kind": "dependent", "code": "WDSP-E1-1", "name": "画面 子",
                  "employee_code": "WDSP-E1"},
        "payee": {"kind": "payee", "code": "WDSP-P1", "name": "画面 支払"},
        "own": {"kind": "payee", "code": "WDSP-P2", "name": "画面 自己"},
    }
    for (key, body), number in zip(bodies.items(), NUMBERS, strict=False):
        r = mu.post("/subjects", {**body, "number": number})
        assert r.status == 201, r.body
        made[key] = r.json["subject"]
    for key, event in (("employee", "2015-09-30"), ("payee", "2016-02-29"), ("own", "2012-01-01")):
        r = ma.patch(f"/subjects/{made[key]['id']}", {"retention_event": event})
        assert r.status == 200, r.body
    return made


def test_propose_approve_and_print_the_record(
    as_role: Callable[[str], Page], base_url: str, users: dict[str, Api],
    story: dict[str, Any], shot: Callable[[Page, str], object],
) -> None:
    employee, child, payee = story["employee"], story["child"], story["payee"]

    # The MU sees what is due, with the dates, and proposes two of them.
    mu = as_role("MU")
    problems = csp_watch(mu)
    mu.goto(base_url + "/disposal")
    expect(mu.locator("h1")).to_have_text("廃棄")
    row = mu.locator(f"#due-list tr[data-subject-id='{employee['id']}']")
    expect(row).to_contain_text("WDSP-E1")
    expect(row).to_contain_text("2015-09-30")
    expect(row).to_contain_text("2023-01-11")  # 11 January 2016 + 7 years
    expect(mu.locator(f"tr[data-subject-id='{child['id']}']")).to_contain_text(
        "社員 WDSP-E1 と一緒に")
    expect(mu.locator(f"tr[data-subject-id='{payee['id']}']")).to_contain_text("2023-03-01")
    shot(mu, "due-list")
    mu.check(f"input[name=subject][value='{employee['id']}']")
    mu.check(f"input[name=subject][value='{payee['id']}']")
    mu.click("#propose-disposal")
    expect(mu.locator(".flash")).to_have_text(
        "廃棄を申請しました。マイナンバー管理者の承認が必要です。")
    # The MU cannot approve: no button, and the dependent came along.
    batch = next(b for b in users["MA"].get("/disposals", query={"state": "proposed"})
                 .json["batches"] if employee["id"] in {s["id"] for s in b["subjects"]})
    assert batch["subject_count"] == 3
    expect(mu.locator(f"#batch-{batch['id']}")).to_contain_text("承認待ち")
    expect(mu.locator(f"#approve-batch-{batch['id']}")).to_have_count(0)
    expect(mu.locator(f"#due-list tr[data-subject-id='{child['id']}']")).to_contain_text("申請中")
    shot(mu, "proposed")

    # The MA approves, after confirming that it cannot be undone.
    ma = as_role("MA")
    problems += csp_watch(ma)
    ma.goto(base_url + "/disposal")
    card = ma.locator(f"#batch-{batch['id']}")
    for subject in (employee, child, payee):
        expect(card.locator(f"tr[data-subject-id='{subject['id']}']")).to_be_visible()
    shot(ma, "to-approve")
    questions: list[str] = []

    def answer(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    ma.once("dialog", answer)
    ma.click(f"#approve-batch-{batch['id']}")
    expect(ma.locator(".flash")).to_have_text(
        "廃棄を承認しました。対象者の鍵とデータは破棄されました。")
    assert "元に戻すことはできません" in questions[0]
    expect(ma.locator(f"tr[data-subject-id='{employee['id']}']")).to_have_count(0)
    expect(ma.locator(f"#batch-{batch['id']}")).to_contain_text("承認・廃棄済み")
    shot(ma, "approved")

    # The record: kinds, counts, who; never a name. Printable.
    ma.goto(base_url + "/disposal/records")
    lines = ma.locator(f"#disposal-records tr[data-batch-id='{batch['id']}']")
    expect(lines).to_have_count(3)
    expect(lines.filter(has_text="扶養親族")).to_contain_text("1")
    for line in lines.all():
        expect(line).to_contain_text(users["MU"].username)
        expect(line).to_contain_text(users["MA"].username)
        expect(line).to_contain_text("暗号消去")
    text = ma.locator("main").inner_text()
    for subject in (employee, child, payee):
        assert subject["name"] not in text
    for number in NUMBERS:
        assert number not in ma.content()
    expect(ma.locator("#print-records")).to_have_attribute("data-print", "")
    expect(ma.locator("#print-header")).to_be_hidden()
    shot(ma, "records")
    ma.emulate_media(media="print")
    expect(ma.locator("#print-header")).to_be_visible()
    expect(ma.locator("#print-header")).to_contain_text("特定個人情報の廃棄記録")
    expect(ma.locator("#print-header")).to_contain_text("kura-test-shared")
    expect(ma.locator("#signatures .signature-box")).to_have_count(3)
    expect(ma.locator("#signatures")).to_be_visible()
    expect(ma.locator("nav.sidebar")).to_be_hidden()
    expect(ma.locator("#print-records")).to_be_hidden()
    shot(ma, "records-print")
    ma.emulate_media(media="screen")
    assert not [p for p in problems if "Content Security Policy" in p], problems


def test_an_ma_may_withdraw_but_not_approve_their_own_proposal(
    as_role: Callable[[str], Page], base_url: str, users: dict[str, Api],
    story: dict[str, Any], shot: Callable[[Page, str], object],
) -> None:
    own = story["own"]
    r = users["MA"].post("/disposals", {"subject_ids": [own["id"]]})
    assert r.status == 200, r.body
    batch_id = r.json["batch"]["id"]
    ma = as_role("MA")
    ma.goto(base_url + "/disposal")
    card = ma.locator(f"#batch-{batch_id}")
    expect(card).to_contain_text("あなたが申請したもの")
    expect(ma.locator(f"#approve-batch-{batch_id}")).to_have_count(0)
    shot(ma, "own-proposal")
    ma.fill(f"#reason-{batch_id}", "対象の選択誤り")
    ma.click(f"#reject-batch-{batch_id}")
    expect(ma.locator(".flash")).to_have_text("廃棄申請を却下しました。")
    expect(ma.locator(f"#batch-{batch_id}")).to_contain_text("却下（廃棄せず）")
    expect(ma.locator(f"#batch-{batch_id}")).to_contain_text("対象の選択誤り")
    # The subject is still there and can be proposed again.
    expect(ma.locator(f"input[name=subject][value='{own['id']}']")).to_be_visible()


def test_the_sa_edits_the_rules(
    as_role: Callable[[str], Page], base_url: str, users: dict[str, Api],
    shot: Callable[[Page, str], object],
) -> None:
    sa = as_role("SA")
    sa.goto(base_url + "/retention")
    expect(sa.locator("#retention-rules tr[data-basis='employment']")).to_contain_text(
        "事由の翌年1月11日から")
    expect(sa.locator("#retention-rules tr[data-basis='employment']")).to_contain_text(
        "2034-01-11")
    sa.fill("#keep_years-contract", "101")
    sa.click("#save-retention")
    expect(sa.locator(".error")).to_contain_text("0〜100")
    expect(sa.locator("#keep_years-contract")).to_have_attribute("aria-invalid", "true")
    expect(sa.locator("#keep_years-contract")).to_have_value("101")
    shot(sa, "bad-rule")
    try:
        sa.fill("#keep_years-contract", "5")
        sa.select_option("#anchor-contract", "jan11_next_year")
        sa.click("#save-retention")
        expect(sa.locator(".flash")).to_have_text("保存期間ルールを保存しました。")
        expect(sa.locator("#keep_years-contract")).to_have_value("5")
        expect(sa.locator("#retention-rules tr[data-basis='contract']")).to_contain_text(
            "2032-01-11")
        shot(sa, "rules-saved")
    finally:
        back = users["SA"].put("/retention-rules/contract", {"keep_years": 7, "anchor": "event"})
        assert back.status == 200
    # The others read the rules without a form.
    mu = as_role("MU")
    mu.goto(base_url + "/retention")
    expect(mu.locator("#retention-rules tr[data-basis='contract']")).to_contain_text("7")
    expect(mu.locator("#save-retention")).to_have_count(0)
