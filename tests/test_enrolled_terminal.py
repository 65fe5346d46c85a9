"""MU and MA only from enrolled, compliant clerk PCs (the security policy's
``require_enrolled_terminal``; docs/agents.md, "The console and the vault").

The rule's table without I/O (kura.core.terminals), then a real vault on an
appliance of this file's own (the policy is turned on here, and turning it
off again takes two people): the console passes the browser's verified
client-certificate serial as ``terminal`` on each request line, and these
tests speak to the vault's socket as the console does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kura.console.vaultclient import VaultClient, VaultError
from kura.core import terminals
from kura.core.accounts import SecurityPolicy
from kura.core.roles import Role
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.policy_support import set_policy
from tests.support import Api, first_da, fresh_totp, provision

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
     ("f" * 65, "")],
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
    app.start()
    try:
        da = first_da(app)
        sa = provision(da, "sa-terminal", "SA")
        yield Site(app, da, sa, provision(da, "ma-terminal", "MA"),
                   provision(da, "mu-terminal", "MU"))
    finally:
        app.stop()


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
    return vault(site, "login", {"username": who.username, "password": who.password,
                                 "totp": fresh_totp(who.totp_secret)}, terminal=terminal)


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
        error = refused(site, "login", {"username": who.username, "password": who.password,
                                        "totp": fresh_totp(who.totp_secret)})
        assert error.http_status == 403 and error.vault_code == "terminal_not_enrolled"
        assert "事務端末" in error.message_ja and "clerk PC" in error.message_en
        assert error.detail["reason"] == "no_certificate"
    # A session opened before the rule was on is refused on its next call …
    error = refused(site, "whoami", session=before["token"])
    assert error.vault_code == "terminal_not_enrolled"
    # … and an unknown certificate is no better than none.
    assert refused(site, "login", {"username": site.mu.username, "password": site.mu.password,
                                   "totp": fresh_totp(site.mu.totp_secret)},
                   terminal="3f2a").detail["reason"] == "unknown"

    entries = refusals(site)
    seen = {(e["actor"], e["detail"]["reason"], e["detail"]["standing"]) for e in entries}
    assert ("mu-terminal", "no_certificate", "unknown") in seen
    assert ("ma-terminal", "no_certificate", "unknown") in seen
    assert ("mu-terminal", "unknown", "unknown") in seen
    assert all(e["outcome"] == "denied" for e in entries)
    assert all(site.mu.password not in str(e) for e in entries)

    # The SA and the DA are not bound by it.
    assert sign_in(site, site.sa)["role"] == "SA"
    assert vault(site, "whoami", session=site.sa.token)["username"] == "sa-terminal"
