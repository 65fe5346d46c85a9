"""Weakening the security policy takes two people; strengthening it does not.

Against a real vault on an appliance of this file's own (the tests add and
disable a second SA, which the shared appliance must not see): every
weakening waits until a second person approves it, every strengthening
applies at once, a mixed edit splits, the proposer cannot approve their own
change, an MA approves only where the appliance has exactly one active SA,
the DA never; rejected and cancelled changes never apply; each step is in
the audit log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.policy_support import set_policy
from tests.support import Api, first_da, fresh_totp, provision


@dataclass
class Site:
    app: LocalAppliance
    da: Api
    sa: Api
    ma: Api
    mu: Api
    initial: dict[str, Any]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    app = new_appliance("policy-changes")
    app.start()
    try:
        da = first_da(app)
        sa = provision(da, "sa-one", "SA")
        yield Site(app, da, sa, provision(da, "ma-one", "MA"), provision(da, "mu-one", "MU"),
                   policy(sa))
    finally:
        app.stop()


@pytest.fixture(autouse=True)
def default_policy(site: Site) -> Iterator[None]:
    """Each test leaves the policy as it found it, nothing pending."""
    yield
    pending = site.sa.get("/policy/changes").json["pending"]
    if pending:
        site.sa.post(f"/policy/changes/{pending['id']}/cancel")
    assert set_policy(site.sa, site.initial, site.ma) == site.initial


def policy(api: Api) -> dict[str, Any]:
    r = api.get("/policy")
    assert r.status == 200, r.body
    return dict(r.json["policy"])


def audit(site: Site, action: str) -> list[dict[str, Any]]:
    r = site.sa.get("/audit", query={"action": action, "limit": 20})
    assert r.status == 200, r.body
    return list(r.json["entries"])


# (a stronger starting point applied at once, the weakening asked for)
WEAKENINGS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {"min_length": 8}),
    ({}, {"required_classes": 1}),
    ({}, {"history": 0}),
    ({}, {"max_age_days": 0}),
    ({}, {"lockout_threshold": 20}),
    ({}, {"lockout_base_seconds": 1}),
    ({}, {"lockout_max_seconds": 60}),
    ({"mfa_roles": ["MU", "MA", "SA", "DA"]}, {"mfa_roles": ["MA", "SA", "DA"]}),
    ({}, {"session_idle_minutes": 120}),
    ({}, {"session_absolute_hours": 24}),
    ({}, {"export_approval_threshold": 100_000}),
    ({"allowed_networks": ["127.0.0.0/8", "::1/128"]}, {"allowed_networks": []}),
    ({"allowed_networks": ["127.0.0.1/32", "::1/128"]},
     {"allowed_networks": ["127.0.0.0/8", "::1/128"]}),
    ({}, {"audit_checkpoint_seconds": 300}),
]


@pytest.mark.parametrize(("start", "asked"), WEAKENINGS,
                         ids=[next(iter(w[1])) + str(i) for i, w in enumerate(WEAKENINGS)])
def test_a_weakening_waits_for_the_second_person(
    site: Site, start: dict[str, Any], asked: dict[str, Any],
) -> None:
    (field,) = asked
    if start:
        assert set_policy(site.sa, start, site.ma)[field] == start[field]
    before = policy(site.sa)
    r = site.sa.put("/policy", {"policy": asked})
    assert r.status == 200, r.body
    assert r.json["applied"] == [] and r.json["policy"] == before
    pending = r.json["pending"]
    assert [f["field"] for f in pending["fields"]] == [field]
    assert pending["fields"][0]["weaker"] and pending["proposed_by"] == "sa-one"
    assert policy(site.sa) == before  # not in force yet
    # The other admins see it waiting; only the eligible one may decide.
    for who, decides in ((site.ma, True), (site.da, False), (site.sa, False)):
        seen = who.get("/policy/changes").json
        assert seen["pending"]["id"] == pending["id"]
        assert seen["may_decide"] is decides
    approved = site.ma.post(f"/policy/changes/{pending['id']}/approve", {})
    assert approved.status == 200, approved.body
    assert approved.json["change"]["state"] == "approved"
    after = policy(site.sa)[field]
    assert (sorted(after) == sorted(asked[field])) if isinstance(after, list) else (
        after == asked[field])
    entry = audit(site, "policy.approve")[0]
    assert entry["actor"] == "ma-one" and entry["detail"]["fields"] == [field]
    assert entry["detail"]["proposed_by"] == "sa-one"
    assert audit(site, "policy.propose")[0]["detail"]["fields"] == [field]


# (a weaker starting point, approved by the MA, where the default is already
# the strongest; the strengthening asked for)
STRENGTHENINGS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {"min_length": 16}), ({}, {"required_classes": 4}), ({}, {"history": 10}),
    ({}, {"max_age_days": 30}), ({}, {"lockout_threshold": 3}),
    ({}, {"lockout_base_seconds": 60}), ({}, {"lockout_max_seconds": 7200}),
    ({"mfa_roles": ["SA", "DA"]}, {"mfa_roles": ["MU", "MA", "SA", "DA"]}),
    ({}, {"session_idle_minutes": 5}), ({}, {"session_absolute_hours": 8}),
    ({}, {"export_approval_threshold": 10}),
    ({}, {"allowed_networks": ["127.0.0.0/8", "::1/128"]}),
    ({}, {"audit_checkpoint_seconds": 2}),
]


@pytest.mark.parametrize(("start", "asked"), STRENGTHENINGS,
                         ids=[next(iter(s[1])) for s in STRENGTHENINGS])
def test_a_strengthening_applies_at_once(
    site: Site, start: dict[str, Any], asked: dict[str, Any]
) -> None:
    (field,) = asked
    if start:
        set_policy(site.sa, start, site.ma)
    r = site.sa.put("/policy", {"policy": asked})
    assert r.status == 200, r.body
    assert r.json["applied"] == [field] and r.json["pending"] is None
    assert policy(site.sa)[field] == asked[field]
    assert site.sa.get("/policy/changes").json["pending"] is None
    assert audit(site, "policy.set")[0]["detail"]["changed"] == [field]


def test_a_mixed_edit_splits_and_the_effect_follows(site: Site) -> None:
    mu = site.mu
    r = site.sa.put("/policy", {"policy": {"min_length": 8, "session_idle_minutes": 10,
                                           "export_approval_threshold": 50}})
    assert r.status == 200, r.body
    assert r.json["applied"] == ["session_idle_minutes", "export_approval_threshold"]
    assert [f["field"] for f in r.json["pending"]["fields"]] == ["min_length"]
    assert [c["fields"][0]["field"] for c in site.da.get("/policy/changes").json["recent"]
            if c["state"] == "applied"][:1] == ["session_idle_minutes"]
    # What applied is in force: a sign-in is told the shorter idle timeout.
    sign_in: dict[str, Any] = {"username": mu.username, "password": mu.password}
    if mu.totp_secret:  # where the policy asks an MU for a second factor
        sign_in["totp"] = fresh_totp(mu.totp_secret)
    again = mu.anonymous().post("/session", sign_in)
    assert again.status == 200 and again.json["idle_minutes"] == 10
    # What waits is not: a 10-character password is still too short …
    short = "Kura-2026x"
    refused = mu.post("/session/password", {"current_password": mu.password,
                                           "new_password": short})
    assert refused.status == 422 and "too_short" in refused.json["error"]["detail"]["reasons"]
    # … until the MA approves; then it is accepted.
    assert site.ma.post(f"/policy/changes/{r.json['pending']['id']}/approve", {}).status == 200
    changed = mu.post("/session/password", {"current_password": mu.password,
                                           "new_password": short})
    assert changed.status == 200, changed.body
    mu.password = short


def test_turning_mfa_off_for_mu_waits_for_approval(site: Site) -> None:
    set_policy(site.sa, {"mfa_roles": ["MU", "SA", "DA"]}, site.ma)
    mu = provision(site.da, "mu-mfa", "MU")  # enrols a second factor: MU must have one
    assert mu.totp_secret
    password_only = {"username": "mu-mfa", "password": mu.password}
    assert mu.anonymous().post("/session", password_only).status == 401
    r = site.sa.put("/policy", {"policy": {"mfa_roles": ["SA", "DA"]}})
    assert r.json["pending"]["fields"][0]["field"] == "mfa_roles"
    assert mu.anonymous().post("/session", password_only).status == 401  # still needed
    assert site.ma.post(f"/policy/changes/{r.json['pending']['id']}/approve", {}).status == 200
    assert mu.anonymous().post("/session", password_only).status == 200


def test_rejected_and_cancelled_changes_never_apply(site: Site) -> None:
    before = policy(site.sa)
    first = site.sa.put("/policy", {"policy": {"export_approval_threshold": 100_000}})
    change = first.json["pending"]["id"]
    # The proposer cannot approve (or reject) their own change; it is audited.
    for verb in ("approve", "reject"):
        own = site.sa.post(f"/policy/changes/{change}/{verb}", {})
        assert own.status == 403 and own.error_code == "not_eligible_approver", own.body
        assert own.json["error"]["message"] and own.json["error"]["message_en"]
    assert audit(site, "policy.approve")[0]["outcome"] == "denied"
    # Neither can the DA; the MA who may approve cannot cancel.
    assert site.da.post(f"/policy/changes/{change}/approve", {}).status == 403
    assert site.ma.post(f"/policy/changes/{change}/cancel").status == 403
    rejected = site.ma.post(f"/policy/changes/{change}/reject", {"reason": "理由なし"})
    assert rejected.status == 200 and rejected.json["change"]["state"] == "rejected"
    assert policy(site.sa) == before
    late = site.ma.post(f"/policy/changes/{change}/approve", {})
    assert late.status == 409 and late.error_code == "policy_change_closed"
    assert policy(site.sa) == before

    second = site.sa.put("/policy", {"policy": {"allowed_networks": []}}).json
    assert second["pending"] is None  # already the widest: nothing to wait for
    third = site.sa.put("/policy", {"policy": {"min_length": 8}}).json["pending"]["id"]
    cancelled = site.sa.post(f"/policy/changes/{third}/cancel")
    assert cancelled.status == 200 and cancelled.json["change"]["state"] == "cancelled"
    assert site.ma.post(f"/policy/changes/{third}/approve", {}).status == 409
    assert policy(site.sa) == before
    assert audit(site, "policy.cancel")[0]["detail"]["fields"] == ["min_length"]
    recent = site.da.get("/policy/changes").json["recent"]
    assert {c["id"]: c["state"] for c in recent}[change] == "rejected"


def test_a_newer_proposal_replaces_the_older(site: Site) -> None:
    old = site.sa.put("/policy", {"policy": {"min_length": 8}}).json["pending"]["id"]
    new = site.sa.put("/policy", {"policy": {"history": 0}}).json["pending"]
    assert audit(site, "policy.propose")[0]["detail"]["superseded"] == old
    assert site.ma.post(f"/policy/changes/{old}/approve", {}).status == 409
    assert site.ma.post(f"/policy/changes/{new['id']}/approve", {}).status == 200
    assert policy(site.sa)["min_length"] == 12 and policy(site.sa)["history"] == 0


def test_an_approval_that_no_longer_fits_is_refused(site: Site) -> None:
    pending = site.sa.put("/policy", {"policy": {"session_idle_minutes": 600}}).json["pending"]
    # Meanwhile the longest session is cut to 5 hours (a strengthening: at once).
    assert site.sa.put("/policy", {"policy": {"session_absolute_hours": 5}}).json["applied"]
    stale = site.ma.post(f"/policy/changes/{pending['id']}/approve", {})
    assert stale.status == 409 and stale.error_code == "policy_change_stale", stale.body
    assert "却下" in stale.json["error"]["message"]
    assert policy(site.sa)["session_idle_minutes"] == 15


def test_with_two_sas_only_the_other_sa_approves(site: Site) -> None:
    """Runs last: it adds a second SA (and disables it again at the end)."""
    second = provision(site.da, "sa-two", "SA")
    try:
        change = site.sa.put("/policy", {"policy": {"lockout_threshold": 50}}).json["pending"]
        listed = site.ma.get("/policy/changes").json
        assert listed["active_sas"] == 2 and listed["may_decide"] is False
        by_ma = site.ma.post(f"/policy/changes/{change['id']}/approve", {})
        assert by_ma.status == 403 and by_ma.error_code == "not_eligible_approver"
        assert second.get("/policy/changes").json["may_decide"] is True
        assert second.post(f"/policy/changes/{change['id']}/approve", {}).status == 200
        assert policy(site.sa)["lockout_threshold"] == 50
        # The second SA's own weakening waits for the first.
        own = second.put("/policy", {"policy": {"history": 1}}).json["pending"]
        assert second.post(f"/policy/changes/{own['id']}/approve", {}).status == 403
        assert site.sa.post(f"/policy/changes/{own['id']}/approve", {}).status == 200
    finally:
        r = site.da.patch("/users/sa-two", {"disabled": True})
        assert r.status == 200, r.body
    # One active SA again: the MA is the second person once more.
    assert site.ma.get("/policy/changes").json["active_sas"] == 1


def _checkpointed_seq(site: Site) -> int:
    return int(site.app.cluster.psql(
        "kura_owner", "SELECT coalesce(max(seq), 0) FROM audit_checkpoints").strip())


def _head_seq(site: Site) -> int:
    return int(site.app.cluster.psql(
        "kura_owner", "SELECT coalesce(max(seq), 0) FROM audit").strip())


def _seconds_until_signed(site: Site, limit: float) -> float | None:
    """Write one entry, then how long until a checkpoint covers it."""
    assert site.sa.get("/policy").status == 200  # policy.get is audited
    head = _head_seq(site)
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if _checkpointed_seq(site) >= head:
            return time.monotonic() - start
        time.sleep(0.25)
    return None


def test_the_vault_signs_the_chain_as_often_as_the_policy_says(site: Site) -> None:
    """The checkpoint interval is the SA's: at 1 s the newest entries are signed
    within a second or two; lengthened to an hour (with a second person) the
    vault stops signing them every few seconds."""
    set_policy(site.sa, {**site.initial, "audit_checkpoint_seconds": 1})
    waited = _seconds_until_signed(site, 8.0)
    assert waited is not None and waited < 4.0, waited
    set_policy(site.sa, {**site.initial, "audit_checkpoint_seconds": 3600}, site.ma)
    _seconds_until_signed(site, 3.0)  # the checkpoint due under the old interval
    assert _seconds_until_signed(site, 8.0) is None, "signed although the policy says hourly"
