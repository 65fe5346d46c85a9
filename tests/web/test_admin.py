"""Administration in the browser: a DA creates another DA's account and sees
its one-time password once (accounts that see numbers are proposals:
tests/web/test_two_person_accounts.py), disables an account (its sessions end
at once); an SA changes the export threshold (a weakening: it waits for the
MA) and the allowed networks (at once) — a bad CIDR and a list without the
SA's own address are refused by name — and puts the policy back; a DA reads
the appliance's status and the certificate's expiry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from kura import tls
from kura.devserver import LocalAppliance
from tests.policy_support import set_policy
from tests.support import Api, propose_and_approve
from tests.web.conftest import VIEWPORT, session_cookie

Shot = Callable[[Page, str], Path]


@pytest.fixture(scope="module")
def page_as(
    browser: Browser, appliance: LocalAppliance, users: dict[str, Api]
) -> Iterator[Callable[[str], Page]]:
    """A page with the role's test session (no new sign-in: the DA's and the
    SA's second factor allows one per 30-second step). Never signs out."""
    contexts: list[BrowserContext] = []

    def make(role: str) -> Page:
        context = browser.new_context(viewport=VIEWPORT, ignore_https_errors=True,  # type: ignore[arg-type]
                                      locale="ja-JP")
        context.set_default_timeout(15_000)
        context.add_cookies([session_cookie(appliance.url, users[role].token or "")])  # type: ignore[list-item]
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def test_da_creates_an_account_and_sees_its_password_once(
    page_as: Callable[[str], Page], admin: Api, base_url: str, shot: Shot,
) -> None:
    page = page_as("DA")
    page.goto(base_url + "/admin/users")
    expect(page.locator("h1")).to_have_text("ユーザー管理")
    page.fill("#new-username", "web-admin-new")
    page.fill("#new-display-name", "<b>新人</b> 花子")
    page.select_option("#new-role", "DA")
    page.click("#create-user")
    expect(page.locator("h1")).to_have_text("アカウントを作成しました")
    password = page.locator("#one-time-password").inner_text().strip()
    assert len(password) >= 16
    shot(page, "account-created")
    # The password works (and must be changed), and it is never shown again.
    signed_in = admin.anonymous().post("/session", {"username": "web-admin-new",
                                                    "password": password})
    assert signed_in.status == 200 and signed_in.json["must_change_password"] is True
    page.click("#back-to-users")
    row = page.locator("#users tr[data-user='web-admin-new']")
    expect(row).to_contain_text("アプライアンス管理者")
    expect(row).to_contain_text("<b>新人</b> 花子")  # escaped, shown as typed
    expect(row).to_contain_text("パスワード変更待ち")
    assert password not in page.content()
    page.go_back()  # the page that showed it was not kept (no-store): not shown again
    assert password not in page.content()

    # The same name again is refused, with the typed values kept.
    page.goto(base_url + "/admin/users")
    page.fill("#new-username", "web-admin-new")
    page.click("#create-user")
    expect(page.locator(".error")).to_contain_text("使われています")
    expect(page.locator("#new-username")).to_have_value("web-admin-new")


def test_da_disables_an_account_and_its_session_ends(
    page_as: Callable[[str], Page], admin: Api, base_url: str, shot: Shot,
) -> None:
    password = propose_and_approve(admin, "web-admin-leaver", "MU")
    leaver = admin.sign_in("web-admin-leaver", password)
    assert leaver.get("/session").status == 200
    page = page_as("DA")
    page.goto(base_url + "/admin/users")
    row = page.locator("#users tr[data-user='web-admin-leaver']")
    questions: list[str] = []

    def confirm(dialog: object) -> None:
        questions.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.once("dialog", confirm)
    row.locator("button.disable").click()
    expect(page.locator(".flash")).to_have_text("アカウントを無効にしました。")
    assert "web-admin-leaver" in questions[0]
    expect(row.locator(".user-state")).to_contain_text("無効")
    assert leaver.get("/session").status == 401
    shot(page, "account-disabled")
    # The DA's own row offers no way to disable or demote itself.
    me = page.locator(f"#users tr[data-user='{admin.username}']")
    expect(me.locator("button.disable")).to_have_count(0)
    expect(me.locator("button.change-role")).to_have_count(0)


