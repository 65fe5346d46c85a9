"""Weakening the security policy in the browser: the SA's mixed edit applies
the stronger setting at once and shows the weaker one waiting; the DA's
home page shows it waiting, the MA's offers to review it, the MA approves
it on the policy page, and everyone's home page lists it as applied. A
weakening the SA cancels never applies. The shared appliance has one SA, so
the MA is the second person; the policy is put back at the end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.policy_support import set_policy
from tests.support import Api, keep_one_sa, signed_in

Shot = Callable[[Page, str], Path]


def test_a_weakening_waits_for_the_ma_and_every_admin_sees_it(
    as_role: Callable[..., Page], users: dict[str, Api], base_url: str, shot: Shot,
) -> None:
    sa, ma = signed_in(users["SA"]), signed_in(users["MA"])
    keep_one_sa(users["DA"], sa.username)  # then the MA is the second person
    original = sa.get("/policy").json["policy"]
    assert ma.get("/policy/changes").json["active_sas"] == 1
    try:
        page = as_role("SA")
        page.goto(base_url + "/admin/policy")
        page.fill("#export_approval_threshold", "100000")  # weaker: waits
        page.fill("#session_idle_minutes", "10")  # stronger: at once
        page.click("#save-policy")
        expect(page.locator(".flash")).to_contain_text("強める設定はすぐに適用しました")
        waiting = page.locator("#pending-fields tr[data-field=export_approval_threshold]")
        expect(waiting.locator(".old")).to_have_text(str(original["export_approval_threshold"]))
        expect(waiting.locator(".new")).to_have_text("100000")
        expect(page.locator("#pending-fields tbody tr")).to_have_count(1)
        expect(page.locator("#approve-policy-change")).to_have_count(0)  # not one's own
        expect(page.locator("#cancel-policy-change")).to_be_visible()
        expect(page.locator("#session_idle_minutes")).to_have_value("10")
        expect(page.locator("#recent-policy-changes tr[data-state=applied]").first
               ).to_contain_text("無操作タイムアウト")
        shot(page, "sa-waiting")
        now = sa.get("/policy").json["policy"]
        assert now["session_idle_minutes"] == 10
        assert now["export_approval_threshold"] == original["export_approval_threshold"]

        # The DA sees it waiting on the home page, and cannot decide.
        da_home = as_role("DA")
        da_home.goto(base_url + "/")
        pending = da_home.locator("#home-policy-pending")
        expect(pending.locator("li[data-field=export_approval_threshold]")).to_contain_text(
            "100000")
        expect(da_home.locator("#home-policy-review")).to_have_count(0)
        shot(da_home, "da-home")

        # The MA (the appliance has one SA) reviews it from the home page and approves.
        ma_page = as_role("MA")
        ma_page.goto(base_url + "/")
        ma_page.click("#home-policy-review")
        expect(ma_page.locator("#policy-form")).to_have_count(0)  # never the SA's form
        ma_page.fill("#decision-reason", "年末調整の一括出力のため")
        ma_page.click("#approve-policy-change")
        expect(ma_page.locator(".flash")).to_have_text(
            "ポリシーの変更を承認しました。すぐに適用されます。")
        expect(ma_page.locator("#no-pending-policy-change")).to_be_visible()
        shot(ma_page, "ma-approved")
        assert sa.get("/policy").json["policy"]["export_approval_threshold"] == 100000

        page.goto(base_url + "/")
        approved = page.locator("#home-policy-recent tr[data-state=approved]").first
        expect(approved).to_contain_text("100000")
        expect(approved).to_contain_text(ma.username)
        shot(page, "sa-home")

        # Put the threshold back (at once) and ask again for a longer idle
        # time, then cancel it: it never applies.
        page.goto(base_url + "/admin/policy")
        page.fill("#export_approval_threshold", str(original["export_approval_threshold"]))
        page.fill("#session_idle_minutes", "60")
        page.click("#save-policy")
        expect(page.locator("#pending-fields tr[data-field=session_idle_minutes]")).to_be_visible()
        page.click("#cancel-policy-change")
        expect(page.locator(".flash")).to_have_text("ポリシーの変更申請を取り消しました。")
        expect(page.locator("#pending-policy-change")).to_have_count(0)
        now = sa.get("/policy").json["policy"]
        assert now["session_idle_minutes"] == 10
        assert now["export_approval_threshold"] == original["export_approval_threshold"]
    finally:
        set_policy(sa, original, ma)
    assert sa.get("/policy").json["policy"] == original
