"""No one gets the credentials of a number-handling account but its holder
(issue 10, points 2 and 3).

The DA tries to obtain a usable MU or MA account by every path — create,
reset the password, reset the second factor, change a role, re-enable — and
each either waits for a second person or yields nothing the DA can sign in
with. The approver is an SA or MA who is neither the proposer nor the person
concerned; a DA never approves. The activation code comes in two halves, one
to each administrator; only the holder, with both, sets a password and
enrols a second factor (required for every role by default). The first SA is
the DA's alone, once. The SA sees a new number handler's first sign-in; the
ledger names who proposed and who approved each account and each reset.

One appliance of its own: the first-SA exception needs an appliance that has
never had an SA, and the last test removes every SA."""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kura.core.account_approvals import check_approver, new_half, normalise_half
from kura.core.errors import Conflict, PermissionDenied
from kura.core.roles import Role
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import (
    Api,
    Response,
    activate,
    activate_account,
    enrol_totp,
    holder_password,
)


@dataclass
class Team:
    app: LocalAppliance
    da: Api
    sa: Api  # the first SA, made by the DA alone
    ma: Api  # approved by the SA
    halves: list[str]  # every half shown in this module, to look for in the audit log


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    app = new_appliance("two-person")
    app.start()
    try:
        first = app.bootstrap_da("admin")
        assert first
        anon = Api(app.url, app.cert)
        da = activate(anon.sign_in("admin", first), first)
        made = da.post("/users", {"username": "tp-sa", "role": "SA"})
        assert made.status == 200, made.body
        assert made.json["first_sa"] is True and made.json["state"] == "approved"
        halves = [made.json["half_a"], made.json["half_b"]]
        sa_password = activate_account(da, "tp-sa", *halves)
        sa = enrol_totp(da.sign_in("tp-sa", sa_password))
        team = Team(app, da, sa, da, halves)
        team.ma = holder(team, "tp-ma", "MA")
        yield team
    finally:
        app.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)


def propose(team: Team, username: str, role: str) -> dict[str, Any]:
    r = team.da.post("/users", {"username": username, "role": role})
    assert r.status == 200, r.body
    assert r.json["state"] == "pending" and "password" not in r.json
    team.halves.append(r.json["half_a"])
    return dict(r.json)


def approved(team: Team, proposal: str, by: Api | None = None) -> dict[str, Any]:
    r = (by or team.sa).post(f"/users/proposals/{proposal}/approve")
    assert r.status == 200, r.body
    if r.json["half_b"]:
        team.halves.append(r.json["half_b"])
    return dict(r.json)


def holder(team: Team, username: str, role: str) -> Api:
    """A new account as its holder has it: proposed, approved, activated,
    signed in with a second factor."""
    made = propose(team, username, role)
    half_b = approved(team, made["proposal"])["half_b"]
    password = activate_account(team.da, username, made["half_a"], half_b)
    return enrol_totp(team.da.sign_in(username, password))


def sign_in_refused(team: Team, username: str, password: str) -> None:
    r = team.da.anonymous().post("/session", {"username": username, "password": password})
    assert r.status == 401 and r.error_code == "login_failed", (r.status, r.body[:200])


def activation(team: Team, username: str, half_a: str, half_b: str) -> Response:
    return team.da.anonymous().post("/activation", {
        "username": username, "half_a": half_a, "half_b": half_b,
        "new_password": holder_password(username)})


def user_row(team: Team, username: str) -> dict[str, Any] | None:
    rows = team.da.get("/users").json["users"]
    return next((u for u in rows if u["username"] == username), None)


def audit(team: Team, action: str) -> list[dict[str, Any]]:
    r = team.sa.get("/audit", query={"action": action, "limit": 500})
    assert r.status == 200, r.body
    return list(r.json["entries"])


def home_page(api: Api) -> str:
    """The console's home page as the signed-in ``api`` sees it."""
    conn = api._connection()
    try:
        conn.request("GET", "/", headers={"Cookie": f"kura_session={api.token}"})
        raw: http.client.HTTPResponse = conn.getresponse()
        assert raw.status == 200, raw.status
        return raw.read().decode()
    finally:
        conn.close()


