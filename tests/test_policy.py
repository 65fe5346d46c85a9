"""The security policy the SA sets takes effect in the vault: a stronger
setting at once, a weaker one once a second person approves it (here the
MA, the appliance having one SA; tests/test_policy_changes.py has the rules)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.policy_support import set_policy
from tests.support import Api, first_da, provision


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[LocalAppliance, dict[str, Api]]]:
    app = new_appliance("policy")
    app.start()
    try:
        admin = first_da(app)
        users = {"DA": admin, "SA": provision(admin, "sa-policy", "SA"),
                 "MU": provision(admin, "mu-policy", "MU"),
                 "MA": provision(admin, "ma-policy", "MA")}
        yield app, users
    finally:
        app.stop()


def _policy(sa: Api) -> dict[str, object]:
    r = sa.get("/policy")
    assert r.status == 200
    return dict(r.json["policy"])


def test_allowed_networks_shut_out_other_terminals(
    site: tuple[LocalAppliance, dict[str, Api]],
) -> None:
    app, users = site
    sa, mu = users["SA"], users["MU"]
    # A documentation-only network: no terminal here is in it.
    r = sa.put("/policy", {"policy": {"allowed_networks": ["192.0.2.0/24"]}})
    assert r.status == 200, r.body
    refused = mu.get("/subjects")
    assert refused.status == 403 and refused.error_code == "permission_denied"
    assert "ネットワーク" in refused.json["error"]["message"]
    assert mu.anonymous().post("/session", {"username": "mu-policy",
                                            "password": mu.password}).status == 403
    # An employee's one-time link is not a clerk's terminal: it still answers
    # (here: an unknown token is simply invalid, not refused by network).
    link = mu.anonymous().post("/registration/open", {"token": "x" * 43})
    assert link.error_code == "link_invalid", link.body
    # The appliance's own socket (client "local") still reaches the vault, so an
    # SA can undo a mistake from the console tty; widening the networks is a
    # weakening, so the second person approves it there too.
    proposed = asyncio.run(app.vault_call(
        "policy.set", {"policy": {"allowed_networks": ["127.0.0.0/8"]}}, session=sa.token))
    assert proposed["pending"] is not None
    assert mu.get("/subjects").status == 403  # not before the approval
    asyncio.run(app.vault_call("policy.approve", {"id": proposed["pending"]["id"]},
                               session=users["MA"].token))
    assert mu.get("/subjects").status == 200
    audit = sa.get("/audit", query={"action": "subject.list", "limit": 50}).json["entries"]
    assert any(e["outcome"] == "denied" and e["detail"].get("reason") == "network"
               for e in audit)
    assert set_policy(sa, {"allowed_networks": []}, users["MA"])["allowed_networks"] == []


def test_password_policy_applies_to_the_next_change(
    site: tuple[LocalAppliance, dict[str, Api]],
) -> None:
    _, users = site
    sa, mu = users["SA"], users["MU"]
    assert sa.put("/policy", {"policy": {"min_length": 20}}).status == 200
    assert _policy(sa)["min_length"] == 20
    short = mu.post("/session/password", {"current_password": mu.password,
                                          "new_password": "Short-But-Ok-16!"})
    assert short.status == 422 and short.error_code == "password_rejected"
    assert "too_short" in short.json["error"]["detail"]["reasons"]
    # Only what was sent changed; the rest of the policy kept its values.
    assert _policy(sa)["lockout_threshold"] == 5
    assert set_policy(sa, {"min_length": 12}, users["MA"])["min_length"] == 12


def test_policy_values_out_of_range_are_refused(
    site: tuple[LocalAppliance, dict[str, Api]],
) -> None:
    _, users = site
    sa = users["SA"]
    before = _policy(sa)
    for bad in ({"min_length": 3}, {"session_idle_minutes": "15"}, {"no_such": 1},
                {"allowed_networks": ["not-a-network"]}, {"mfa_roles": ["XX"]}):
        r = sa.put("/policy", {"policy": bad})
        assert r.status in (400, 422), (bad, r.status)
        assert r.json["error"]["message"] and r.json["error"]["message_en"]
    assert _policy(sa) == before
