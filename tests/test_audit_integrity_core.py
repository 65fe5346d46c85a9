"""Every fault of a chain, the signed head kept outside the database,
incidents the chain records, and one export extending another.

Pure core tests (kura.core.audit.integrity and the verifier built on it) and
the offline command ``kura audit verify`` on bundles written here: real
Ed25519 keys, real files, no database."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kura.core import audit
from kura.core.audit import AuditEntry, Fault
from tests.test_audit_chain import Chain, build_chain, next_entry, rehash_from


def swapped(entries: list[AuditEntry], a: int, b: int) -> list[AuditEntry]:
    """Rows a and b (seqs) trade contents; each keeps its place's seq, as
    swapping the contents of two database rows does."""
    out = list(entries)
    ea, eb = out[a - 1], out[b - 1]
    out[a - 1] = dataclasses.replace(eb, seq=a)
    out[b - 1] = dataclasses.replace(ea, seq=b)
    return out


def sign(chain: Chain, entries: list[AuditEntry]) -> audit.Checkpoint:
    last = entries[-1]
    return audit.sign_export(chain.key, last.seq, last.hash, last.at + timedelta(minutes=9))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kura.cli", "audit", "verify", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture(scope="module")
def chain() -> Chain:
    return build_chain(120)


def several_faults(chain: Chain) -> list[AuditEntry]:
    """Entry 20 deleted, 40 altered, 60 and 70 swapped."""
    entries = swapped(chain.entries, 60, 70)
    entries[39] = dataclasses.replace(entries[39], actor="someone-else")
    del entries[19]
    return entries


def test_chain_faults_lists_every_fault_not_only_the_first(chain: Chain) -> None:
    faults = audit.chain_faults(several_faults(chain), chain.checkpoints,
                                trusted_public_key=chain.public_key)
    assert faults == [
        Fault("missing", 20, 20),
        Fault("altered", 40, 40),
        Fault("reordered", 60, 60, found_at=70),
        Fault("reordered", 70, 70, found_at=60),
    ]
    assert audit.chain_faults(chain.entries, chain.checkpoints, final=chain.final) == []


def test_a_rehashed_rewrite_is_named_by_its_checkpoint_range(chain: Chain) -> None:
    entries = list(chain.entries)
    entries[54] = dataclasses.replace(entries[54], actor="someone-else")
    entries = rehash_from(entries, 54)
    faults = audit.chain_faults(entries, chain.checkpoints, final=sign(chain, entries))
    # Checkpoints every 50 entries: 50 still matches, 100 does not.
    assert faults == [Fault("checkpoint_mismatch", 51, 100)]


def test_a_trusted_head_the_chain_does_not_reach_names_the_missing_tail(chain: Chain) -> None:
    head = chain.entries[-1]
    shorter = chain.entries[:-7]
    faults = audit.chain_faults(shorter, chain.checkpoints, head=(head.seq, head.hash))
    assert faults == [Fault("missing", 114, 120)]
    # A shorter chain re-hashed to hold together reaches neither.
    rewritten = rehash_from(
        [dataclasses.replace(e, detail={}) for e in chain.entries[:80]], 0
    )
    faults = audit.chain_faults(rewritten, chain.checkpoints, head=(head.seq, head.hash))
    assert Fault("checkpoint_mismatch", 1, 50) in faults
    assert Fault("missing", 81, 120) in faults


def test_the_signed_head_file_round_trips_and_refuses_forgeries() -> None:
    key = Ed25519PrivateKey.generate()
    public = audit.raw_public_key(key.public_key())
    at = build_chain(1).entries[0].at
    head = audit.sign_head(key, 42, bytes(range(32)), at)
    again = audit.parse_head(audit.head_bytes(head))
    assert again == head and audit.head_valid(again, public)
    assert not audit.head_valid(dataclasses.replace(head, seq=41), public)
    other = Ed25519PrivateKey.generate()
    assert not audit.head_valid(head, audit.raw_public_key(other.public_key()))
    # A checkpoint's signature over the same (seq, hash, time) is no head:
    # the messages are domain-separated.
    cp = audit.sign_checkpoint(key, 42, bytes(range(32)), at)
    assert not audit.head_valid(dataclasses.replace(head, signature=cp.signature), public)
    with pytest.raises(ValueError, match="not an audit head file"):
        audit.parse_head(b'{"seq": 1}')


def incident_chain(chain: Chain) -> tuple[list[AuditEntry], list[audit.Checkpoint]]:
    """Entries 91-100 were deleted; the vault chained an integrity-fault entry
    from the trusted head (100), signed it, and an SA and a DA acknowledged."""
    kept = chain.entries[:90]
    trusted = chain.entries[99]
    at = trusted.at + timedelta(minutes=1)
    fault = audit.make_entry(
        trusted, at=at, actor="-", role="", action=audit.FAULT_ACTION, outcome="error",
        detail={"faults": [Fault("missing", 91, 100).to_json()],
                "expected_head": {"seq": 100, "hash": trusted.hash.hex()}},
    )
    ack = audit.make_entry(
        fault, at=at, actor="admin", role="DA", action=audit.ACKNOWLEDGED_ACTION,
        detail={"incident": fault.seq, "acknowledged_by": ["sa1", "admin"]},
    )
    entries = [*kept, fault, ack, next_entry(ack, 103)]
    checkpoints = [cp for cp in chain.checkpoints if cp.seq <= 90]
    checkpoints.append(audit.sign_checkpoint(chain.key, ack.seq, ack.hash, at))
    return entries, checkpoints


def test_a_fault_the_chain_records_is_a_recorded_incident(chain: Chain, tmp_path: Path) -> None:
    entries, checkpoints = incident_chain(chain)
    final = sign(chain, entries)
    report = audit.verify_chain(entries, checkpoints, final)
    assert report.ok and report.faults == ()
    [(fault, incident)] = report.recorded
    assert fault == Fault("missing", 91, 100)
    assert incident.seq == 101 and incident.acknowledged_by == ("sa1", "admin")

    path = tmp_path / "incident.jsonl"
    audit.write_bundle(path, entries, checkpoints, final, "kura-test")
    done = cli(str(path))
    assert done.returncode == 0, done.stdout
    assert ("recorded incident (entry 101, acknowledged by sa1, admin): "
            "entries 91–100: missing") in done.stdout

    # Not recorded: the same gap without the incident entry is a fault.
    bare = [*chain.entries[:90], *chain.entries[100:]]
    report = audit.verify_chain(bare, chain.checkpoints, chain.final)
    assert not report.ok and report.faults == (Fault("missing", 91, 100),)
    # An incident entry that no trusted signature covers vouches for nothing:
    # someone who wrote it into the database signed with a key of their own.
    forger = Ed25519PrivateKey.generate()
    head = entries[-1]
    forged = audit.sign_export(forger, head.seq, head.hash, final.at)
    unsigned = audit.verify_chain(entries, checkpoints[:-1], forged,
                                  trusted_public_key=chain.public_key)
    assert not unsigned.ok and unsigned.recorded == ()
    assert Fault("missing", 91, 100) in unsigned.faults


def test_verify_lists_several_faults_at_once(chain: Chain, tmp_path: Path) -> None:
    entries = several_faults(chain)
    path = tmp_path / "tampered.jsonl"
    audit.write_bundle(path, entries, chain.checkpoints, sign(chain, entries), "kura-test")
    report = audit.verify_bundle(path)
    assert not report.ok and report.first_bad_seq == 20  # the first, as before
    assert len(report.faults) == 4
    done = cli(str(path))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("NG at entry 20: ")
    assert "faults: 4" in lines
    for text in ("entry 20: missing", "entry 40: altered",
                 "entry 70: reordered (found at entry 60)",
                 "entry 60: reordered (found at entry 70)"):
        assert f"  - {text}" in lines, done.stdout
    assert "記録 40: 改ざん" in done.stdout


def test_verify_after_proves_a_new_export_extends_an_old_one(
    chain: Chain, tmp_path: Path
) -> None:
    old_entries = chain.entries[:100]
    old = tmp_path / "old.jsonl"
    audit.write_bundle(old, old_entries, chain.checkpoints[:2], sign(chain, old_entries), "k")
    new = tmp_path / "new.jsonl"
    audit.write_bundle(new, chain.entries, chain.checkpoints, chain.final, "k")
    done = cli(str(new), "--after", str(old))
    assert done.returncode == 0, done.stdout
    assert "its 100 entries are unchanged and its export checkpoint at entry 100" in done.stdout

    # Removed, rewritten and reordered between the two: each named, exit 3.
    tampered = swapped(chain.entries, 30, 35)
    tampered[9] = dataclasses.replace(tampered[9], outcome="ok", actor="x")
    tampered = [e for e in tampered if e.seq != 50]
    report = audit.verify_chain(tampered, chain.checkpoints, chain.final)
    faults = audit.extension_faults(old_entries, sign(chain, old_entries),
                                    report.hashes or {}, report.altered)
    assert Fault("altered", 10, 10) in faults
    assert Fault("reordered", 30, 30, found_at=35) in faults
    assert Fault("reordered", 35, 35, found_at=30) in faults
    assert Fault("missing", 50, 50) in faults

    rewritten = rehash_from(
        [dataclasses.replace(e, actor="x") if e.seq == 70 else e for e in chain.entries], 69
    )
    bad = tmp_path / "bad.jsonl"
    audit.write_bundle(bad, rewritten[:95], [], sign(chain, rewritten[:95]), "k")
    done = cli(str(bad), "--after", str(old))
    assert done.returncode == 3, done.stdout
    assert "does not extend" in done.stdout
    assert "  - entries 70–95: rewritten" in done.stdout
    assert "  - entries 96–100: missing" in done.stdout
    assert "  - entry 100: checkpoint mismatch" in done.stdout


def test_the_sweep_window_visits_every_entry_in_turn() -> None:
    """Between full scans the sweep recomputes one window of older entries a
    time: over enough sweeps every entry of the chain is recomputed, and the
    window follows the chain as it grows."""
    seen: set[int] = set()
    cursor, head = 1, 23
    for _ in range(5):
        first, last, cursor = audit.sweep_range(cursor, 5, head)
        assert 1 <= first <= last <= head and last - first < 5
        seen.update(range(first, last + 1))
    assert seen == set(range(1, 24))
    assert cursor == 1  # back at the start after the last window
    assert audit.sweep_range(40, 5, 23) == (1, 5, 6)  # the chain was cut: start over
    assert audit.sweep_range(1, 10_000, 0) == (1, 0, 1)  # an empty chain: nothing to read
    with pytest.raises(ValueError):
        audit.sweep_range(1, 0, 23)


def test_the_sweep_finds_an_entry_changed_in_place(chain: Chain) -> None:
    entries = list(chain.entries)
    assert audit.newly_altered(entries, frozenset()) == []
    entries[7] = dataclasses.replace(entries[7], actor="someone-else")
    assert audit.newly_altered(entries, frozenset()) == [entries[7].seq]
    # Known from the last full scan (a recorded incident): not news.
    assert audit.newly_altered(entries, frozenset({entries[7].seq})) == []
