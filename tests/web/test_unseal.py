"""A sealed vault in the browser: clerks see a clear "sealed" page and cannot
sign in; custodians enter their shares one by one on the unseal page and see
the progress; with the last share the vault opens and sign-in works. A wrong
share is refused with a message in the visitor's language."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, activate
from tests.web.conftest import session_cookie


@pytest.fixture(scope="module")
def sealed_appliance() -> Iterator[LocalAppliance]:
    app = new_appliance("sealed", seal="shamir:2/3")
    app.start()
    yield app
    app.stop()


def test_custodians_unseal_share_by_share(
    sealed_appliance: LocalAppliance, new_context: Callable[..., BrowserContext],
    shot: Callable[[Page, str], object],
) -> None:
    base = sealed_appliance.url
    shares = sealed_appliance.shares
    assert len(shares) == 3
    page = new_context().new_page()
    page.goto(base + "/")
    # Not signed in → sign-in → the vault is sealed: the sealed page instead.
    expect(page).to_have_url(base + "/sealed")
    expect(page.locator("h1")).to_have_text("保管庫は封印されています")
    expect(page.locator("main")).to_contain_text("2 件中 0 件")
    shot(page, "sealed")
    page.click("text=鍵管理者の方: シェアを入力する")
    expect(page).to_have_url(base + "/unseal")
    # A share that is not one of the appliance's: refused, nothing counted.
    page.fill("#share", "not a share at all")
    page.click("button.primary")
    expect(page.locator(".error")).to_be_visible()
    expect(page.locator("#share-progress")).to_contain_text("2 件中 0 件")
    shot(page, "wrong-share")
    page.fill("#share", shares[0])
    page.click("button.primary")
    expect(page.locator(".flash")).to_have_text("シェアを受け付けました。")
    expect(page.locator("#share-progress")).to_contain_text("2 件中 1 件")
    assert page.locator("progress").get_attribute("value") == "1"
    shot(page, "one-share")
    # The share never comes back in the page: the field is empty again.
    assert page.locator("#share").input_value() == ""
    assert shares[0] not in page.content()
    # A second custodian, in another browser, enters theirs: the vault opens.
    other = new_context().new_page()
    other.goto(base + "/unseal")
    other.fill("#share", shares[2])
    other.click("button.primary")
    expect(other).to_have_url(base + "/login")
    expect(other.locator(".flash")).to_have_text("保管庫が開封されました。")
    expect(other.locator("h1")).to_have_text("ログイン")
    shot(other, "opened")
    # The first custodian's page now says so too.
    page.goto(base + "/unseal")
    expect(page).to_have_url(base + "/login")
    expect(page.locator(".flash")).to_have_text("保管庫が開封されました。")


def test_a_signed_in_da_is_sent_to_the_unseal_page_after_a_restart(
    sealed_appliance: LocalAppliance, new_context: Callable[..., BrowserContext],
) -> None:
    app = sealed_appliance
    if app.vault_call_sync("status")["sealed"]:
        for share in app.shares[:2]:
            app.vault_call_sync("unseal", {"share": share})
    password = app.bootstrap_da("admin") or ""
    # A DA who has been working: password changed, second factor set up.
    da = activate(Api(app.url, app.cert).sign_in("admin", password), password)
    clerk_page = new_context().new_page()
    da_context = new_context()
    da_context.add_cookies([session_cookie(app.url, da.token or "")])  # type: ignore[list-item]
    da_page = da_context.new_page()
    # The vault restarts: sealed again, its sessions still known.
    app.stop_daemon("vault")
    app.start_daemon("vault")
    da_page.goto(app.url + "/")
    expect(da_page).to_have_url(app.url + "/unseal")
    expect(da_page.locator("#share-progress")).to_contain_text("2 件中 0 件")
    clerk_page.goto(app.url + "/")
    expect(clerk_page).to_have_url(app.url + "/sealed")
