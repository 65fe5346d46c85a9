"""Chromium on an enrolled clerk PC: it presents the PC's client certificate
(Playwright's ``client_certificates``), kura-console verifies it against the
agent CA and passes its serial, and under the policy's
``require_enrolled_terminal`` the MU signs in; the same MU in a browser
without the certificate is refused with the Japanese message. On an
appliance of this file's own (the rule is on here, and this process plays
kura-policy to enrol the PC)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.sync_api import Browser, Page, Playwright, expect

from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.policy_support import set_policy
from tests.support import Api, first_da, provision, signed_in
from tests.test_agents_vault import csr_pem
from tests.web.conftest import VIEWPORT, chromium_path
from tests.web.test_agents import Site as AgentSite
from tests.web.test_agents import vault


@dataclass
class Site:
    app: LocalAppliance
    sa: Api
    mu: Api
    cert: Path  # the PC's certificate and the issuing intermediate
    key: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    app = new_appliance("terminal-web")
    app.extra_config = {"vault": {"policy_uids": [os.geteuid()]}}
    app.start()
    try:
        da = first_da(app)
        sa, ma = provision(da, "sa-pc", "SA"), provision(da, "ma-pc", "MA")
        mu = provision(da, "mu-pc", "MU")
        # No second factor for the MU: it is not what is tested here.
        # (First: once the rule is on, the MA approves only from an enrolled PC too.)
        set_policy(sa, {"mfa_roles": ["SA", "DA"]}, ma)
        set_policy(sa, {"require_enrolled_terminal": True})
        agent = AgentSite(app, sa)
        made = vault(agent, "agents.token_create", {"profile": "clerk-pc", "label": "pc-01"},
                     signed_in(sa).token)
        key = ec.generate_private_key(ec.SECP256R1())
        enrolled = vault(agent, "agents.enrol", {"token": made["token"], "csr_pem": csr_pem(key),
                                                 "hostname": "pc-01", "address": "127.0.0.1"})
        folder = tmp_path_factory.mktemp("pc-01")
        chain = [enrolled["certificate"].strip(), enrolled["chain"].strip(), ""]
        (folder / "cert.pem").write_text("\n".join(chain))
        (folder / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        deadline = time.monotonic() + 30
        while True:  # heard from with the newest bundle: compliant at the next sweep
            newest = vault(agent, "agents.bundle", {"profile": "clerk-pc"})["serial"]
            listed = vault(agent, "agents.list", {}, signed_in(sa).token)["agents"]
            mine = next(a for a in listed if a["agent_id"] == enrolled["agent_id"])
            vault(agent, "agents.heartbeat", {"serial": mine["serial"], "address": "127.0.0.1",
                                              "report": {"policy_serial": newest}})
            if mine["compliant"]:
                break
            assert time.monotonic() < deadline, mine
            time.sleep(0.5)
        yield Site(app, sa, mu, folder / "cert.pem", folder / "key.pem")
    finally:
        app.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)


def sign_in(page: Page, base: str, who: Api) -> None:
    page.goto(base + "/login")
    page.fill("#username", who.username)
    page.fill("#password", who.password)
    page.click("button[type=submit].primary")


@pytest.fixture(scope="module")
def pc_browser(playwright: Playwright) -> Iterator[Browser]:
    """Chromium that sends loopback traffic through a proxy too: Playwright
    presents client certificates from a proxy of its own, which Chromium
    otherwise bypasses for 127.0.0.1."""
    b = playwright.chromium.launch(
        executable_path=chromium_path(),
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--proxy-bypass-list=<-loopback>"],
    )
    yield b
    b.close()


@pytest.fixture
def context_for(pc_browser: Browser) -> Iterator[Callable[..., Page]]:
    made = []

    def make(site: Site, with_certificate: bool) -> Page:
        certificates = [{"origin": site.app.url, "certPath": str(site.cert),
                         "keyPath": str(site.key)}] if with_certificate else []
        context = pc_browser.new_context(viewport=VIEWPORT, ignore_https_errors=True,  # type: ignore[arg-type]
                                      locale="ja-JP", client_certificates=certificates)
        context.set_default_timeout(15_000)
        made.append(context)
        return context.new_page()

    yield make
    for context in made:
        context.close()


def test_the_mu_signs_in_only_from_the_enrolled_pc(
    site: Site, context_for: Callable[..., Page], shot: Callable[[Page, str], object]
) -> None:
    elsewhere = context_for(site, with_certificate=False)
    sign_in(elsewhere, site.app.url, site.mu)
    expect(elsewhere.locator(".error")).to_contain_text("事務端末からのみ利用できます")
    shot(elsewhere, "refused")

    on_pc = context_for(site, with_certificate=True)
    sign_in(on_pc, site.app.url, site.mu)
    expect(on_pc.locator("h1")).to_contain_text("mu-pc")
    on_pc.goto(site.app.url + "/search")
    expect(on_pc.locator("h1")).to_be_visible()
    shot(on_pc, "signed-in")

    r = signed_in(site.sa).get("/audit", query={"action": "auth.terminal_refused", "limit": 5})
    assert [e["detail"]["reason"] for e in r.json["entries"]] == ["no_certificate"]