# --- the rules, as pure functions --------------------------------------------------------


def test_only_a_third_person_of_an_approving_role_may_decide() -> None:
    check_approver("sa", Role.SA, "da", "mu")
    check_approver("ma", Role.MA, "da", "mu")
    with pytest.raises(PermissionDenied):
        check_approver("da2", Role.DA, "da", "mu")
    with pytest.raises(PermissionDenied):
        check_approver("mu2", Role.MU, "da", "mu")
    with pytest.raises(Conflict):
        check_approver("sa", Role.SA, "sa", "mu")  # the proposer
    with pytest.raises(Conflict):
        check_approver("ma", Role.MA, "da", "ma")  # the person concerned


def test_a_half_carries_sixty_bits_and_survives_retyping() -> None:
    half = new_half()
    assert len(half.replace("-", "")) == 12  # 12 symbols of 32: 60 bits
    assert normalise_half(half.lower().replace("-", " ")) == half
    assert normalise_half("too-short") == ""


# --- the DA alone gets nothing usable --------------------------------------------------


def test_creating_an_mu_waits_for_a_second_person_and_needs_both_halves(team: Team) -> None:
    made = propose(team, "tp-mu", "MU")
    # Not an account yet: nothing to sign in to, whatever the DA types.
    assert user_row(team, "tp-mu") is None
    sign_in_refused(team, "tp-mu", made["half_a"])
    # The DA cannot approve its own proposal (no DA may approve).
    r = team.da.post(f"/users/proposals/{made['proposal']}/approve")
    assert r.status == 403 and r.error_code == "permission_denied"
    listed = team.ma.get("/users/proposals").json["proposals"]
    assert made["proposal"] in {p["id"] for p in listed}
    assert not any("hash" in key for p in listed for key in p)

    half_b = approved(team, made["proposal"], by=team.ma)["half_b"]
    assert half_b and half_b != made["half_a"]
    # Approved, the account waits for its holder: no password opens it yet.
    row = user_row(team, "tp-mu")
    assert row is not None and row["activation_pending"] is True
    sign_in_refused(team, "tp-mu", made["half_a"] + half_b)
    # One half alone, or a half twice, does not activate it; each try is audited.
    for a, b in ((made["half_a"], new_half()), (made["half_a"], made["half_a"]),
                 (half_b, made["half_a"])):
        r = activation(team, "tp-mu", a, b)
        assert r.status == 401 and r.error_code == "login_failed", r.body
    denied = [e for e in audit(team, "user.activate") if e["outcome"] == "denied"]
    assert [e["detail"]["failures"] for e in denied[:3]] == [3, 2, 1]
    # The holder, with both halves (retyped in lower case), sets a password of their own.
    password = activate_account(team.da, "tp-mu", made["half_a"].lower(), half_b)
    again = activation(team, "tp-mu", made["half_a"], half_b)
    assert again.status == 401  # a code works once
    mu = team.da.sign_in("tp-mu", password)
    # A second factor is required for an MU by default: nothing but its set-up first.
    assert mu.get("/session").json["mfa_setup_required"] is True
    assert mu.get("/subjects").status == 403
    enrol_totp(mu)
    assert mu.get("/subjects").status == 200


def test_wrong_activation_codes_lock_the_account(team: Team) -> None:
    made = propose(team, "tp-guessed", "MU")
    approved(team, made["proposal"])
    codes = [activation(team, "tp-guessed", made["half_a"], new_half()) for _ in range(5)]
    assert [r.status for r in codes] == [401] * 4 + [423]
    assert codes[-1].error_code == "account_locked"


def test_the_approver_is_neither_the_proposer_nor_the_person_concerned(team: Team) -> None:
    ma2 = holder(team, "tp-ma2", "MA")
    r = team.da.post("/users/tp-ma2/password-reset", {})
    assert r.status == 200 and r.json["state"] == "pending", r.body
    team.halves.append(r.json["half_a"])
    mine = ma2.post(f"/users/proposals/{r.json['proposal']}/approve")
    assert mine.status == 409 and mine.error_code == "conflict"
    assert "あなた自身" in mine.json["error"]["message"]
    # The reset has not happened: the MA's own session and password still work.
    assert ma2.get("/session").status == 200
    # Another approver rejects it; a decided proposal cannot be approved after.
    no = team.sa.post(f"/users/proposals/{r.json['proposal']}/reject")
    assert no.status == 200 and no.json["state"] == "rejected"
    late = team.ma.post(f"/users/proposals/{r.json['proposal']}/approve")
    assert late.status == 409
    assert ma2.get("/session").status == 200
    actions = {e["action"] for e in audit(team, "user.") if e["target"] == "tp-ma2"}
    assert {"user.propose", "user.reject"} <= actions


