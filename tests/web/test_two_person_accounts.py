"""Two people for a number handler's account, in the browser (issue 10): the
DA proposes an MU and is shown only the first half of its activation code;
an SA, seeing the proposal on the home page, approves it and is shown the
second half; the holder joins both on /activate, sets a password of their
own, signs in and is made to enrol a TOTP second factor before anything
else; the SA's home page then shows the first sign-in, and the ledger's
取扱者 list who proposed and who approved the account."""

from __future__ import annotations

import time
from collections.abc import Callable

from playwright.sync_api import BrowserContext, Page, expect

from tests.support import Api, fresh_totp

RATE_LIMITED = "ログイン試行が多すぎます"

USERNAME = "web-two-person-mu"
PASSWORD = "Holder-Own-Pass!2026"


def sign_in_through_the_form(page: Page, username: str, password: str) -> None:
    """Sign in on the page as a person does. The console allows ten sign-ins a
    minute from one address, and every browser test signs in from 127.0.0.1:
    when the modules before this one used them up, wait the minute the page
    asks for, as a person would, and sign in again."""
    for _ in range(2):
        page.fill("#username", username)
        page.fill("#password", password)
        page.click("button[type=submit].primary")
        page.wait_for_load_state()
        if RATE_LIMITED not in page.content():
            return
        time.sleep(61)
    raise AssertionError("still rate-limited after waiting a minute")


def test_da_proposes_sa_approves_holder_activates_and_enrols_totp(
    as_role: Callable[..., Page], users: dict[str, Api], base_url: str,
    new_context: Callable[..., BrowserContext], shot: Callable[[Page, str], object],
) -> None:
    da = as_role("DA")
    da.goto(base_url + "/admin/users")
    da.fill("#new-username", USERNAME)
    da.fill("#new-display-name", "二人 承認")
    da.select_option("#new-role", "MU")
    da.click("#create-user")
    expect(da.locator("h1")).to_have_text("変更を申請しました")
    expect(da.locator("#waiting")).to_contain_text("承認")
    half_a = da.locator("#half-a").inner_text().strip()
    assert len(half_a.replace("-", "")) == 12
    shot(da, "proposed")
    da.click("#back-to-users")
    # Waiting, not an account: listed as a proposal the DA may cancel.
    expect(da.locator(f"#pending-proposals tr[data-user='{USERNAME}']")).to_be_visible()
    expect(da.locator(f"#users tr[data-user='{USERNAME}']")).to_have_count(0)
    assert half_a not in da.content()

    sa = as_role("SA")
    sa.goto(base_url + "/")
    expect(sa.locator("#home-proposals")).to_contain_text(USERNAME)
    sa.click("#home-approvals-link")
    expect(sa.locator("h1")).to_have_text("アカウント変更の承認")
    row = sa.locator(f"#proposals tr[data-user='{USERNAME}']")
    expect(row).to_contain_text(users["DA"].username)
    shot(sa, "approvals")
    row.locator("button.approve").click()
    expect(sa.locator("h1")).to_have_text("変更を承認しました")
    half_b = sa.locator("#half-b").inner_text().strip()
    assert half_b and half_b != half_a
    shot(sa, "approved")

    holder = new_context().new_page()
    holder.goto(base_url + "/activate")
    expect(holder.locator("h1")).to_have_text("アカウントの有効化")
    holder.fill("#username", USERNAME)
    holder.fill("#half_a", half_a)
    holder.fill("#half_b", half_a)  # the first half twice: refused
    holder.fill("#new", PASSWORD)
    holder.fill("#again", PASSWORD)
    holder.click("#activate")
    expect(holder.locator(".error")).to_contain_text("有効化コード")
    holder.fill("#half_a", half_a)
    holder.fill("#half_b", half_b)
    holder.fill("#new", PASSWORD)
    holder.fill("#again", PASSWORD)
    shot(holder, "activate")
    holder.click("#activate")
    expect(holder).to_have_url(base_url + "/login")
    expect(holder.locator(".flash")).to_contain_text("有効になりました")
    sign_in_through_the_form(holder, USERNAME, PASSWORD)
    # A second factor first: every other page sends the holder back here.
    expect(holder).to_have_url(base_url + "/account/totp")
    holder.goto(base_url + "/search")
    expect(holder).to_have_url(base_url + "/account/totp")
    secret = holder.locator("#totp-secret").inner_text().strip()
    holder.fill("#code", fresh_totp(secret))
    holder.click("button.primary")
    expect(holder).to_have_url(base_url + "/")
    expect(holder.locator("nav.sidebar")).to_contain_text("検索")
    shot(holder, "holder-home")

    # The SA sees the new number handler's first sign-in, with who proposed and approved.
    sa.goto(base_url + "/")
    first = sa.locator(f"#home-first-logins tr[data-user='{USERNAME}']")
    expect(first).to_contain_text(users["DA"].username)
    expect(first).to_contain_text(users["SA"].username)
    shot(sa, "first-sign-in")

    # The ledger's 取扱者 list names who proposed and who approved the account.
    sa.goto(base_url + "/reports/ledger")
    handler = sa.locator(f"#ledger-access tr[data-user='{USERNAME}']")
    expect(handler.locator(".account-change")).to_contain_text(
        f"申請 {users['DA'].username}・承認 {users['SA'].username}")
