"""Killing kura-vault or PostgreSQL with SIGKILL in the middle of a bulk import
loses no acknowledged record and leaves no half-written one.

A client thread imports batches of 500 payees in a loop, the way a payroll
migration does, and notes which batches were acknowledged. Meanwhile the
vault (or the postmaster) is killed without warning and started again, and
the import goes on. Afterwards: every acknowledged row is there; every batch
is there whole or not at all; every row's number decrypts to what was sent;
sending an unacknowledged batch again is safe; the audit chain verifies."""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kura.core.errors import CommandFailed
from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.policy_support import set_policy
from tests.support import Api, first_da, my_numbers, provision

pytestmark = pytest.mark.slow

BATCH = 500
BATCHES_PER_TEST = 40


@dataclass
class Batch:
    index: int
    rows: list[dict[str, str]] = field(repr=False)
    started: float = 0.0
    status: int | None = None  # None: no answer at all (connection lost)
    done: bool = False  # the request is over, answered or not
    acked: bool = False

    @property
    def codes(self) -> list[str]:
        return [r["code"] for r in self.rows]


def acknowledged(status: int, body: Any, rows: int) -> bool:
    """What an integration may take as "all of it is stored"."""
    return (status == 200 and body["created"] + body["existing"] == rows
            and body["rejected"] == [])


