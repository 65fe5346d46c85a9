"""The sealed vault as custodians and integrations meet it through the JSON
API: sealed at every start until M custodian shares are typed in, nothing but
/status and /unseal answering meanwhile, data unreadable until then; a
systemd-creds appliance that opens by itself; key rotation that keeps every
stored number readable, across a restart.

Service tests: real PostgreSQL, real kura-vault and kura-console processes."""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator

import pyotp
import pytest

from kura.core.errors import KuraError
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, Response, activate, my_number, provision

THRESHOLD = 3


def _dispose(app: LocalAppliance) -> None:
    app.stop()
    shutil.rmtree(app.state.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def shamir() -> Iterator[LocalAppliance]:
    app = new_appliance("seal", "shamir:3/5")
    try:
        app.start()
        assert len(app.shares) == 5
        yield app
    finally:
        _dispose(app)


@pytest.fixture(scope="module")
def foreign_share() -> Iterator[str]:
    """A custodian share of another appliance (prepared, never started)."""
    other = new_appliance("seal-other", "shamir:3/5")
    try:
        other.prepare()
        yield other.shares[0]
    finally:
        _dispose(other)


@pytest.fixture(scope="module")
def anon(shamir: LocalAppliance) -> Api:
    return Api(shamir.url, shamir.cert)


def unseal(anon: Api, shares: list[str]) -> Response:
    """Type in shares until the vault opens; returns the last answer."""
    r = anon.get("/status")
    for share in shares[: r.json.get("shares_needed", 0) - r.json.get("shares_entered", 0)]:
        r = anon.post("/unseal", {"share": share})
        assert r.status == 200, r.body
    assert r.json["sealed"] is False
    return r


def restart_vault(app: LocalAppliance) -> None:
    app.stop_daemon("vault")
    app.start_daemon("vault")


@pytest.fixture(scope="module")
def staff(shamir: LocalAppliance, anon: Api) -> dict[str, Api]:
    """A DA and an MU, made once the vault is first unsealed."""
    if anon.get("/status").json["sealed"]:
        unseal(anon, shamir.shares[2:])
    password = shamir.bootstrap_da("admin")
    assert password
    admin = activate(anon.sign_in("admin", password), password)
    return {"DA": admin, "MU": provision(admin, "mu-seal", "MU")}


def test_sealed_at_start_and_opened_by_three_custodian_shares(
    shamir: LocalAppliance, anon: Api, foreign_share: str
) -> None:
    status = anon.get("/status")
    assert status.status == 200
    assert status.json["sealed"] is True
    assert status.json["seal_mode"] == "shamir"
    assert (status.json["shares_needed"], status.json["shares_entered"]) == (THRESHOLD, 0)

    # Nothing else answers while sealed: not sign-in, not a lookup, not even a
    # bootstrap over the local socket.
    login = anon.post("/session", {"username": "admin", "password": "Whatever-123!"})
    assert (login.status, login.error_code) == (503, "sealed")
    lookup = anon.post("/subjects/lookup", {"code": "P-1"}, token="some-token")
    assert (lookup.status, lookup.error_code) == (503, "sealed")
    for method, path, body in (
        ("GET", "/subjects", None),
        ("GET", "/audit/export", None),
        ("POST", "/users", {"username": "someone", "role": "MU"}),
        ("POST", "/keys/rotate", {}),
    ):
        r = anon.request(method, path, body, token="some-token")
        assert (r.status, r.error_code) == (503, "sealed"), (method, path)
    with pytest.raises(KuraError) as refused:
        shamir.bootstrap_da("admin")
    assert getattr(refused.value, "vault_code", None) == "sealed"

    shares = shamir.shares
    for entered, share in enumerate(shares[:2], 1):
        r = anon.post("/unseal", {"share": share})
        assert r.status == 200, r.body
        assert r.json["sealed"] is True
        assert (r.json["shares_needed"], r.json["shares_entered"]) == (THRESHOLD, entered)

    refusals = {
        "another appliance's share": foreign_share,
        "a misspelt word": " ".join([*shares[2].split()[:-1], "kuraxyz"]),
        "a missing word": " ".join(shares[2].split()[:-1]),
        "not a share at all": "hello world",
        "a share already entered": shares[1],
    }
    for why, text in refusals.items():
        r = anon.post("/unseal", {"share": text})
        assert (r.status, r.error_code) == (422, "unseal_failed"), why
        assert text not in r.body.decode(), why  # the answer never quotes the share
        progress = anon.get("/status").json
        assert progress["sealed"] is True, why
        assert progress["shares_entered"] == 2, why

    # Still refused after the failures; the third good share opens the vault.
    assert anon.post("/session", {"username": "a", "password": "b"}).error_code == "sealed"
    r = anon.post("/unseal", {"share": shares[4].upper()})  # case does not matter
    assert r.status == 200, r.body
    assert r.json["sealed"] is False
    assert anon.get("/status").json["sealed"] is False
    # Another share once open changes nothing.
    again = anon.post("/unseal", {"share": shares[0]})
    assert again.status == 200 and again.json["sealed"] is False
    unseals = shamir.cluster.psql(
        "kura_owner", "SELECT detail->>'seal' FROM audit WHERE action = 'vault.unseal'"
    ).split()
    assert unseals == ["shamir"]


def test_after_a_restart_data_stays_unreadable_until_unsealed(
    shamir: LocalAppliance, anon: Api, staff: dict[str, Api]
) -> None:
    mu = staff["MU"]
    number = my_number(random.Random(4242))
    created = mu.post("/payees", {"code": "SEAL-1", "name": "封印 太郎", "number": number})
    assert created.status == 201, created.body
    sid = created.json["subject"]["id"]

    restart_vault(shamir)
    status = anon.get("/status").json
    assert status["sealed"] is True and status["shares_entered"] == 0
    for r in (
        mu.post(f"/subjects/{sid}/reveal", {"purpose": "payment_record"}),
        mu.get(f"/subjects/{sid}"),
        mu.post("/subjects/lookup", {"number": number}),
        mu.get("/subjects"),
    ):
        assert (r.status, r.error_code) == (503, "sealed")
        assert number not in r.body.decode()
        assert number[-4:] not in r.body.decode()  # not even the masked form

    # A different set of three custodians than last time.
    unseal(anon, [shamir.shares[3], shamir.shares[0], shamir.shares[2]])
    revealed = mu.post(f"/subjects/{sid}/reveal", {"purpose": "payment_record"})
    assert revealed.status == 200, revealed.body
    assert revealed.json["number"] == number
    found = mu.post("/subjects/lookup", {"number": number})
    assert [s["id"] for s in found.json["subjects"]] == [sid]


def keyring_versions(app: LocalAppliance) -> list[int]:
    out = app.cluster.psql("kura_owner", "SELECT version FROM keyring ORDER BY version")
    return [int(v) for v in out.split()]


def kek_versions(app: LocalAppliance) -> Counter[int]:
    out = app.cluster.psql(
        "kura_owner", "SELECT kek_version, count(*) FROM subjects GROUP BY kek_version"
    )
    counts: Counter[int] = Counter()
    for line in out.split():
        version, count = line.split("|")
        counts[int(version)] = int(count)
    return counts


def test_key_rotation_keeps_every_number_readable_across_a_restart(
    shamir: LocalAppliance, anon: Api, staff: dict[str, Api]
) -> None:
    if anon.get("/status").json["sealed"]:
        unseal(anon, shamir.shares)
    admin, mu = staff["DA"], staff["MU"]
    rng = random.Random(777)
    registered: dict[str, str] = {}  # subject id -> number

    def register(count: int, prefix: str) -> None:
        for i in range(count):
            number = my_number(rng)
            r = mu.post("/payees", {"code": f"{prefix}-{i}", "name": f"鍵 {prefix}{i}",
                                    "number": number})
            assert r.status == 201, r.body
            registered[r.json["subject"]["id"]] = number

    def all_reveal() -> None:
        for sid, number in registered.items():
            r = mu.post(f"/subjects/{sid}/reveal", {"purpose": "payment_record"})
            assert r.status == 200, r.body
            assert r.json["number"] == number
            found = mu.post("/subjects/lookup", {"number": number})
            assert [s["id"] for s in found.json["subjects"]] == [sid]

    before = kek_versions(shamir)
    start = keyring_versions(shamir)
    assert start == [1]
    register(4, "KEY-A")
    assert kek_versions(shamir) == before + Counter({1: 4})

    # Only a DA rotates.
    refused = mu.post("/keys/rotate", {})
    assert (refused.status, refused.error_code) == (403, "permission_denied")
    assert keyring_versions(shamir) == [1]

    # Rotation without rewrap: a new version for new records, old ones untouched.
    r = admin.post("/keys/rotate", {})
    assert r.status == 200, r.body
    assert r.json == {"version": 2, "rewrapped": 0}
    assert keyring_versions(shamir) == [1, 2]
    assert set(kek_versions(shamir)) == {1}
    all_reveal()
    register(3, "KEY-B")
    assert kek_versions(shamir)[2] == 3
    placed = shamir.cluster.psql(
        "kura_owner", "SELECT DISTINCT kek_version FROM subjects WHERE code LIKE 'KEY-B-%'"
    ).split()
    assert placed == ["2"]
    all_reveal()

    # Rotation with rewrap: every data key moves to the new version.
    total = sum(kek_versions(shamir).values())
    r = admin.post("/keys/rotate", {"rewrap": True})
    assert r.status == 200, r.body
    assert r.json == {"version": 3, "rewrapped": total}
    assert keyring_versions(shamir) == [1, 2, 3]
    assert kek_versions(shamir) == Counter({3: total})
    all_reveal()
    register(2, "KEY-C")
    assert kek_versions(shamir) == Counter({3: total + 2})

    actions = shamir.cluster.psql(
        "kura_owner",
        "SELECT action || ':' || (detail->>'version') FROM audit"
        " WHERE action = 'keys.rotate' ORDER BY seq",
    ).split()
    assert actions == ["keys.rotate:2", "keys.rotate:3"]
    denied = shamir.cluster.psql(
        "kura_owner",
        "SELECT count(*) FROM audit WHERE action = 'keys.rotate' AND outcome = 'denied'",
    )
    assert denied.strip() == "1"

    # After a restart the whole keyring opens again with the custodians' shares.
    restart_vault(shamir)
    assert mu.get("/subjects").error_code == "sealed"
    unseal(anon, shamir.shares[1:4])
    all_reveal()
    # Accounts still work: the DA's second factor was sealed under version 1.
    # (The code of the next step: this step's code was used at enrolment.)
    code = pyotp.TOTP(admin.totp_secret).at(time.time() + 30)
    login = anon.post("/session", {"username": "admin", "password": admin.password,
                                   "totp": code})
    assert login.status == 200, login.body
    assert anon.get("/users", token=login.json["token"]).status == 200
    register(1, "KEY-D")
    assert kek_versions(shamir) == Counter({3: total + 3})


@pytest.mark.skipif(shutil.which("systemd-creds") is None, reason="systemd-creds not installed")
def test_creds_seal_opens_by_itself_at_every_start() -> None:
    app = new_appliance("creds", "creds")
    try:
        app.start()
        assert app.shares == []  # no recovery shares were asked for
        anon = Api(app.url, app.cert)
        status = anon.get("/status").json
        assert status["sealed"] is False and status["seal_mode"] == "creds"
        assert "shares_needed" not in status
        assert not (app.keys_dir / "root.key").exists()  # nothing in the clear

        password = app.bootstrap_da("admin")
        assert password
        admin = activate(anon.sign_in("admin", password), password)
        mu = provision(admin, "mu-creds", "MU")
        number = my_number(random.Random(9090))
        r = mu.post("/payees", {"code": "CR-1", "name": "資格 花子", "number": number})
        assert r.status == 201, r.body
        sid = r.json["subject"]["id"]

        restart_vault(app)
        assert anon.get("/status").json["sealed"] is False
        revealed = mu.post(f"/subjects/{sid}/reveal", {"purpose": "payment_record"})
        assert revealed.status == 200, revealed.body
        assert revealed.json["number"] == number
        # Once open, /unseal only reports the status.
        r = anon.post("/unseal", {"share": "hello world"})
        assert r.status == 200 and r.json["sealed"] is False
        unseals = app.cluster.psql(
            "kura_owner", "SELECT detail->>'seal' FROM audit WHERE action = 'vault.unseal'"
        ).split()
        assert unseals == ["creds", "creds"]
    finally:
        _dispose(app)