def test_a_password_reset_gives_the_da_half_a_code_and_ends_nothing_until_approved(
    team: Team,
) -> None:
    mu = holder(team, "tp-reset", "MU")
    r = team.da.post("/users/tp-reset/password-reset", {})
    assert r.status == 200 and r.json["state"] == "pending" and "password" not in r.json
    half_a = r.json["half_a"]
    team.halves.append(half_a)
    assert mu.get("/session").status == 200  # nothing happens before approval
    half_b = approved(team, r.json["proposal"])["half_b"]
    # Approved: the old password and the sessions end; the DA's half opens nothing.
    assert mu.get("/session").status == 401
    sign_in_refused(team, "tp-reset", mu.password)
    assert activation(team, "tp-reset", half_a, new_half()).status == 401
    password = activate_account(team.da, "tp-reset", half_a, half_b)
    # The second factor was kept: the holder's authenticator is still needed.
    back = team.da.anonymous().post("/session", {"username": "tp-reset", "password": password})
    assert back.status == 401 and back.json["error"]["detail"].get("totp_required") is True
    team.da.sign_in("tp-reset", password, mu.totp_secret)


def test_a_second_factor_reset_waits_and_leaves_the_da_without_a_code(team: Team) -> None:
    mu = holder(team, "tp-totp", "MU")
    r = team.da.post("/users/tp-totp/password-reset", {"reset_totp": True})
    assert r.status == 200 and r.json["state"] == "pending", r.body
    team.halves.append(r.json["half_a"])
    row = user_row(team, "tp-totp")
    assert row is not None and row["totp"] is True  # still enrolled until approved
    half_b = approved(team, r.json["proposal"], by=team.ma)["half_b"]
    row = user_row(team, "tp-totp")
    assert row is not None and row["totp"] is False and row["activation_pending"] is True
    assert mu.get("/session").status == 401
    assert activation(team, "tp-totp", r.json["half_a"], new_half()).status == 401
    password = activate_account(team.da, "tp-totp", r.json["half_a"], half_b)
    fresh = team.da.sign_in("tp-totp", password)
    assert fresh.get("/session").json["mfa_setup_required"] is True


def test_a_da_account_turned_into_an_mu_loses_the_password_the_da_knew(team: Team) -> None:
    # DA accounts stay one-person: the DA is shown the new DA's password.
    r = team.da.post("/users", {"username": "tp-da2", "role": "DA"})
    assert r.status == 200 and r.json["password"]
    known = r.json["password"]
    change = team.da.patch("/users/tp-da2", {"role": "MU"})
    assert change.status == 200, change.body
    proposal = change.json["proposal"]
    assert proposal["state"] == "pending" and proposal["half_a"]
    team.halves.append(proposal["half_a"])
    row = user_row(team, "tp-da2")
    assert row is not None and row["role"] == "DA"  # not yet
    approved(team, proposal["proposal"])
    row = user_row(team, "tp-da2")
    assert row is not None and row["role"] == "MU" and row["activation_pending"] is True
    sign_in_refused(team, "tp-da2", known)


def test_re_enabling_an_mu_waits_for_a_second_person(team: Team) -> None:
    mu = holder(team, "tp-back", "MU")
    off = team.da.patch("/users/tp-back", {"disabled": True})  # one person: at once
    assert off.status == 200 and "proposal" not in off.json
    assert mu.get("/session").status == 401
    on = team.da.patch("/users/tp-back", {"disabled": False})
    assert on.status == 200 and on.json["proposal"]["state"] == "pending"
    assert on.json["proposal"]["half_a"] is None  # the holder keeps their own password
    row = user_row(team, "tp-back")
    assert row is not None and row["disabled"] is True
    sign_in_refused(team, "tp-back", mu.password)
    decided = approved(team, on.json["proposal"]["proposal"])
    assert decided["half_b"] is None
    team.da.sign_in("tp-back", mu.password, mu.totp_secret)


