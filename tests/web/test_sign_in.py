"""Signing in through the browser: password, the forced change at first
sign-in, TOTP enrolment and the code at the next sign-in, wrong passwords
and the lockout message, sign-out, the language switch, and the headers and
cookies every page carries."""

from __future__ import annotations

from collections.abc import Callable

import pyotp
from playwright.sync_api import BrowserContext, Page, expect

from tests.support import Api, fresh_totp, propose_and_approve


def sign_in(page: Page, base: str, username: str, password: str, code: str = "") -> None:
    page.goto(base + "/login")
    page.fill("#username", username)
    page.fill("#password", password)
    if code:
        page.fill("#totp", code)
    page.click("button[type=submit].primary")


def test_first_sign_in_changes_password_and_enrols_totp(
    admin: Api, base_url: str, new_context: Callable[..., BrowserContext],
    shot: Callable[[Page, str], object],
) -> None:
    # A new DA (the only account the DA makes alone, with a one-time password;
    # MFA required by the default policy) signs in for the first time. The
    # other roles activate on /activate: tests/web/test_two_person_accounts.py.
    created = admin.post("/users", {"username": "web-sa-first", "role": "DA"})
    assert created.status == 200, created.body
    one_time = created.json["password"]
    page = new_context().new_page()
    page.goto(base_url + "/")
    expect(page).to_have_url(base_url + "/login")
    expect(page.locator("h1")).to_have_text("ログイン")
    shot(page, "login")
    sign_in(page, base_url, "web-sa-first", one_time)
    expect(page).to_have_url(base_url + "/account/password")
    # Every page is out of reach until the password is changed.
    page.goto(base_url + "/")
    expect(page).to_have_url(base_url + "/account/password")
    shot(page, "forced-change")
    page.fill("#current", one_time)
    page.fill("#new", "short")
    page.fill("#again", "short")
    page.click("button.primary")
    expect(page.locator(".error")).to_contain_text("パスワード")
    new_password = "Web-First-Change!2026x"
    page.fill("#current", one_time)
    page.fill("#new", new_password)
    page.fill("#again", new_password)
    page.click("button.primary")
    expect(page).to_have_url(base_url + "/account/totp")
    secret = page.locator("#totp-secret").inner_text().strip()
    assert page.locator("img.qr").get_attribute("src", timeout=5000).startswith("data:image/svg")
    shot(page, "totp-enrol")
    page.fill("#code", "000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    page.click("button.primary")
    expect(page.locator(".error")).to_be_visible()
    # A failed confirmation starts over with a new key.
    secret = page.locator("#totp-secret").inner_text().strip()
    page.fill("#code", fresh_totp(secret))
    page.click("button.primary")
    expect(page).to_have_url(base_url + "/")
    expect(page.locator(".flash")).to_have_text("二要素認証を設定しました。")
    expect(page.locator("nav.sidebar")).to_contain_text("ユーザー")
    shot(page, "home-da")
    # Sign out, then sign in again: now the code is required.
    page.click("#sign-out")
    expect(page).to_have_url(base_url + "/login?signed_out=1")
    expect(page.locator(".notice")).to_have_text("ログアウトしました。")
    sign_in(page, base_url, "web-sa-first", new_password)
    expect(page.locator(".error")).to_contain_text("確認コード")
    sign_in(page, base_url, "web-sa-first", new_password, fresh_totp(secret))
    expect(page).to_have_url(base_url + "/")


def test_wrong_password_then_lockout_message(
    admin: Api, base_url: str, new_context: Callable[..., BrowserContext],
    shot: Callable[[Page, str], object],
) -> None:
    password = propose_and_approve(admin, "web-mu-locked", "MU")
    page = new_context().new_page()
    for _ in range(4):
        sign_in(page, base_url, "web-mu-locked", "wrong-password-123")
        expect(page.locator(".error")).to_have_text(
            "ユーザー名、パスワードまたは確認コードが正しくありません。"
        )
    sign_in(page, base_url, "web-mu-locked", "wrong-password-123")
    expect(page.locator(".error")).to_contain_text("ロック")
    # Even the right password is refused while locked.
    sign_in(page, base_url, "web-mu-locked", password)
    expect(page.locator(".error")).to_contain_text("ロック")
    shot(page, "locked")


def test_language_switch_is_kept_per_user(
    as_role: Callable[..., Page], base_url: str, shot: Callable[[Page, str], object],
) -> None:
    page = as_role("MU")
    page.goto(base_url + "/")
    expect(page.locator("nav.sidebar")).to_contain_text("検索")
    page.click("button[lang=en]")
    expect(page.locator("nav.sidebar")).to_contain_text("Search")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    shot(page, "home-mu-en")
    # A new session of the same user (another browser) opens in English too.
    other = as_role("MU", fresh=True)
    other.goto(base_url + "/")
    expect(other.locator("html")).to_have_attribute("lang", "en")
    other.click("button[lang=ja]")
    expect(other.locator("nav.sidebar")).to_contain_text("検索")


def test_every_page_carries_the_security_headers_and_cookie_flags(
    base_url: str, new_context: Callable[..., BrowserContext]
) -> None:
    context = new_context()
    page = context.new_page()
    response = page.goto(base_url + "/login")
    assert response is not None
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["strict-transport-security"].startswith("max-age=")
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    cookies = {c["name"]: c for c in context.cookies()}
    pre = cookies["kura_pre"]
    assert pre["secure"] and pre["httpOnly"] and pre["sameSite"] == "Strict"


def test_signed_in_cookie_is_strict_and_sign_out_ends_the_session(
    as_role: Callable[..., Page], base_url: str
) -> None:
    page = as_role("MA", fresh=True)
    page.goto(base_url + "/")
    cookie = next(c for c in page.context.cookies() if c["name"] == "kura_session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.click("#sign-out")
    expect(page).to_have_url(base_url + "/login?signed_out=1")
    # The old token is dead in the vault, not only forgotten by the browser.
    page.context.add_cookies([{**cookie}])  # type: ignore[list-item]
    page.goto(base_url + "/")
    expect(page).to_have_url(base_url + "/login")
