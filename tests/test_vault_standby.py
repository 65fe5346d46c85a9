"""kura-vault and kura-console follow the node's role on an HA pair.

Two appliances on this machine: A's PostgreSQL is the primary, B's a
streaming replica of it (pg_basebackup over A's Unix socket), B's keys
partition holds the same sealed root key (as the pairing ceremony leaves it).
Each has its own kura-vault and kura-console with an ``[ha]`` section. Plain
streaming replication stands in for pg_auto_failover here: what is tested is
that the vault asks its own database its role and acts on it by itself.

One pair for the module, in the order a pair lives: B is a standby (refuses
everything but its status, never writes, follows A's audit chain), B is
promoted (checks the chain, records ``ha.promoted``, takes writes, no
restart), A is made a replica of B (A's running vault turns standby), and a
cut of the chain on B's database puts both into the audit-integrity state."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kura.core import audit
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, first_da, my_numbers, provision
from tests.test_audit_integrity import console
from tests.test_audit_tamper import owner, superuser

HA_CONFIG: dict[str, dict[str, Any]] = {
    # kura-hasync's settings; the vault only notes that it is one of a pair.
    "ha": {"node": "node-a", "monitor": "postgres://autoctl_node@192.0.2.3/pg_auto_failover",
           "local_dsn": "host=/run/postgresql dbname=postgres", "vip": "192.0.2.10/24",
           "interface": "eth0"},
    "vault": {"checkpoint_seconds": 0.5, "integrity_sweep_seconds": 1.0},
}


@dataclass
class Pair:
    a: LocalAppliance
    b: LocalAppliance
    admin: Api  # A's DA
    mu: Api  # an MU signed in on A


def clone_keys(source: LocalAppliance, target: LocalAppliance) -> None:
    """The standby's keys partition: the same sealed root key, no head file
    (the pairing ceremony brings the key; the head is the standby's own)."""
    shutil.copytree(source.keys_dir, target.keys_dir, ignore=shutil.ignore_patterns("audit"))


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    a = new_appliance("ha-a")
    b = new_appliance("ha-b")
    a.extra_config = b.extra_config = HA_CONFIG
    try:
        a.start()
        admin = first_da(a)
        mu = provision(admin, "mu-ha", "MU")
        clone_keys(a, b)
        b.cluster.replicate_from(a.cluster)
        b.start()
        yield Pair(a, b, admin, mu)
    finally:
        for app in (b, a):
            app.stop()
            shutil.rmtree(app.state.parent, ignore_errors=True)


def status(app: LocalAppliance) -> dict[str, Any]:
    r = Api(app.url, app.cert).get("/status")
    assert r.status == 200, r.body[:300]
    return dict(r.json)


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def top(app: LocalAppliance) -> int:
    return int(owner(app, "SELECT max(seq) FROM audit"))


def held_head(app: LocalAppliance) -> audit.TrustedHead:
    return audit.parse_head((app.keys_dir / "audit" / "head.json").read_bytes())


def caught_up(primary: LocalAppliance, standby: LocalAppliance) -> dict[str, Any] | None:
    """The standby's status once its vault holds the primary's head."""
    seen = status(standby)
    held = seen.get("standby", {}).get("audit_seq")
    return seen if held == top(primary) else None


def on(app: LocalAppliance, api: Api) -> Api:
    """``api``'s user and session, talking to ``app``'s console."""
    return Api(app.url, app.cert, api.token, api.username, api.password, api.totp_secret,
               api.role)


def register(mu: Api, code: str, number: str) -> dict[str, Any]:
    r = mu.post("/payees", {"code": code, "name": f"冗長 {code}", "number": number})
    assert r.status == 201, (r.status, r.body[:300])
    return dict(r.json["subject"])


def pg_log(app: LocalAppliance) -> str:
    return app.cluster.logfile.read_text(errors="replace")


def test_the_standby_says_what_it_is_and_refuses_work(pair: Pair) -> None:
    assert status(pair.a)["role"] == "primary"
    seen = wait_for("B's vault holds A's head", lambda: caught_up(pair.a, pair.b))
    assert seen["role"] == "standby"
    assert not seen["sealed"]  # unsealed by its host seal, without a write
    assert seen["audit_integrity"] == {"state": "ok"}
    assert seen["standby"]["replay_lsn"]

    clerk_on_b = on(pair.b, pair.mu)
    for r in (
        clerk_on_b.anonymous().post("/session", {"username": "mu-ha", "password": "x" * 20}),
        clerk_on_b.get("/session"),  # who am I: not even a session's last-seen time
        clerk_on_b.get("/purposes"),
        clerk_on_b.post("/payees", {"code": "X", "name": "x", "number": my_numbers(1)[0]}),
    ):
        assert r.status == 503, (r.status, r.body[:300])
        assert r.error_code == "standby"
        assert "floating address" in r.json["error"]["message_en"]
        assert "フローティング" in r.json["error"]["message"]

    # The console: every page says so, the sign-in page too.
    login = clerk_on_b.anonymous().page("/login")
    assert login.status == 200
    assert "このアプライアンスは待機系".encode() in login.body
    assert clerk_on_b.anonymous().page("/").headers["location"] == "/login"
    home = console(clerk_on_b, "GET", "/")  # with the clerk's session cookie
    assert home.status == 503
    assert b"standby-banner" in home.body
    assert "共有（フローティング）アドレス".encode() in home.body
    assert b"standby-banner" not in Api(pair.a.url, pair.a.cert).page("/login").body

    # Nothing was written: no statement reached B's database as a write.
    assert "read-only transaction" not in pg_log(pair.b)
    assert "Traceback" not in (pair.b.logs / "vault.log").read_text()


def test_a_write_on_the_primary_is_followed_by_the_standby(pair: Pair) -> None:
    before = top(pair.a)
    register(pair.mu, "HA-1", my_numbers(1, seed=4242)[0])
    assert top(pair.a) > before
    seen = wait_for("B's vault follows the new entries", lambda: caught_up(pair.a, pair.b))
    held = held_head(pair.b)  # its own signed head file moved with the chain
    assert wait_for("B's head file", lambda: held_head(pair.b).seq == top(pair.a))
    held = held_head(pair.b)
    assert held.seq == seen["standby"]["audit_seq"]
    assert held.hash.hex() == owner(pair.a, f"SELECT encode(hash, 'hex') FROM audit "  # noqa: S608
                                            f"WHERE seq = {held.seq}")


def test_the_promoted_standby_checks_the_chain_then_takes_writes(pair: Pair) -> None:
    wait_for("B caught up", lambda: caught_up(pair.a, pair.b))
    held = status(pair.b)["standby"]["audit_seq"]
    # The primary fails (its PostgreSQL stops; its vault keeps running).
    pair.a.cluster.stop()
    pair.b.cluster.promote()
    seen = wait_for("B's vault is the primary", lambda: (s := status(pair.b))["role"] == "primary"
                    and s)
    assert "standby" not in seen
    promoted = owner(pair.b, "SELECT seq || ' ' || (detail->>'previous_role') || ' ' ||"
                             " (detail->>'head_seq') FROM audit WHERE action = 'ha.promoted'")
    seq, previous, checked = promoted.split()
    assert previous == "standby"
    assert int(checked) == held and int(seq) > held
    # The unseal it did as a standby is recorded now, before the promotion.
    unseals = owner(pair.b, "SELECT seq FROM audit WHERE action = 'vault.unseal'"
                            " AND detail->>'unsealed_as' = 'standby'").split()
    assert len(unseals) == 1 and int(unseals[0]) < int(seq)

    # The clerk's session (replicated) works on B, and B takes writes.
    clerk = on(pair.b, pair.mu)
    subject = register(clerk, "HA-2", my_numbers(1, seed=4343)[0])
    r = clerk.post(f"/subjects/{subject['id']}/reveal", {"purpose": "payment_record"})
    assert r.status == 200, r.body[:300]
    assert "Traceback" not in (pair.b.logs / "vault.log").read_text()


def test_the_old_primary_rejoins_as_standby_without_a_restart(pair: Pair) -> None:
    vault_a = pair.a.procs["vault"]
    pair.a.cluster.replicate_from(pair.b.cluster)  # as after a failover: a fresh base backup
    seen = wait_for("A's vault is a standby", lambda: caught_up(pair.b, pair.a))
    assert seen["role"] == "standby"
    assert pair.a.procs["vault"] is vault_a and vault_a.poll() is None  # the same process
    r = on(pair.a, pair.mu).get("/purposes")
    assert r.status == 503 and r.error_code == "standby"
    # Its held head (from when it was the primary) is extended by B's chain.
    assert status(pair.a)["audit_integrity"] == {"state": "ok"}
    assert "read-only transaction" not in pg_log(pair.a)
    log = (pair.a.logs / "vault.log").read_text()
    assert "Traceback" not in log


def test_a_cut_of_the_chain_on_the_primary_stops_the_standby_too(pair: Pair) -> None:
    # B is the primary now, A its standby.
    register(on(pair.b, pair.mu), "HA-3", my_numbers(1, seed=4444)[0])
    wait_for("A caught up", lambda: caught_up(pair.b, pair.a))
    cut_from = top(pair.b) - 2
    superuser(pair.b, f"DELETE FROM audit WHERE seq >= {cut_from};\n"  # noqa: S608
                      f"DELETE FROM audit_checkpoints WHERE seq >= {cut_from};")
    for app in (pair.a, pair.b):
        state = wait_for(f"{app.appliance} stops",
                         lambda app=app: (s := status(app))["audit_integrity"]["state"] == "fault"
                         and s)
        kinds = {f["kind"] for f in state["audit_integrity"]["faults"]}
        assert "missing" in kinds, state
    assert status(pair.a)["role"] == "standby"
    assert status(pair.a)["audit_integrity"]["incident"] is None  # held, not written
    assert "read-only transaction" not in pg_log(pair.a)
