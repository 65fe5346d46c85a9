"""The head of the audit chain lives outside the database too.

Someone with the database owner's rights (the append-only trigger switched
off) deletes, changes, reorders or replaces audit entries. Whatever they do,
the vault notices -- before its next append, in its sweep of the whole chain,
or at start from the signed head file on the keys partition -- records the
incident in the chain, and stops: a clerk gets ``audit_integrity``, the status
names every fault, and only an SA *and* a DA acknowledging lets work resume.
``kura audit verify NEW --after OLD`` then names each fault between the two
exports.

One appliance for the whole matrix; the tables and the head file are put back
between cases (as tests/test_audit_tamper.py does)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
from psycopg.rows import dict_row

from kura.core import audit
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, Response, first_da, fresh_totp, my_numbers, provision
from tests.test_audit_tamper import RESTORE, SAVED, Scene, export, owner, superuser, verify

HEAD_FILE = "audit/head.json"


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    app = new_appliance("integrity")
    # Short timers: checkpoints every half second, a sweep every second; a
    # sweep window far shorter than the chain, so that an entry changed in
    # place is found by the rolling window, not by reading the whole chain.
    app.extra_config = {"vault": {"checkpoint_seconds": 0.5, "integrity_sweep_seconds": 1.0,
                                  "integrity_sweep_window": 8}}
    try:
        app.start()
        admin = first_da(app)
        users = {
            "DA": admin,
            "MU": provision(admin, "mu-integrity", "MU"),
            "SA": provision(admin, "sa-integrity", "SA"),
        }
        numbers = my_numbers(4, seed=1010)
        for i, number in enumerate(numbers):
            r = users["MU"].post("/payees", {"code": f"IN-{i}", "name": f"完全 {i}",
                                             "number": number})
            assert r.status == 201, r.body
            sid = r.json["subject"]["id"]
            assert users["MU"].post(f"/subjects/{sid}/reveal",
                                    {"purpose": "payment_record"}).status == 200
        yield Scene(app, users, numbers)
    finally:
        app.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)


@pytest.fixture
def restore(scene: Scene) -> Iterator[None]:
    """Keep the log and the head file, put both back afterwards (the vault
    stopped meanwhile, so it starts again from the untouched state)."""
    app = scene.app
    app.stop_daemon("vault")
    superuser(app, "".join(f"CREATE TABLE saved_{t} AS TABLE {t};\n" for t in SAVED))
    head = (app.keys_dir / HEAD_FILE).read_bytes()
    app.start_daemon("vault")
    yield
    app.stop_daemon("vault")
    superuser(app, "".join(RESTORE.format(t) for t in SAVED))
    (app.keys_dir / HEAD_FILE).write_bytes(head)
    app.start_daemon("vault")


def status(scene: Scene) -> dict[str, Any]:
    r = scene.users["SA"].anonymous().get("/status")
    assert r.status == 200, r.body[:300]
    return dict(r.json["audit_integrity"])


def wait_for_fault(scene: Scene, timeout: float = 20.0) -> dict[str, Any]:
    """The vault's sweep runs every second: wait until it has stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = status(scene)
        if state["state"] == "fault":
            return state
        time.sleep(0.2)
    raise AssertionError("the vault did not notice the tampering")


def console(api: Api, method: str, path: str, form: dict[str, str] | None = None) -> Response:
    """A console page as ``api``'s user (their session as the cookie), no browser."""
    conn = api._connection()
    headers = {"Cookie": f"kura_session={api.token}"}
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        raw = conn.getresponse()
        return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
    finally:
        conn.close()


def acknowledge_in_console(api: Api) -> Response:
    page = console(api, "GET", "/audit-integrity")
    assert page.status == 200, page.body[:300]
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page.body)
    assert csrf, page.body[:500]
    return console(api, "POST", "/audit-integrity/acknowledge", {"csrf": csrf.group(1).decode()})


def top(app: LocalAppliance) -> int:
    return int(owner(app, "SELECT max(seq) FROM audit"))


