"""The Security Admin's audit pages in the browser: the MU's reveal found in
the audit log with who, what, when, from where and why (and a number typed
into the search refused); the access history and its drill-down; the
handling-status ledger as it prints; the audit bundle downloaded, verified
in the vault and here, and a bundle with one byte changed caught."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from kura.console.web.rendering import TOKYO
from kura.core import audit
from kura.devserver import LocalAppliance
from tests.support import Api, hyphenated, my_numbers
from tests.web.conftest import VIEWPORT, session_cookie

Shot = Callable[[Page, str], Path]
NUMBERS = my_numbers(2, seed=4407)


@pytest.fixture(scope="module")
def page_as(
    browser: Browser, appliance: LocalAppliance, users: dict[str, Api]
) -> Iterator[Callable[[str], Page]]:
    """A page signed in with the role's test session, one browser context per
    test. Unlike the shared fixture it makes no new sign-in: the SA's second
    factor allows one sign-in per 30-second step, and a wait for each page
    would cost more than the tests themselves. These pages never sign out."""
    contexts: list[BrowserContext] = []

    def make(role: str) -> Page:
        context = browser.new_context(viewport=VIEWPORT, ignore_https_errors=True,  # type: ignore[arg-type]
                                      locale="ja-JP", accept_downloads=True)
        context.set_default_timeout(15_000)
        context.add_cookies([session_cookie(appliance.url, users[role].token or "")])  # type: ignore[list-item]
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def revealed(users: dict[str, Api]) -> dict[str, Any]:
    """A payee the MU registered and whose number it revealed for a purpose."""
    mu = users["MU"]
    r = mu.post("/payees", {"code": "WRPT-1", "name": "監査 見子", "number": NUMBERS[0]})
    assert r.status in (200, 201), r.body
    subject = r.json["subject"]
    shown = mu.post(f"/subjects/{subject['id']}/reveal", {"purpose": "payment_record"})
    assert shown.status == 200
    return subject


def test_sa_finds_the_mus_reveal_in_the_audit_log(
    page_as: Callable[[str], Page], users: dict[str, Api], revealed: dict[str, Any],
    base_url: str, shot: Shot,
) -> None:
    mu = users["MU"].username
    page = page_as("SA")
    page.goto(base_url + "/audit")
    expect(page.locator("h1")).to_have_text("監査ログ")
    page.fill("#actor", mu)
    page.select_option("#action", "subject.reveal")
    page.select_option("#outcome", "ok")
    page.click("#search-audit")
    row = page.locator("#audit-entries tbody tr", has_text=revealed["id"]).first
    expect(row).to_be_visible()
    today = datetime.now(TOKYO).strftime("%Y-%m-%d")
    expect(row.locator("td").nth(0)).to_contain_text(today)             # when
    expect(row.locator("td").nth(1)).to_have_text(mu)                   # who
    expect(row.locator("td").nth(2)).to_have_text("マイナンバー利用者")     # role
    expect(row.locator("td").nth(3)).to_contain_text("個人番号の表示")     # what
    expect(row.locator("td").nth(5)).to_have_text("支払調書作成事務")       # why
    expect(row.locator("td").nth(6)).to_have_text("成功")
    expect(row.locator("td").nth(7)).to_have_text("127.0.0.1")           # from where
    assert NUMBERS[0] not in page.content() and revealed["name"] not in page.content()
    shot(page, "audit-search")

    # On paper: the print header names the appliance and who printed it.
    page.emulate_media(media="print")
    expect(page.locator(".print-header")).to_be_visible()
    expect(page.locator(".print-header")).to_contain_text("kura-test-shared")
    expect(page.locator("form.search-bar")).to_be_hidden()
    page.emulate_media(media="screen")

    # Paging: the second page goes on exactly where the first ended, although
    # showing each page added an entry of its own.
    for _ in range(55):
        assert users["SA"].get("/audit", query={"limit": 1}).status == 200
    page.goto(base_url + "/audit")
    first = [int(s or 0) for s in page.locator("#audit-entries tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.seq)")]
    assert len(first) == 50 and first == sorted(first, reverse=True)
    page.click("#next-page")
    second = [int(s or 0) for s in page.locator("#audit-entries tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.seq)")]
    assert second[0] == first[-1] - 1
    expect(page.locator("#prev-page")).to_be_visible()

    # A number typed into the search is refused, and not shown back.
    response = page.goto(base_url + "/audit?actor=" + hyphenated(NUMBERS[1]))
    assert response is not None and response.status == 422
    expect(page.locator(".error")).to_contain_text("個人番号")
    expect(page.locator("#actor")).to_have_value("")
    assert NUMBERS[1] not in page.locator("main").inner_text().replace("-", "")
    shot(page, "audit-number-refused")


def test_access_history_per_user_and_drill_down(
    page_as: Callable[[str], Page], users: dict[str, Api], revealed: dict[str, Any],
    base_url: str, shot: Shot,
) -> None:
    mu = users["MU"].username
    page = page_as("SA")
    page.goto(base_url + "/reports/access")
    # The period defaults to this month up to today.
    today = datetime.now(TOKYO).date()
    expect(page.locator("#since")).to_have_value(today.replace(day=1).isoformat())
    expect(page.locator("#until")).to_have_value(today.isoformat())
    row = page.locator(f"#access-users tr[data-user='{mu}']")
    reveals = int(row.locator("td[data-category=reveal]").inner_text())
    assert reveals >= 1
    shot(page, "access-history")
    row.locator("a").click()
    expect(page.locator("#user-entries-title")).to_contain_text(mu)
    expect(page.locator("#user-entries tbody tr", has_text=revealed["id"]).first).to_contain_text(
        "個人番号の表示"
    )
    assert NUMBERS[0] not in page.content()
    page.emulate_media(media="print")
    expect(page.locator(".print-header")).to_contain_text(mu)
    shot(page, "access-history-print")


def test_ledger_prints_with_its_header(
    page_as: Callable[[str], Page], users: dict[str, Api], revealed: dict[str, Any],
    base_url: str, shot: Shot,
) -> None:
    page = page_as("MA")
    page.goto(base_url + "/reports/ledger")
    expect(page.locator("h1")).to_have_text("取扱状況台帳")
    payees = page.locator("#ledger-files tr[data-file=payee]")
    expect(payees).to_contain_text("個人支払先")
    assert int(payees.locator("td[data-field=held]").inner_text()) >= 1
    assert int(payees.locator("td[data-field=reveals]").inner_text()) >= 1
    expect(page.locator(f"#ledger-access tr[data-user='{users['MU'].username}']")).to_be_visible()
    expect(page.locator("#ledger-storage")).to_contain_text("AES-256-GCM")
    expect(page.locator("#print-ledger")).to_have_attribute("data-print", "")
    expect(page.locator(".print-header")).to_be_hidden()
    expect(page.locator(".signoff")).to_be_hidden()
    shot(page, "ledger")

    page.emulate_media(media="print")
    header = page.locator(".print-header")
    expect(header).to_be_visible()
    expect(header).to_contain_text("特定個人情報 取扱状況台帳")
    expect(header).to_contain_text("kura-test-shared")
    today = datetime.now(TOKYO).date()
    expect(header).to_contain_text(f"{today.replace(day=1).isoformat()} – {today.isoformat()}")
    expect(header).to_contain_text(users["MA"].username)          # printed by
    expect(header).to_contain_text(today.isoformat())             # printed at
    expect(page.locator("nav.sidebar")).to_be_hidden()
    expect(page.locator("#print-ledger")).to_be_hidden()
    expect(page.locator(".signoff")).to_be_visible()
    shot(page, "ledger-print")
    assert NUMBERS[0] not in page.content() and revealed["name"] not in page.content()


def test_audit_bundle_download_verification_and_a_tampered_upload(
    page_as: Callable[[str], Page], base_url: str, shot: Shot, tmp_path: Path,
) -> None:
    page = page_as("SA")
    page.goto(base_url + "/audit/export")
    chain = page.locator("#chain-result")
    expect(chain).to_contain_text("改ざんなし")
    assert int(page.locator("#chain-entries").inner_text()) > 0
    shot(page, "audit-export")

    with page.expect_download() as info:
        page.click("#download-bundle")
    download = info.value
    assert re.fullmatch(r"kura-test-shared-audit-\d{8}-\d{6}\.jsonl", download.suggested_filename)
    bundle = tmp_path / "bundle.jsonl"
    download.save_as(bundle)
    assert audit.verify_bundle(bundle).ok

    page.set_input_files("#bundle", str(bundle))
    page.click("#verify-bundle")
    result = page.locator("#bundle-result")
    expect(result).to_contain_text("改ざんなし")
    expect(result).to_contain_text("bundle.jsonl")

    # One byte of one entry changed (its actor), everything else intact.
    lines = bundle.read_bytes().split(b"\n")
    index = next(i for i, line in enumerate(lines) if b'"type":"entry"' in line and
                 b'"seq":3,' in line)
    changed = lines[index].replace(b'"actor":"', b'"actor":"X', 1)
    assert changed != lines[index]
    lines[index] = changed
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"\n".join(lines))
    page.set_input_files("#bundle", str(tampered))
    page.click("#verify-bundle")
    expect(result).to_contain_text("検証失敗")
    expect(page.locator("#bundle-problem")).to_contain_text("記録 3")
    expect(page.locator("#bundle-first-bad")).to_have_text("3")
    shot(page, "audit-bundle-tampered")