def test_sa_changes_the_export_threshold_and_networks_then_restores_them(
    page_as: Callable[[str], Page], users: dict[str, Api], base_url: str, shot: Shot,
) -> None:
    sa = users["SA"]
    original = sa.get("/policy").json["policy"]
    page = page_as("SA")
    try:
        page.goto(base_url + "/admin/policy")
        expect(page.locator("#export_approval_threshold")).to_have_value(
            str(original["export_approval_threshold"])
        )
        for role in original["mfa_roles"]:
            expect(page.locator(f"#mfa-{role}")).to_be_checked()
        shot(page, "policy")

        # A bad CIDR: refused by name, the typed values kept.
        page.fill("#export_approval_threshold", "250")
        page.fill("#allowed_networks", "127.0.0.0/8\n10.0.0.1/8")
        page.click("#save-policy")
        expect(page.locator(".error")).to_contain_text("CIDR")
        expect(page.locator("#allowed_networks")).to_have_value("127.0.0.0/8\n10.0.0.1/8")
        expect(page.locator("#allowed_networks")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#export_approval_threshold")).to_have_value("250")
        assert sa.get("/policy").json["policy"] == original
        shot(page, "policy-bad-cidr")

        # Networks without the SA's own address would lock it out: refused.
        page.fill("#allowed_networks", "10.0.0.0/8")
        page.click("#save-policy")
        expect(page.locator(".error")).to_contain_text("127.0.0.1")
        assert sa.get("/policy").json["policy"] == original

        page.fill("#allowed_networks", "10.0.0.0/8\n127.0.0.0/8\n::1/128")
        page.click("#save-policy")
        # Fewer networks apply at once; a higher threshold waits for the MA.
        expect(page.locator(".flash")).to_contain_text("もう一人の承認を待っています")
        expect(page.locator("#pending-fields tr[data-field=export_approval_threshold] .new")
               ).to_have_text("250")
        assert sa.get("/policy").json["policy"]["export_approval_threshold"] == (
            original["export_approval_threshold"])
        change = sa.get("/policy/changes").json["pending"]["id"]
        assert users["MA"].post(f"/policy/changes/{change}/approve", {}).status == 200
        page.reload()
        saved = sa.get("/policy").json["policy"]
        assert saved["export_approval_threshold"] == 250
        assert saved["allowed_networks"] == ["10.0.0.0/8", "127.0.0.0/8", "::1/128"]
        assert {k: v for k, v in saved.items()
                if k not in ("export_approval_threshold", "allowed_networks")} == {
            k: v for k, v in original.items()
            if k not in ("export_approval_threshold", "allowed_networks")}
        expect(page.locator("#allowed_networks")).to_have_value(
            "10.0.0.0/8\n127.0.0.0/8\n::1/128"
        )
    finally:
        set_policy(sa, original, users["MA"])
    assert sa.get("/policy").json["policy"] == original


def test_da_sees_the_appliance_status_and_certificate_expiry(
    page_as: Callable[[str], Page], appliance: LocalAppliance, base_url: str, shot: Shot,
) -> None:
    page = page_as("DA")
    page.goto(base_url + "/admin/status")
    expect(page.locator("#vault-state")).to_have_text("開封済み")
    expect(page.locator("#version")).not_to_be_empty()
    expiry = page.locator("#certificate-expiry")
    expect(expiry).to_contain_text("残り")
    expect(expiry.locator(".badge.ok")).to_be_visible()
    expect(page.locator("#certificate-fingerprint")).to_have_text(tls.fingerprint(appliance.cert))
    expect(page.locator("#storage tr[data-storage=keys]")).to_contain_text("%")
    expect(page.locator("#database-size")).to_contain_text("MB")
    assert int(page.locator("#open-sessions").inner_text()) >= 1
    shot(page, "status")