def seq_of(app: LocalAppliance, action: str, nth: int = 0) -> int:
    return int(owner(app, f"SELECT seq FROM audit WHERE action = '{action}' "  # noqa: S608
                          f"ORDER BY seq OFFSET {int(nth)} LIMIT 1"))


SWAP = (
    "UPDATE audit t SET at = o.at, actor = o.actor, role = o.role, action = o.action,"
    " outcome = o.outcome, target = o.target, purpose = o.purpose, client = o.client,"
    " detail = o.detail, prev_hash = o.prev_hash, hash = o.hash"
    " FROM (SELECT {b} AS dest, * FROM audit WHERE seq = {a}"
    "       UNION ALL SELECT {a} AS dest, * FROM audit WHERE seq = {b}) o"
    " WHERE t.seq = o.dest;"
)


def shorter_chain(app: LocalAppliance, keep: int, drop: int) -> None:
    """Replace the whole table by a self-consistent chain: entries 1..keep
    without entry ``drop``, renumbered and every hash recomputed."""
    with psycopg.connect(app.cluster.dsn("postgres"), row_factory=dict_row) as conn:
        conn.execute("SET session_replication_role = replica")
        rows = conn.execute(
            "SELECT * FROM audit WHERE seq <= %s AND seq <> %s ORDER BY seq", (keep, drop)
        ).fetchall()
        conn.execute("DELETE FROM audit")
        prev = audit.GENESIS
        for seq, row in enumerate(rows, start=1):
            digest = audit.chain_hash(
                prev, seq, row["at"], row["actor"], row["role"], row["action"],
                row["outcome"], row["target"], row["purpose"], row["client"], row["detail"],
            )
            conn.execute(
                "INSERT INTO audit (seq, at, actor, role, action, outcome, target, purpose,"
                " client, detail, prev_hash, hash) VALUES"
                " (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::jsonb,%s,%s)",
                (seq, row["at"], row["actor"], row["role"], row["action"], row["outcome"],
                 row["target"], row["purpose"], row["client"], psycopg.types.json.Jsonb(
                     row["detail"]), prev, digest),
            )
            prev = digest


def tamper(app: LocalAppliance, how: str, old_top: int) -> tuple[list[str], list[str]]:
    """Do it; return (what the vault's status must name, what --after must name)
    as regular expressions over the faults' English text."""
    a = seq_of(app, "subject.reveal", 1)
    b = seq_of(app, "subject.reveal", 2)
    assert a < b < old_top
    if how == "tail deleted":
        # The newest entries and the checkpoints that cover them: what the
        # trigger used to be the only guard of.
        first = old_top - 2
        superuser(app, f"DELETE FROM audit WHERE seq >= {first};"  # noqa: S608
                       f" DELETE FROM audit_checkpoints WHERE seq >= {first};")
        return [rf"entries {first}–\d+: missing"], [rf"entries {first}–{old_top}: missing"]
    if how == "middle deleted":
        superuser(app, f"DELETE FROM audit WHERE seq = {a};")  # noqa: S608
        return [rf"entry {a}: missing"], [rf"entry {a}: missing"]
    if how == "one updated":
        superuser(app, f"UPDATE audit SET actor = 'someone-else' WHERE seq = {a};")  # noqa: S608
        return [rf"entry {a}: altered"], [rf"entry {a}: altered"]
    if how == "two reordered":
        superuser(app, SWAP.format(a=a, b=b))
        return (
            [rf"entry {a}: reordered \(found at entry {b}\)",
             rf"entry {b}: reordered \(found at entry {a}\)"],
            [rf"entry {a}: reordered \(found at entry {b}\)",
             rf"entry {b}: reordered \(found at entry {a}\)"],
        )
    assert how == "replaced by a shorter chain"
    keep = old_top - 4
    shorter_chain(app, keep, a)
    return (
        [rf"entries {keep}–\d+: missing"],
        [rf"entries {a}–{keep - 1}: rewritten", rf"entries {keep}–{old_top}: missing"],
    )