class Importer(threading.Thread):
    """Posts batches until told to stop or out of batches; never sends a batch twice."""

    def __init__(self, api: Api, batches: list[Batch]) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.todo = list(batches)
        self.sent: list[Batch] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while self.todo and not self.halt.is_set():
            batch = self.todo.pop(0)
            batch.started = time.monotonic()
            self.sent.append(batch)
            try:
                r = self.api.post("/subjects/import", {"rows": batch.rows})
                batch.status = r.status
                batch.acked = acknowledged(r.status, r.json, len(batch.rows))
            except (OSError, http.client.HTTPException):
                pass
            finally:
                batch.done = True
            if not batch.acked:
                time.sleep(0.05)

    def acked_since(self, moment: float) -> int:
        return sum(1 for b in list(self.sent) if b.acked and b.started >= moment)

    def failed(self) -> list[Batch]:
        return [b for b in list(self.sent) if b.done and not b.acked]

    def finish(self) -> list[Batch]:
        self.halt.set()
        self.join(120)
        assert not self.is_alive()
        return self.sent


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 30.0) -> float:
    """Seconds it took ``condition`` to hold; fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.05)
    return time.monotonic() - started


def make_batches(prefix: str, numbers: list[str]) -> list[Batch]:
    return [
        Batch(b, [{"kind": "payee", "code": f"{prefix}-{b:03d}-{i:03d}",
                   "name": f"移行 {prefix} {b}-{i}", "name_kana": "イコウ", "number": n}
                  for i, n in enumerate(numbers[b * BATCH : (b + 1) * BATCH])])
        for b in range(len(numbers) // BATCH)
    ]


@dataclass
class Faulty:
    appliance: LocalAppliance
    mu: Api
    sa: Api
    numbers: list[str] = field(repr=False)


@pytest.fixture(scope="module")
def faulty() -> Iterator[Faulty]:
    appliance = new_appliance("faults")
    appliance.start()
    try:
        admin = first_da(appliance)
        mu, sa = provision(admin, "mu-faults", "MU"), provision(admin, "sa-faults", "SA")
        # The checks export every row at once, far over the default approval
        # threshold; raising it weakens the policy, so an MA approves.
        raised = set_policy(sa, {"export_approval_threshold": 1_000_000},
                            provision(admin, "ma-faults", "MA"))
        assert raised["export_approval_threshold"] == 1_000_000
        yield Faulty(appliance, mu, sa, my_numbers(2 * BATCH * BATCHES_PER_TEST, seed=5151))
    finally:
        appliance.stop()
    shutil.rmtree(appliance.state.parent, ignore_errors=True)


# --- what must hold after any crash ----------------------------------------------


def sql(appliance: LocalAppliance, query: str) -> list[str]:
    return appliance.cluster.psql("kura_owner", query).split()


def stored(appliance: LocalAppliance, prefix: str, what: str = "code") -> list[str]:
    """``what`` over the subjects whose code starts with ``prefix`` (a test's own)."""
    return sql(appliance, f"SELECT {what} FROM subjects WHERE code LIKE '{prefix}-%'")  # noqa: S608 (our prefix)


def check_nothing_lost_nothing_torn(faulty: Faulty, prefix: str, sent: list[Batch]) -> int:
    """Returns how many batches were committed without being acknowledged."""
    appliance, mu = faulty.appliance, faulty.mu
    present = set(stored(appliance, prefix))
    count = int(stored(appliance, prefix, "count(*)")[0])
    assert count == len(present)

    # Every acknowledged batch is there; every batch is there whole or not at all.
    for batch in sent:
        there = sum(1 for c in batch.codes if c in present)
        assert there in (0, len(batch.rows)), f"batch {batch.index}: {there} of {len(batch.rows)}"
        if batch.acked:
            assert there == len(batch.rows), f"acknowledged batch {batch.index} lost"
    acked_rows = sum(len(b.rows) for b in sent if b.acked)
    assert count >= acked_rows

    # No row lacks its ciphertext or its wrapped key, or names a key version
    # the keyring does not have.
    torn = sql(appliance, "SELECT count(*) FROM subjects WHERE octet_length(number_ct) < 16"
                          " OR octet_length(wrapped_key) < 16 OR octet_length(number_bidx) < 16"
                          " OR kek_version NOT IN (SELECT version FROM keyring)")
    assert torn == ["0"]

    # Every row's number decrypts to what was sent: the export opens every one.
    sent_numbers = {r["code"]: r["number"] for b in sent for r in b.rows}
    export = mu.post("/exports", {"purpose": "payment_record", "encoding": "utf-8-bom"})
    assert export.status == 200, (export.status, export.body[:300])
    rows = list(csv.reader(io.StringIO(export.body.decode("utf-8-sig"))))[1:]
    exported = {code: number for _kind, code, _name, _kana, number in rows
                if code.startswith(prefix + "-")}
    assert exported.keys() == present
    assert all(exported[code] == sent_numbers[code] for code in present)

    # And one by one, as a clerk would: look up by number, reveal by purpose,
    # including rows of batches that were committed but never acknowledged.
    rng = random.Random(len(present))
    committed_unacked = [c for b in sent if not b.acked for c in b.codes if c in present]
    sample = rng.sample(sorted(present), 15) + rng.sample(
        committed_unacked, min(5, len(committed_unacked)))
    for code in sample:
        found = mu.post("/subjects/lookup", {"number": sent_numbers[code]})
        assert found.status == 200, (found.status, found.body[:300])
        [subject] = found.json["subjects"]
        assert subject["code"] == code
        shown = mu.post(f"/subjects/{subject['id']}/reveal", {"purpose": "payment_record"})
        assert shown.status == 200 and shown.json["number"] == sent_numbers[code]

    # Sending an unacknowledged batch again is safe: nothing twice, nothing refused.
    for batch in sent:
        if batch.acked:
            continue
        again = mu.post("/subjects/import", {"rows": batch.rows})
        assert again.status == 200, (again.status, again.body[:300])
        assert acknowledged(again.status, again.json, len(batch.rows)), again.json
        was_there = batch.codes[0] in present
        assert again.json["existing"] == (len(batch.rows) if was_there else 0)
    final = int(stored(appliance, prefix, "count(*)")[0])
    assert final == sum(len(b.rows) for b in sent)
    return sum(1 for b in sent if not b.acked and b.codes[0] in present)


def check_audit_chain(faulty: Faulty, tmp_path: Path) -> None:
    """The chain verifies offline, and it recorded every created row: an import
    and its audit entry commit together or not at all."""
    bundle = faulty.sa.get("/audit/export")
    assert bundle.status == 200, (bundle.status, bundle.body[:300])
    path = tmp_path / "kura-audit.jsonl"
    path.write_bytes(bundle.body)
    verify = subprocess.run([sys.executable, "-m", "kura.cli", "audit", "verify", str(path)],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    entries = [json.loads(line) for line in bundle.body.splitlines()]
    created = sum(e["detail"].get("created", 0) for e in entries
                  if e.get("type") == "entry" and e["action"] == "subject.import"
                  and e["outcome"] == "ok")
    assert created == int(sql(faulty.appliance, "SELECT count(*) FROM subjects")[0])


def report(what: str, sent: list[Batch], committed: int, recovery: float, total: float) -> None:
    acked = sum(b.acked for b in sent)
    print(f"\n{what}: {len(sent)} batches sent, {acked} acknowledged, {len(sent) - acked} not"
          f" ({committed} of those committed); importing again {recovery:.1f} s after the"
          f" restart; {total:.1f} s in all")


# --- the faults --------------------------------------------------------------------


def kill_when_busy(importer: Importer, kill: Callable[[], None]) -> None:
    """Kill in the middle of a batch: after a few acknowledged ones, a moment
    into the next request."""
    wait_for("first acknowledged batches", lambda: importer.acked_since(0) >= 2)
    time.sleep(random.uniform(0.05, 0.3))
    kill()


def test_sigkill_vault_during_bulk_import(faulty: Faulty, tmp_path: Path) -> None:
    appliance = faulty.appliance
    batches = make_batches("FV", faulty.numbers[: BATCH * BATCHES_PER_TEST])
    importer = Importer(faulty.mu, batches)
    started = time.monotonic()
    importer.start()

    victim = appliance.procs["vault"]
    kill_when_busy(importer, lambda: victim.send_signal(signal.SIGKILL))
    assert victim.wait(10) == -signal.SIGKILL
    wait_for("the import notices", lambda: len(importer.failed()) >= 1)

    appliance.start_daemon("vault")
    restarted = time.monotonic()
    recovery = wait_for("imports again after the restart",
                        lambda: importer.acked_since(restarted) >= 1)
    wait_for("more batches", lambda: importer.acked_since(restarted) >= 3)
    sent = importer.finish()
    # The console found the new vault at once: nothing failed once it was up.
    assert not [b for b in sent if b.started >= restarted and not b.acked]

    committed = check_nothing_lost_nothing_torn(faulty, "FV", sent)
    check_audit_chain(faulty, tmp_path)
    report("vault killed", sent, committed, recovery, time.monotonic() - started)


def _start_cluster_again(appliance: LocalAppliance) -> None:
    """pg_ctl start, again and again until the old backends (which leave once
    they notice their postmaster is gone) have let go of the shared memory."""
    deadline = time.monotonic() + 30
    while True:
        try:
            appliance.cluster.start()
            return
        except CommandFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_sigkill_postgres_during_bulk_import(faulty: Faulty, tmp_path: Path) -> None:
    appliance = faulty.appliance
    batches = make_batches("FP", faulty.numbers[BATCH * BATCHES_PER_TEST :])
    importer = Importer(faulty.mu, batches)
    started = time.monotonic()
    importer.start()

    pid = appliance.cluster.postmaster_pid()
    kill_when_busy(importer, lambda: os.kill(pid, signal.SIGKILL))
    # Dead, and reaped: until then pg_ctl counts it as running (and so would start nothing).
    wait_for("the postmaster is gone", lambda: not appliance.cluster.running())
    wait_for("the import notices", lambda: len(importer.failed()) >= 1)

    _start_cluster_again(appliance)
    restarted = time.monotonic()
    recovery = wait_for("imports again after the restart",
                        lambda: importer.acked_since(restarted) >= 1)
    wait_for("more batches", lambda: importer.acked_since(restarted) >= 3)
    sent = importer.finish()
    # The vault was never restarted: its connection pool found the new server.
    assert appliance.procs["vault"].poll() is None

    committed = check_nothing_lost_nothing_torn(faulty, "FP", sent)
    check_audit_chain(faulty, tmp_path)
    report("postgres killed", sent, committed, recovery, time.monotonic() - started)


def test_postgres_killed_while_the_vault_is_idle(faulty: Faulty) -> None:
    """The night PostgreSQL crashed and came back, nobody was using Kura: the
    first request in the morning works (the vault's pool holds no dead
    connections by then)."""
    appliance, mu = faulty.appliance, faulty.mu
    # The pool's connections, used and then left idle.
    for _ in range(3):
        assert mu.get("/subjects", query={"limit": 1}).status == 200
    pid = appliance.cluster.postmaster_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for("the postmaster is gone", lambda: not appliance.cluster.running())
    _start_cluster_again(appliance)
    codes = []
    for i in range(5):
        r = mu.get("/subjects", query={"limit": 1})
        codes.append(r.status)
        if i == 0:
            found = mu.post("/subjects/lookup", {"number": faulty.numbers[0]})
            codes.append(found.status)
    assert codes == [200] * 6
