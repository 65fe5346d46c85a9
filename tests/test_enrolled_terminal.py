"""MU and MA only from enrolled, compliant clerk PCs (the security policy's
``require_enrolled_terminal``; docs/agents.md, "The console and the vault").

The rule's table without I/O (kura.core.terminals), then a real vault on an
appliance of this file's own (the policy is turned on here, and turning it
off again takes two people): the console passes the browser's verified
client-certificate serial as ``terminal`` on each request line, and these
tests speak to the vault's socket as the console does."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509

from kura.console.vaultclient import VaultClient, VaultError
from kura.core import terminals
from kura.core.accounts import SecurityPolicy
from kura.core.roles import Role
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.policy_support import set_policy
from tests.support import Api, first_da, provision
from tests.test_agents_vault import csr_pem

# --- the rule, without I/O ---------------------------------------------------------


@pytest.mark.parametrize(
    ("presented", "standing", "bound", "refused"),
    [
        ("", "unknown", None, terminals.NO_CERTIFICATE),
        ("3f2a", "compliant", None, None),
        ("3f2a", "noncompliant", None, "noncompliant"),
        ("3f2a", "revoked", None, "revoked"),
        ("3f2a", "unknown", None, "unknown"),
        ("3f2a", "compliant", "3f2a", None),
        ("3f2b", "compliant", "3f2a", terminals.OTHER_TERMINAL),  # a cookie carried elsewhere
        ("3f2a", "something new", None, "unknown"),
    ],
)
def test_the_rule(presented: str, standing: str, bound: str | None, refused: str | None) -> None:
    assert terminals.refusal(presented, standing, bound) == refused


def test_the_rule_binds_only_mu_and_ma_and_only_when_on() -> None:
    on, off = SecurityPolicy(require_enrolled_terminal=True), SecurityPolicy()
    assert [r for r in Role if terminals.applies(on, r)] == [Role.MU, Role.MA]
    assert not any(terminals.applies(off, r) for r in Role)


@pytest.mark.parametrize(
    ("text", "serial"),
    [("3F2A", "3f2a"), ("003f2a", "3f2a"), ("3f:2a", "3f2a"), ("", ""), ("not hex", ""),
     ("f" * 65, ""), ("-1f", ""), ("0x1f", ""), ("1_f", "")],
)
def test_serials_are_read_as_the_vault_stores_them(text: str, serial: str) -> None:
    assert terminals.normalise_serial(text) == serial


# --- a real vault --------------------------------------------------------------------


@dataclass
class Site:
    app: LocalAppliance
    da: Api
    sa: Api
    ma: Api
    mu: Api


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    app = new_appliance("terminal")
    # This process plays kura-policy too: it enrols the clerk PCs and sends
    # their heartbeats (the service operations, by uid).
    app.extra_config = {"vault": {"policy_uids": [os.geteuid()]}}
    app.start()
    try:
        da = first_da(app)
        sa, ma = provision(da, "sa-terminal", "SA"), provision(da, "ma-terminal", "MA")
        mu = provision(da, "mu-terminal", "MU")
        # No second factor for MU and MA here: each sign-in would wait for a
        # fresh TOTP step, and the second factor is not what is tested.
        set_policy(sa, {"mfa_roles": ["SA", "DA"]}, ma)
        yield Site(app, da, sa, ma, mu)
    finally:
        app.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)


async def _call(app: LocalAppliance, op: str, args: dict[str, Any], session: str | None,
                terminal: str) -> dict[str, Any]:
    client = VaultClient(app.socket, 1)
    try:
        return await client.call(op, args, session, "127.0.0.1", terminal)
    finally:
        await client.close()


def vault(site: Site, op: str, args: dict[str, Any] | None = None, session: str | None = None,
          terminal: str = "") -> dict[str, Any]:
    """A request line as kura-console sends it for a browser on ``terminal``."""
    return asyncio.run(_call(site.app, op, args or {}, session, terminal))


def sign_in(site: Site, who: Api, terminal: str = "") -> dict[str, Any]:
    return vault(site, "login", credentials(who), terminal=terminal)


def credentials(who: Api) -> dict[str, Any]:
    return {"username": who.username, "password": who.password}


def refused(site: Site, op: str, args: dict[str, Any] | None = None, session: str | None = None,
            terminal: str = "") -> VaultError:
    with pytest.raises(VaultError) as raised:
        vault(site, op, args, session, terminal)
    return raised.value


def refusals(site: Site) -> list[dict[str, Any]]:
    r = site.sa.get("/audit", query={"action": "auth.terminal_refused", "limit": 50})
    assert r.status == 200, r.body
    return list(r.json["entries"])


def test_policy_on_refuses_mu_and_ma_without_a_terminal_and_audits_it(site: Site) -> None:
    before = sign_in(site, site.mu)  # the policy is off: any PC
    policy = set_policy(site.sa, {"require_enrolled_terminal": True})
    assert policy["require_enrolled_terminal"] is True

    for who in (site.mu, site.ma):
        error = refused(site, "login", credentials(who))
        assert error.http_status == 403 and error.vault_code == "terminal_not_enrolled"
        assert "事務端末" in error.message_ja and "clerk PC" in error.message_en
        assert error.detail["reason"] == "no_certificate"
    # A session opened before the rule was on is refused on its next call …
    error = refused(site, "whoami", session=before["token"])
    assert error.vault_code == "terminal_not_enrolled"
    # … and an unknown certificate is no better than none.
    assert refused(site, "login", credentials(site.mu),
                   terminal="3f2a").detail["reason"] == "unknown"

    entries = refusals(site)
    seen = {(e["actor"], e["detail"]["reason"], e["detail"]["standing"]) for e in entries}
    assert ("mu-terminal", "no_certificate", "unknown") in seen
    assert ("ma-terminal", "no_certificate", "unknown") in seen
    assert ("mu-terminal", "unknown", "unknown") in seen
    assert all(e["outcome"] == "denied" for e in entries)
    assert all(site.mu.password not in str(e) for e in entries)

    # The SA and the DA are not bound by it.
    assert vault(site, "whoami", session=site.sa.token)["username"] == "sa-terminal"


def enrolled_clerk_pcs(site: Site, *labels: str) -> list[str]:
    """Clerk PCs enrolled and heard from with the newest bundle, as kura-policy
    reports them; their certificates' serials once the vault's sweep (every
    few seconds) has judged them compliant."""
    serials: dict[str, str] = {}
    for label in labels:
        made = vault(site, "agents.token_create", {"profile": "clerk-pc", "label": label},
                     session=site.sa.token)
        enrolled = vault(site, "agents.enrol", {"token": made["token"], "csr_pem": csr_pem(),
                                                "hostname": label, "address": "192.0.2.31"})
        serials[enrolled["agent_id"]] = format(x509.load_pem_x509_certificate(
            enrolled["certificate"].encode()).serial_number, "x")
    deadline = time.monotonic() + 30
    while True:
        newest = vault(site, "agents.bundle", {"profile": "clerk-pc"})["serial"]
        for serial in serials.values():
            vault(site, "agents.heartbeat", {"serial": serial, "address": "192.0.2.31",
                                             "report": {"policy_serial": newest}})
        listed = vault(site, "agents.list", session=site.sa.token)["agents"]
        if all(a["compliant"] for a in listed if a["agent_id"] in serials):
            return list(serials.values())
        assert time.monotonic() < deadline, listed
        time.sleep(0.5)


def test_a_compliant_clerk_pc_signs_in_and_a_revoked_one_is_refused_at_once(site: Site) -> None:
    set_policy(site.sa, {"require_enrolled_terminal": True})
    desk, other = enrolled_clerk_pcs(site, "pc-desk", "pc-other")

    session = sign_in(site, site.mu, terminal=desk)
    assert session["role"] == "MU"
    assert vault(site, "whoami", session=session["token"], terminal=desk)["username"] == (
        "mu-terminal")
    # The session is bound to the PC it signed in from: not another, even a
    # compliant one, and not a browser without the certificate.
    assert refused(site, "whoami", session=session["token"],
                   terminal=other).detail["reason"] == "other_terminal"
    assert refused(site, "whoami", session=session["token"]).detail["reason"] == (
        "no_certificate")
    assert sign_in(site, site.ma, terminal=other)["role"] == "MA"

    agent = next(a for a in vault(site, "agents.list", session=site.sa.token)["agents"]
                 if a["label"] == "pc-desk")
    vault(site, "agents.revoke", {"agent_id": agent["agent_id"], "reason": "盗難"},
          session=site.sa.token)
    error = refused(site, "whoami", session=session["token"], terminal=desk)
    assert error.vault_code == "terminal_not_enrolled" and error.detail["reason"] == "revoked"
    assert refused(site, "login", credentials(site.mu),
                   terminal=desk).detail["reason"] == "revoked"
    entry = next(e for e in refusals(site) if e["detail"]["reason"] == "revoked")
    assert entry["detail"]["standing"] == "revoked" and entry["detail"]["terminal"] == desk


def test_the_json_api_offers_the_agent_operations(site: Site) -> None:
    sa = site.sa
    assert site.sa.anonymous().get("/agents/ca").json["ca_pem"].startswith("-----BEGIN")
    made = sa.post("/agents/tokens", {"profile": "clerk-pc", "label": "api-pc", "minutes": 5})
    assert made.status == 200 and made.json["command"].endswith(made.json["fingerprint"])
    listed = sa.get("/agents/tokens").json["tokens"]
    mine = next(t for t in listed if t["id"] == made.json["token_id"])
    assert mine["state"] == "open" and made.json["token"] not in str(listed)
    assert sa.post(f"/agents/tokens/{mine['id']}/withdraw").json["state"] == "withdrawn"

    current = sa.get("/agents/policy/clerk-pc").json
    refused = sa.put("/agents/policy/clerk-pc", {
        "policy": current["policy"], "version": current["version"],
        "tests": [{"from": "address:192.0.2.99", "to": "192.0.2.200", "port": 9,
                   "proto": "tcp", "expect": "blocked"}]})
    assert refused.status == 422 and refused.error_code == "policy_tests_failed"
    assert refused.json["error"]["detail"]["failed"][0]["to"] == "192.0.2.200"
    assert sa.get("/agents/policy/clerk-pc").json["version"] == current["version"]
    assert isinstance(sa.get("/agents").json["agents"], list)
    assert site.mu.get("/agents").error_code in ("permission_denied", "terminal_not_enrolled")
    assert isinstance(site.da.get("/alerts").json["alerts"], list)