CASES = ["tail deleted", "middle deleted", "one updated", "two reordered",
         "replaced by a shorter chain"]


@pytest.mark.parametrize("how", CASES)
@pytest.mark.usefixtures("restore")
def test_tampering_stops_the_vault_until_an_sa_and_a_da_acknowledge(
    scene: Scene, tmp_path: Path, how: str
) -> None:
    app, mu, sa, da = scene.app, scene.users["MU"], scene.users["SA"], scene.users["DA"]
    old = export(scene, tmp_path / "old.jsonl")
    assert verify(old).returncode == 0
    old_top = top(app)
    for_status, for_after = tamper(app, how, old_top)

    state = wait_for_fault(scene)
    faults = " | ".join(f["en"] for f in state["faults"])
    for pattern in for_status:
        assert re.search(pattern, faults), (pattern, faults)
    assert state["incident"] and state["acknowledged"] == []

    # The clerk's ordinary work is refused, and says why.
    r = mu.get("/subjects")
    assert r.status == 503 and r.error_code == "audit_integrity", r.body[:300]
    assert "audit integrity" in r.json["error"]["message_en"]
    assert "監査ログ" in r.json["error"]["message"]
    # ... so is signing in as one (checked once: each sign-in spends a TOTP
    # step, and the next case would wait for a new one), and the DA's
    # account work.
    if how == CASES[0]:
        login = {"username": mu.username, "password": mu.password,
                 "totp": fresh_totp(mu.totp_secret)}
        assert mu.anonymous().post("/session", login).error_code == "audit_integrity"
    assert da.get("/users").error_code == "audit_integrity"
    # The SA can still look at the log.
    assert sa.get("/audit", query={"action": "audit.integrity_fault"}).status == 200

    # One admin is not enough.
    r = sa.post("/audit/acknowledge")
    assert r.status == 200 and r.json["resumed"] is False, r.body[:300]
    assert mu.get("/subjects").error_code == "audit_integrity"
    assert status(scene)["acknowledged"] == ["SA"]
    r = da.post("/audit/acknowledge")
    assert r.status == 200 and r.json["resumed"] is True, r.body[:300]
    assert status(scene) == {"state": "ok"}
    assert mu.get("/subjects").status == 200

    # The incident stays in the chain, signed.
    entries = sa.get("/audit", query={"action": "audit.integrity"}).json["entries"]
    actions = [e["action"] for e in entries]
    assert "audit.integrity_fault" in actions and "audit.integrity_acknowledged" in actions
    ack = next(e for e in entries if e["action"] == "audit.integrity_acknowledged")
    assert sorted(ack["detail"]["acknowledged_by"]) == sorted([sa.username, da.username])

    new = export(scene, tmp_path / "new.jsonl")
    alone = verify(new)
    assert alone.returncode == 0, alone.stdout  # every fault is a recorded incident
    assert f"acknowledged by {sa.username}, {da.username}" in alone.stdout
    after = verify(new, "--after", str(old))
    assert after.returncode == 3, after.stdout
    assert "does not extend" in after.stdout
    for pattern in for_after:
        assert re.search(r"  - " + pattern, after.stdout), (pattern, after.stdout, alone.stdout)


