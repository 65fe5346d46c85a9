"""Tampering with the audit log in the database is caught by the exported
bundle: an SA exports, ``kura audit verify`` checks the file anywhere and
names the first bad entry. The daemons' own database role cannot change the
log at all, and no entry ever holds a My Number.

Service tests: a real appliance; the tampering is done as the PostgreSQL
superuser, as an intruder with the disk would."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from kura.core import audit
from kura.core.errors import CommandFailed
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, first_da, hyphenated, my_numbers, provision

SAVED = ("audit", "audit_checkpoints")
RESTORE = "TRUNCATE {0};\nINSERT INTO {0} TABLE saved_{0};\nDROP TABLE saved_{0};\n"


@dataclass
class Scene:
    app: LocalAppliance
    users: dict[str, Api]
    numbers: list[str]


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    """An appliance with a morning's activity: sign-ins, a failed one,
    registrations, reveals by an MU, and operations refused."""
    app = new_appliance("tamper")
    try:
        app.start()
        admin = first_da(app)
        users = {
            "DA": admin,
            "MU": provision(admin, "mu-audit", "MU"),
            "SA": provision(admin, "sa-audit", "SA"),
        }
        mu = users["MU"]
        numbers = my_numbers(4, seed=8080)
        for i, number in enumerate(numbers):
            typed = hyphenated(number) if i % 2 else number
            r = mu.post("/payees", {"code": f"AU-{i}", "name": f"監査 {i}", "number": typed})
            assert r.status == 201, r.body
            sid = r.json["subject"]["id"]
            assert mu.post(f"/subjects/{sid}/reveal", {"purpose": "payment_record"}).status == 200
            assert mu.post("/subjects/lookup", {"number": number}).status == 200
        # Refusals that are logged: an MU reading the log, a reveal for a
        # purpose the subject does not allow, another person's number, a
        # wrong password.
        assert mu.get("/audit").status == 403
        assert mu.post("/payees", {"code": "AU-X", "name": "別人", "number": numbers[0]}
                       ).error_code == "duplicate_number"
        assert mu.post(f"/subjects/{sid}/reveal", {"purpose": "health_pension"}).status == 422
        wrong = {"username": "mu-audit", "password": "Wrong-pass-123!"}
        assert Api(app.url, app.cert).post("/session", wrong).status == 401
        yield Scene(app, users, numbers)
    finally:
        app.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)


def superuser(app: LocalAppliance, sql: str) -> str:
    """SQL as the PostgreSQL superuser, append-only triggers switched off."""
    return app.cluster.psql(
        "postgres", f"BEGIN;\nSET LOCAL session_replication_role = replica;\n{sql}\nCOMMIT;\n"
    )


def owner(app: LocalAppliance, sql: str) -> str:
    return app.cluster.psql("kura_owner", sql).strip()


def export(scene: Scene, path: Path) -> Path:
    r = scene.users["SA"].get("/audit/export")
    assert r.status == 200, r.body[:300]
    assert r.headers["content-type"].startswith("application/x-ndjson")
    path.write_bytes(r.body)
    return path


def verify(path: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kura.cli", "audit", "verify", str(path), *more],
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture
def restore(scene: Scene) -> Iterator[None]:
    """Keep a copy of the log and put it back afterwards, with the vault's
    signed head file (outside the database) that goes with it. The vault is
    stopped meanwhile so that no checkpoint is signed half-way through."""
    app = scene.app
    app.stop_daemon("vault")
    superuser(app, "".join(f"CREATE TABLE saved_{t} AS TABLE {t};\n" for t in SAVED))
    head_file = app.keys_dir / "audit" / "head.json"
    head = head_file.read_bytes()
    app.start_daemon("vault")
    yield
    app.stop_daemon("vault")
    superuser(app, "".join(RESTORE.format(t) for t in SAVED))
    head_file.write_bytes(head)
    app.start_daemon("vault")


def test_untouched_log_exports_and_verifies(scene: Scene, tmp_path: Path) -> None:
    bundle = export(scene, tmp_path / "audit.jsonl")
    done = verify(bundle)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: ")
    entries = int(owner(scene.app, "SELECT count(*) FROM audit"))
    assert f"OK: {entries} entries" in done.stdout  # the export's own entry included
    assert "signing key: " in done.stdout

    # Offline: the file alone, in a folder of its own, is all the verifier needs.
    elsewhere = tmp_path / "usb-stick"
    elsewhere.mkdir()
    copy = Path(shutil.copy(bundle, elsewhere / "copied.jsonl"))
    again = subprocess.run(
        [sys.executable, "-m", "kura.cli", "audit", "verify", copy.name],
        capture_output=True, text=True, timeout=60, check=False, cwd=elsewhere,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout == done.stdout

    # What happened this morning is all there.
    actions = owner(scene.app, "SELECT DISTINCT action || '/' || outcome FROM audit").split()
    for expected in ("login/ok", "login/denied", "subject.register/ok", "subject.reveal/ok",
                     "subject.reveal/denied", "subject.register/denied", "subject.lookup/ok",
                     "audit.list/denied", "audit.export/ok", "user.create/ok", "vault.unseal/ok"):
        assert expected in actions, expected


def test_no_entry_holds_a_my_number(scene: Scene, tmp_path: Path) -> None:
    text = export(scene, tmp_path / "audit.jsonl").read_text("utf-8")
    for number in scene.numbers:
        for form in (number, hyphenated(number), number[:4] + " " + number[4:8] + " " + number[8:]):
            assert form not in text
    table = owner(scene.app, "SELECT string_agg(audit::text, E'\\n') FROM audit")
    for number in scene.numbers:
        assert number not in table and hyphenated(number) not in table


def seq_of(app: LocalAppliance, action: str, nth: int = 0) -> int:
    return int(owner(app, f"SELECT seq FROM audit WHERE action = '{action}' "  # noqa: S608
                          f"ORDER BY seq OFFSET {int(nth)} LIMIT 1"))


# How each row is chosen (action, which one of them), then the SQL.
TAMPERING: dict[str, tuple[tuple[str, int], tuple[str, int] | None, str]] = {
    "detail changed": (
        ("subject.reveal", 1),
        None,
        "UPDATE audit SET detail = detail || '{\"note\": \"nothing to see\"}' WHERE seq = {a};",
    ),
    "actor changed": (
        ("subject.reveal", 2),
        None,
        "UPDATE audit SET actor = 'someone-else' WHERE seq = {a};",
    ),
    "refusal turned into success": (
        ("audit.list", 0),
        None,
        "UPDATE audit SET outcome = 'ok' WHERE seq = {a};",
    ),
    "row deleted": (("subject.lookup", 1), None, "DELETE FROM audit WHERE seq = {a};"),
    "two rows swapped": (
        ("subject.register", 1),
        ("subject.register", 3),
        # Row a takes row b's contents and b takes a's; the seq column stays.
        "UPDATE audit t SET at = o.at, actor = o.actor, role = o.role, action = o.action,"
        " outcome = o.outcome, target = o.target, purpose = o.purpose, client = o.client,"
        " detail = o.detail, prev_hash = o.prev_hash, hash = o.hash"
        " FROM (SELECT {a} AS dest, * FROM audit WHERE seq = {b}"
        "       UNION ALL SELECT {b} AS dest, * FROM audit WHERE seq = {a}) o"
        " WHERE t.seq = o.dest;",
    ),
}


@pytest.mark.parametrize("how", TAMPERING)
@pytest.mark.usefixtures("restore")
def test_tampering_in_the_database_is_named_by_the_verifier(
    scene: Scene, tmp_path: Path, how: str
) -> None:
    app = scene.app
    first_row, second_row, sql = TAMPERING[how]
    a = seq_of(app, *first_row)
    b = seq_of(app, *second_row) if second_row else a
    assert a <= b
    assert int(owner(app, "SELECT max(seq) FROM audit")) > b  # not the head: a real gap
    clean = verify(export(scene, tmp_path / "before.jsonl"))
    assert clean.returncode == 0, clean.stdout
    superuser(app, sql.replace("{a}", str(a)).replace("{b}", str(b)))

    bundle = export(scene, tmp_path / "audit.jsonl")
    done = verify(bundle)
    assert done.returncode == 1, done.stdout
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"NG at entry {a}: "), done.stdout
    assert f"entry {a}" in first.removeprefix(f"NG at entry {a}: ").lower()
    assert "記録" in done.stdout  # and in Japanese on the next line


def test_the_vaults_role_cannot_change_the_log(scene: Scene) -> None:
    app = scene.app
    snapshot = "SELECT md5(string_agg(t::text, '|' ORDER BY seq)) FROM {} t WHERE seq <= {}"
    head = int(owner(app, "SELECT max(seq) FROM audit"))
    cp_head = int(owner(app, "SELECT coalesce(max(seq), 0) FROM audit_checkpoints"))
    bounds = {"audit": head, "audit_checkpoints": cp_head}
    before = {t: owner(app, snapshot.format(t, bounds[t])) for t in SAVED}
    for table in SAVED:
        for sql in (
            f"UPDATE {table} SET seq = seq WHERE seq = 1",  # noqa: S608
            f"DELETE FROM {table} WHERE seq = {head}",  # noqa: S608
            f"TRUNCATE {table}",
        ):
            with pytest.raises(CommandFailed, match="permission denied"):
                app.cluster.psql("kura_vault", sql)
        # The table's owner is stopped by the append-only trigger.
        for verb in ("UPDATE {} SET seq = seq", "DELETE FROM {}", "TRUNCATE {}"):
            sql = verb.format(table)
            with pytest.raises(CommandFailed, match="append-only"):
                app.cluster.psql("kura_owner", sql)
    assert {t: owner(app, snapshot.format(t, bounds[t])) for t in SAVED} == before
    assert int(owner(app, "SELECT count(*) FROM audit")) >= head
    assert int(owner(app, "SELECT coalesce(max(seq), 0) FROM audit_checkpoints")) >= cp_head


@pytest.mark.usefixtures("restore")
def test_a_rewritten_and_rehashed_chain_is_caught_by_the_signed_checkpoint(
    scene: Scene, tmp_path: Path
) -> None:
    """An intruder who also recomputes every later hash leaves a consistent
    chain, but it no longer matches what the vault signed: the vault stops at
    once and records the incident in the chain, the export shows it as a
    recorded incident, and ``--after`` an export taken before names the
    rewritten entries."""
    app = scene.app
    a = seq_of(app, "subject.reveal", 0)
    before = export(scene, tmp_path / "before.jsonl")
    with psycopg.connect(app.cluster.dsn("postgres"), row_factory=dict_row) as conn:
        found = conn.execute(
            "SELECT min(seq) AS seq FROM audit_checkpoints WHERE seq >= %s", (a,)
        ).fetchone()
        assert found and found["seq"], "no checkpoint covers the entry yet"
        conn.execute("SET session_replication_role = replica")
        rows = conn.execute("SELECT * FROM audit WHERE seq >= %s ORDER BY seq", (a - 1,)).fetchall()
        prev = bytes(rows[0]["hash"])
        for row in rows[1:]:
            if row["seq"] == a:
                row["actor"] = "someone-else"
            digest = audit.chain_hash(
                prev, row["seq"], row["at"], row["actor"], row["role"], row["action"],
                row["outcome"], row["target"], row["purpose"], row["client"], row["detail"],
            )
            conn.execute(
                "UPDATE audit SET actor = %s, prev_hash = %s, hash = %s WHERE seq = %s",
                (row["actor"], prev, digest, row["seq"]),
            )
            prev = digest

    # The vault refuses the clerk: the chain no longer reaches its signed head.
    r = scene.users["MU"].get("/subjects")
    assert r.status == 503 and r.error_code == "audit_integrity", r.body[:300]
    bundle = export(scene, tmp_path / "audit.jsonl")
    done = verify(bundle)
    assert done.returncode == 0, done.stdout
    incident = re.search(
        r"recorded incident \(entry \d+, acknowledged by .*\): entries (\d+)–(\d+): "
        r"checkpoint mismatch", done.stdout)
    assert incident, done.stdout
    assert int(incident.group(1)) <= a <= int(incident.group(2))

    after = verify(bundle, "--after", str(before))
    assert after.returncode == 3, after.stdout
    assert re.search(rf"  - entries {a}–\d+: rewritten", after.stdout), after.stdout
