"""The HA pair in the browser, on a primary whose kura-hasync speaks through
its real status file and control server (tests/test_ha_health.py's ``pair``):
the DA reads the pair's state, ticks the confirmation and switches over, and
the switchover shows on the DA's and SA's home pages; while the pair is
degraded every page carries a banner (a short line for a clerk, the facts and
a link for the admins), and the SA reads the page without a switch."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.support import Api, signed_in
from tests.test_ha_health import DEGRADED, PRIMARY, STREAMING, Pair, pair
from tests.web.conftest import session_cookie

__all__ = ["pair"]  # the fixture, used by this module's tests


@pytest.fixture
def alive(pair: Pair) -> Iterator[None]:
    """kura-hasync's heartbeat: the status file kept fresh, as the daemon
    rewrites it every second, while the browser takes its time."""
    stop = threading.Event()

    def beat() -> None:
        path = pair.hasync.settings.status_file
        assert path is not None
        while not stop.wait(0.5):
            if path.exists():
                os.utime(path)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


@pytest.fixture
def open_as(pair: Pair, new_context: Callable[..., BrowserContext]) -> Callable[[Api], Page]:
    def make(api: Api) -> Page:
        context = new_context()
        token = signed_in(api).token or ""
        context.add_cookies([session_cookie(pair.app.url, token)])  # type: ignore[list-item]
        return context.new_page()

    return make


def test_the_da_sees_the_pair_and_switches_over_with_a_confirmation(
    pair: Pair, alive: None, open_as: Callable[[Api], Page], shot: Callable[[Page, str], object]
) -> None:
    pair.reset_monitor()
    pair.hasync.write(PRIMARY, STREAMING, since=time.time() - 600)
    pair.hasync.serve()
    page = open_as(pair.da)
    url = pair.app.url
    page.goto(url + "/admin/ha")
    expect(page.locator("h1")).to_have_text("冗長構成（HA ペア）")
    expect(page.locator("#ha-role")).to_have_text("稼働系")
    expect(page.locator("#ha-sync")).to_have_text("あり：同期中")
    expect(page.locator("#ha-witness")).to_have_text("到達可能")
    standby = page.locator("#ha-standbys tr[data-standby=pgautofailover_standby_2]")
    expect(standby).to_contain_text("sync")
    expect(standby).to_contain_text("4096")
    expect(page.locator("#ha-degraded-banner")).to_have_count(0)
    shot(page, "ha-page")

    # Without the tick the browser does not send it; nothing happens.
    page.click("#ha-switchover-button")
    expect(page).to_have_url(url + "/admin/ha")
    assert pair.monitor("SELECT count(*) FROM pgautofailover.asked") == "0"
    page.check("#ha-confirm")
    page.click("#ha-switchover-button")
    expect(page.locator(".flash")).to_contain_text("切り替えを開始しました")
    assert pair.monitor("SELECT count(*) FROM pgautofailover.asked") == "1"
    row = page.locator("#ha-changes-table tr[data-action='ha.switchover']").first
    expect(row).to_have_attribute("data-outcome", "ok")
    expect(row).to_contain_text("計画切り替え")
    shot(page, "ha-switched")

    for api in (pair.da, pair.sa):
        home = open_as(api)
        home.goto(url + "/")
        row = home.locator("#home-ha-changes-table tr[data-action='ha.switchover']").first
        expect(row).to_contain_text("計画切り替え")
        expect(row).to_contain_text(pair.da.username)
    mu_home = open_as(pair.mu)
    mu_home.goto(url + "/")
    expect(mu_home.locator("h1")).to_be_visible()
    expect(mu_home.locator("#home-ha-changes")).to_have_count(0)


def test_a_degraded_pair_shows_a_banner_everywhere_and_no_switch(
    pair: Pair, alive: None, open_as: Callable[[Api], Page], shot: Callable[[Page, str], object]
) -> None:
    pair.hasync.write(DEGRADED)
    url = pair.app.url
    clerk = open_as(pair.mu)
    clerk.goto(url + "/retention")
    banner = clerk.locator("#ha-degraded-banner")
    expect(banner).to_contain_text("待機系と同期していません。")
    expect(banner.locator("a")).to_have_count(0)  # nothing a clerk can do there
    shot(clerk, "clerk-banner")

    sa = open_as(pair.sa)
    sa.goto(url + "/")
    banner = sa.locator("#ha-degraded-banner")
    expect(banner).to_contain_text("冗長構成が縮退しています")
    banner.locator("a[href='/admin/ha']").click()
    expect(sa).to_have_url(url + "/admin/ha")
    expect(sa.locator("#ha-sync")).to_have_text("なし：縮退")
    expect(sa.locator("#ha-switchover")).to_have_count(0)  # the SA reads only

    da = open_as(pair.da)
    da.goto(url + "/admin/ha")
    expect(da.locator("#ha-hasync-role")).to_contain_text("稼働系（単独稼働・縮退）")
    expect(da.locator("#ha-switchover-refusal")).to_contain_text("ペアが縮退しています")
    expect(da.locator("#ha-switchover-button")).to_have_count(0)
    shot(da, "ha-degraded")

    path = pair.hasync.settings.status_file
    assert path is not None
    path.unlink()  # kura-hasync stopped and its runtime folder went with it
    da.goto(url + "/admin/ha")
    expect(da.locator("#ha-hasync-state")).to_have_text(
        "kura-hasync が動いていません（状態が書き出されていません）。")
    expect(da.locator("#ha-switchover-refusal")).to_contain_text("kura-hasync が動いていない")
    expect(da.locator("#ha-no-standby")).to_be_visible()

    pair.hasync.write(PRIMARY, STREAMING)  # the standby is back in step
    clerk.goto(url + "/retention")
    expect(clerk.locator("h1")).to_be_visible()
    expect(clerk.locator("#ha-degraded-banner")).to_have_count(0)
    # The admins' home pages keep what happened: degraded, then back in step
    # (the vault notices within its one-second upkeep).
    home = open_as(pair.sa)
    back = home.locator("#home-ha-changes-table tr[data-action='ha.in_step']")
    deadline = time.monotonic() + 15
    home.goto(url + "/")
    while back.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        home.reload()
    expect(back.first).to_contain_text("待機系の同期が回復")
    expect(home.locator("#home-ha-changes-table tr[data-action='ha.degraded']").first
           ).to_contain_text("縮退")


def test_the_pair_page_speaks_english_when_chosen(
    pair: Pair, alive: None, open_as: Callable[[Api], Page]
) -> None:
    pair.hasync.write(DEGRADED)
    page = open_as(pair.sa)
    page.goto(pair.app.url + "/admin/ha")
    page.click("button[lang=en]")
    try:
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("h1")).to_have_text("HA pair")
        expect(page.locator("#ha-sync")).to_have_text("No: degraded")
        expect(page.locator("#ha-degraded-banner")).to_contain_text(
            "The HA pair is degraded: the standby is not in step.")
    finally:
        page.click("button[lang=ja]")  # the choice is kept per user: give it back
        expect(page.locator("html")).to_have_attribute("lang", "ja")