@pytest.mark.usefixtures("restore")
def test_a_restart_after_deleting_the_tail_is_caught_by_the_head_file(scene: Scene) -> None:
    app = scene.app
    assert scene.users["MU"].get("/subjects").status == 200
    app.stop_daemon("vault")  # writes the signed head file
    head = audit.parse_head((app.keys_dir / HEAD_FILE).read_bytes())
    assert head.seq == top(app)
    first = head.seq - 2
    superuser(app, f"DELETE FROM audit WHERE seq >= {first};"  # noqa: S608
                   f" DELETE FROM audit_checkpoints WHERE seq >= {first};")
    app.start_daemon("vault")

    state = status(scene)
    assert state["state"] == "fault", state
    assert any(f["kind"] == "missing" and f["first"] == first and f["last"] == head.seq
               for f in state["faults"]), state
    assert state["expected_head"] == {"seq": head.seq, "hash": head.hash.hex()}
    assert state["found_head"]["seq"] == first - 1
    assert scene.users["MU"].get("/subjects").error_code == "audit_integrity"
    # The incident entry follows the trusted head, so the gap stays visible.
    incident = int(owner(app, "SELECT seq FROM audit WHERE action = 'audit.integrity_fault'"))
    assert incident == head.seq + 1

    # The console: a clerk is sent to the "stopped" page; the SA and the DA
    # see a banner on every page and acknowledge there.
    mu, sa, da = scene.users["MU"], scene.users["SA"], scene.users["DA"]
    home = console(mu, "GET", "/")
    assert home.status == 303 and home.headers["location"] == "/audit-integrity"
    stopped = console(mu, "GET", "/audit-integrity")
    assert stopped.status == 503
    assert "停止中: 監査ログの完全性" in stopped.body.decode()
    assert 'id="acknowledge"' not in stopped.body.decode()
    for admin in (sa, da):
        text = console(admin, "GET", "/").body.decode()
        assert "監査ログの完全性: 保管庫は停止しています。" in text, text[:2000]
    shown = console(sa, "GET", "/audit-integrity").body.decode()
    assert f"記録 {first}〜{head.seq}: 欠落" in shown
    done = acknowledge_in_console(sa)
    assert done.status == 303 and done.headers["location"] == "/audit-integrity"
    assert "確認しました" in console(sa, "GET", "/audit-integrity").body.decode()
    done = acknowledge_in_console(da)
    assert done.status == 303 and done.headers["location"] == "/"
    assert status(scene) == {"state": "ok"}
    assert console(mu, "GET", "/").status == 200


def test_an_untouched_chain_keeps_the_head_file_current(scene: Scene) -> None:
    app = scene.app
    assert scene.users["MU"].get("/subjects").status == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        head = audit.parse_head((app.keys_dir / HEAD_FILE).read_bytes())
        if head.seq == top(app):
            break
        time.sleep(0.2)
    assert head.seq == top(app), "the head file did not follow the checkpoints"
    assert (app.keys_dir / HEAD_FILE).stat().st_mode & 0o777 == 0o600
    assert status(scene) == {"state": "ok"}
    # Every export's closing checkpoint is kept.
    before = int(owner(app, "SELECT count(*) FROM audit_exports"))
    r = scene.users["SA"].get("/audit/export")
    assert r.status == 200
    kept = owner(app, "SELECT seq || ' ' || sha256 || ' ' || actor FROM audit_exports "
                      "ORDER BY id DESC LIMIT 1").split()
    assert int(owner(app, "SELECT count(*) FROM audit_exports")) == before + 1
    assert kept[2] == scene.users["SA"].username
    assert audit.read_bundle(r.body).final.seq == int(kept[0])


def test_a_local_override_of_the_checkpoint_interval_is_in_the_unseal_entry(
    scene: Scene,
) -> None:
    # Root can set [vault] checkpoint_seconds in kura.toml without any SA; the
    # SA sees it in the log, on the entry of every unseal.
    entries = scene.users["SA"].get("/audit", query={"action": "vault.unseal"}).json["entries"]
    assert entries, "no vault.unseal entry"
    assert entries[-1]["detail"]["local_overrides"] == {"checkpoint_seconds": 0.5}


def test_an_appliance_without_overrides_records_none(tmp_path: Path) -> None:
    from kura.config import VaultConfig

    plain = VaultConfig(socket=tmp_path / "s", keys_dir=tmp_path / "k")
    assert plain.local_overrides() == {}
    weakened = VaultConfig(socket=tmp_path / "s", keys_dir=tmp_path / "k",
                           audit_head_check=False, checkpoint_seconds=60)
    assert weakened.local_overrides() == {"audit_head_check": False, "checkpoint_seconds": 60}
