"""The Security Admin's agent pages in real Chromium (kura.console.web.agents),
on an appliance of this file's own where this process also plays kura-policy
(``[vault] policy_uids``) to enrol a clerk PC: the enrolment token is shown
once as text and as a QR code with the whole command; the policy page
refuses a policy that fails a test case, names the case and keeps what was
typed; the agents list revokes a PC after a confirmation with a reason."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from kura.console.vaultclient import VaultClient
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, first_da, provision, signed_in
from tests.test_agents_vault import csr_pem
from tests.web.conftest import session_cookie


@dataclass
class Site:
    app: LocalAppliance
    sa: Api


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    app = new_appliance("agents-web")
    app.extra_config = {"vault": {"policy_uids": [os.geteuid()]}}
    app.start()
    try:
        da = first_da(app)
        yield Site(app, provision(da, "sa-agents-web", "SA"))
    finally:
        app.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)


def vault(site: Site, op: str, args: dict[str, Any], session: str | None = None
          ) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        client = VaultClient(site.app.socket, 1)
        try:
            return await client.call(op, args, session, "127.0.0.1")
        finally:
            await client.close()

    # Playwright's driver runs an event loop in this thread: ask from another.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, ask()).result()


def enrol(site: Site, label: str) -> str:
    """A clerk PC enrolled as kura-policy would do it; its agent id."""
    made = vault(site, "agents.token_create", {"profile": "clerk-pc", "label": label},
                 signed_in(site.sa).token)
    return str(vault(site, "agents.enrol", {"token": made["token"], "csr_pem": csr_pem(),
                                            "hostname": label, "address": "192.0.2.31"}
                     )["agent_id"])


@pytest.fixture
def sa_page(site: Site, new_context: Callable[..., BrowserContext]) -> Page:
    context = new_context()
    token = signed_in(site.sa).token or ""
    context.add_cookies([session_cookie(site.app.url, token)])  # type: ignore[list-item]
    return context.new_page()


def test_a_token_is_shown_once_with_its_qr_code_and_can_be_withdrawn(
    site: Site, sa_page: Page, shot: Callable[[Page, str], Any]
) -> None:
    page = sa_page
    page.goto(f"{site.app.url}/admin/agents")
    page.click("#agent-tokens-link")
    page.select_option("#token-profile", "clerk-pc")
    page.fill("#token-label", "経理の PC")
    page.fill("#token-minutes", "30")
    page.click("#create-token")
    token = page.inner_text("#token-value")
    command = page.inner_text("#token-command")
    fingerprint = page.inner_text("#token-fingerprint")
    assert len(token) == 24 and len(fingerprint) == 64
    assert command.startswith("kura-agent enroll --server https://")
    assert f"--token {token}" in command and command.endswith(f"--fingerprint {fingerprint}")
    qr = page.locator("#token-qr")
    expect(qr).to_be_visible()
    assert (qr.get_attribute("src") or "").startswith("data:image/svg+xml;base64,")
    shot(page, "token")

    page.goto(f"{site.app.url}/admin/agents/tokens")  # never again
    assert token not in page.content()
    row = page.locator("#tokens tr", has_text="経理の PC")
    expect(row.locator(".token-state")).to_have_text("未使用")
    row.locator(".withdraw-token").click()
    expect(page.locator(".flash")).to_have_text("トークンを取り消しました。")
    expect(page.locator("#tokens tr", has_text="経理の PC").locator(".token-state")
           ).to_have_text("取消し")
    error = vault(site, "agents.tokens", {}, signed_in(site.sa).token)
    assert all("token" not in t for t in error["tokens"])


def test_a_policy_that_fails_a_test_case_is_refused_with_the_case_named(
    site: Site, sa_page: Page, shot: Callable[[Page, str], Any]
) -> None:
    enrol(site, "pc-policy")
    page = sa_page
    page.goto(f"{site.app.url}/admin/agents/policy/clerk-pc")
    page.fill("#allow_to_0", "198.51.100.0/24")
    page.fill("#allow_ports_0", "8443")
    page.select_option("#test_from_kind_0", label="pc-policy")
    page.fill("#test_to_address_0", "198.51.100.7")
    page.fill("#test_port_0", "443")
    page.select_option("#test_expect_0", "reach")
    page.click("#save-agent-policy")

    failed = page.locator("#failed-cases .failed-case")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("pc-policy から 198.51.100.7 のポート 443/tcp")
    expect(failed).to_contain_text("事務端末のポリシーで許可されていません")
    expect(page.locator(".test-row.bad")).to_have_count(1)
    expect(page.locator("#allow_ports_0")).to_have_value("8443")  # what the SA typed
    shot(page, "refused")
    stored = vault(site, "agents.policy_get", {"profile": "clerk-pc"}, signed_in(site.sa).token)
    assert stored["version"] == 0 and stored["policy"]["allow"] == []

    page.fill("#allow_ports_0", "443")
    page.click("#save-agent-policy")
    expect(page.locator(".flash")).to_contain_text("ポリシーを保存しました")
    expect(page.locator("#allow_ports_0")).to_have_value("443")
    stored = vault(site, "agents.policy_get", {"profile": "clerk-pc"}, signed_in(site.sa).token)
    assert stored["version"] == 1 and len(stored["tests"]) == 1

    page.fill("#allow_ports_1", "eighty")  # bad input: a clear message, nothing saved
    page.fill("#allow_to_1", "198.51.100.9")
    page.click("#save-agent-policy")
    expect(page.locator(".error")).to_contain_text("整数で入力してください")
    expect(page.locator("#allow_ports_1")).to_have_value("eighty")


def test_the_sa_revokes_an_agent_after_confirming_with_a_reason(
    site: Site, sa_page: Page, shot: Callable[[Page, str], Any]
) -> None:
    agent_id = enrol(site, "pc-stolen")
    page = sa_page
    page.goto(site.app.url + "/")
    expect(page.locator("#home-agents-bad, #home-agents-ok")).to_be_visible()
    page.goto(f"{site.app.url}/admin/agents")
    row = page.locator(f"#agents tr[data-agent='{agent_id}']")
    expect(row).to_contain_text("pc-stolen")
    row.locator(".revoke-agent").click()
    expect(page.locator("#revoke-label")).to_have_text("pc-stolen")
    page.fill("#revoke-reason", "盗難届")
    page.click("#confirm-revoke")
    expect(page.locator(".flash")).to_have_text("エージェントの証明書を失効させました。")
    row = page.locator(f"#agents tr[data-agent='{agent_id}']")
    expect(row.locator(".standing")).to_contain_text("失効")
    expect(row.locator(".revoke-agent")).to_have_count(0)
    shot(page, "revoked")
    r = signed_in(site.sa).get("/audit", query={"action": "agent.revoke", "limit": 5})
    assert any(e["target"] == agent_id and e["detail"]["reason"] == "盗難届"
               for e in r.json["entries"])