def test_the_proposer_cancels_and_nobody_approves_a_cancelled_change(team: Team) -> None:
    made = propose(team, "tp-cancelled", "MA")
    assert team.sa.post(f"/users/proposals/{made['proposal']}/cancel").status == 403
    r = team.da.post(f"/users/proposals/{made['proposal']}/cancel")
    assert r.status == 200 and r.json["state"] == "cancelled"
    assert team.sa.post(f"/users/proposals/{made['proposal']}/approve").status == 409
    assert user_row(team, "tp-cancelled") is None


def test_a_proposal_nobody_decides_expires(team: Team) -> None:
    made = propose(team, "tp-stale", "MU")
    # Three days pass (the clock of the database owner's making).
    stale = "UPDATE account_proposals SET expires_at = now() - interval '1 second' WHERE id = "
    team.app.cluster.psql("kura_owner", stale + f"'{made['proposal']}'")  # a UUID the vault made
    late = team.sa.post(f"/users/proposals/{made['proposal']}/approve")
    assert late.status == 409 and late.json["error"]["detail"]["state"] == "expired"
    assert user_row(team, "tp-stale") is None
    [expired] = [e for e in audit(team, "user.proposal_expire") if e["target"] == "tp-stale"]
    assert expired["detail"]["proposer"] == "admin"


# --- what the others see ---------------------------------------------------------------


def test_first_sign_in_and_pending_proposals_show_on_the_home_pages(team: Team) -> None:
    made = propose(team, "tp-shown", "MU")
    # The approvers see the waiting proposal on their home page, with a link.
    for approver in (team.sa, team.ma):
        page = home_page(approver)
        assert made["proposal"] in page and 'href="/admin/approvals"' in page
    half_b = approved(team, made["proposal"])["half_b"]
    password = activate_account(team.da, "tp-shown", made["half_a"], half_b)
    team.da.sign_in("tp-shown", password)
    firsts = team.sa.get("/users/first-logins").json["first_logins"]
    shown = next(f for f in firsts if f["username"] == "tp-shown")
    assert shown["proposer"] == "admin" and shown["approver"] == "tp-sa"
    page = home_page(team.sa)
    assert 'id="home-first-logins"' in page and "tp-shown" in page
    entry = next(e for e in audit(team, "user.first_login") if e["actor"] == "tp-shown")
    assert entry["detail"]["proposer"] == "admin" and entry["detail"]["approver"] == "tp-sa"


def test_the_ledger_names_who_proposed_and_approved_each_account_and_reset(
    team: Team,
) -> None:
    r = team.sa.get("/reports/ledger")
    assert r.status == 200, r.body
    access = {a["username"]: a for a in r.json["access"]}
    changes = [(c["kind"], c["proposer"], c["approver"]) for c in access["tp-reset"]["changes"]]
    assert changes == [("create", "admin", "tp-sa"), ("reset", "admin", "tp-sa")]
    assert [(c["kind"], c["approver"]) for c in access["tp-ma"]["changes"]] == [
        ("create", "tp-sa")
    ]


def test_no_half_of_any_code_is_in_the_audit_log(team: Team) -> None:
    r = team.sa.get("/audit", query={"limit": 500})
    assert r.status == 200
    text = json.dumps(r.json)
    assert team.halves and not [h for h in team.halves if h in text]


def test_the_first_sa_exception_cannot_be_replayed(team: Team) -> None:
    """Demoting every SA does not bring back the DA's one-person SA."""
    demoted = team.da.patch("/users/tp-sa", {"role": "DA"})  # demoting: one person
    assert demoted.status == 200 and "proposal" not in demoted.json
    assert not [u for u in team.da.get("/users").json["users"] if u["role"] == "SA"]
    r = team.da.post("/users", {"username": "tp-sa-again", "role": "SA"})
    assert r.status == 200 and r.json["state"] == "pending" and "half_b" not in r.json
    assert user_row(team, "tp-sa-again") is None
