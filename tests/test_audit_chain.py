"""The audit chain and its export bundle: every way of tampering with an
exported log is caught and the report names the first bad entry; a clean
bundle verifies anywhere, offline.

Pure core tests: real Ed25519 keys, real files in temporary directories, no
database. Digits that look like a My Number are made at run time, never
written here."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kura.core import audit
from kura.core.audit import AuditEntry, ChainHead, Checkpoint
from kura.core.errors import AuditBundleMalformed

START = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
EVERY = 50  # a checkpoint every 50 entries, as the vault might
ACTORS = [("yamada", "MU"), ("佐藤", "MA"), ("sec-admin", "SA"), ("-", ""), ("appadmin", "DA")]
ACTIONS = ["subject.reveal", "subject.export", "login", "subject.register", "vault.unseal"]


def fake_number(seed: int) -> str:
    """Twelve digits made at run time (check digit not needed for the guard)."""
    rng = random.Random(seed)
    return "".join(str(rng.randrange(10)) for _ in range(12))


@dataclasses.dataclass
class Chain:
    key: Ed25519PrivateKey
    entries: list[AuditEntry]
    checkpoints: list[Checkpoint]
    final: Checkpoint

    @property
    def public_key(self) -> bytes:
        return audit.raw_public_key(self.key.public_key())


def next_entry(prev: AuditEntry | None, i: int) -> AuditEntry:
    actor, role = ACTORS[i % len(ACTORS)]
    return audit.make_entry(
        prev,
        at=START + timedelta(seconds=37 * i, microseconds=i),
        actor=actor,
        role=role,
        action=ACTIONS[i % len(ACTIONS)],
        outcome=["ok", "ok", "denied", "error"][i % 4],
        target=str(uuid.UUID(int=i * 7919)),
        purpose="gensen" if i % 3 == 0 else "",
        client=f"192.0.2.{i % 250}" if i % 2 else "local",
        detail={"count": i, "ratio": 2.0, "理由": "源泉徴収票の作成", "rows": [i, None, True]},
    )


def build_chain(n: int, key: Ed25519PrivateKey | None = None) -> Chain:
    key = key or Ed25519PrivateKey.generate()
    entries: list[AuditEntry] = []
    checkpoints: list[Checkpoint] = []
    prev = None
    for i in range(1, n + 1):
        prev = next_entry(prev, i)
        entries.append(prev)
        if i % EVERY == 0:
            checkpoints.append(audit.sign_checkpoint(key, i, prev.hash, prev.at))
    assert prev is not None
    final = audit.sign_export(key, prev.seq, prev.hash, prev.at + timedelta(minutes=5))
    return Chain(key, entries, checkpoints, final)


def rehash_from(entries: list[AuditEntry], start: int) -> list[AuditEntry]:
    """What an attacker with database access but no signing key can do:
    recompute every hash from index ``start`` on so the chain holds together."""
    out = entries[:start]
    for e in entries[start:]:
        prev = out[-1] if out else None
        out.append(
            audit.make_entry(
                prev,
                at=e.at,
                actor=e.actor,
                role=e.role,
                action=e.action,
                outcome=e.outcome,
                target=e.target,
                purpose=e.purpose,
                client=e.client,
                detail=e.detail,
            )
        )
    return out


@pytest.fixture(scope="module")
def chain() -> Chain:
    return build_chain(300)


@pytest.fixture
def bundle(chain: Chain, tmp_path: Path) -> Path:
    path = tmp_path / "audit.kura"
    audit.write_bundle(path, chain.entries, chain.checkpoints, chain.final, "kura-test-1")
    return path


def edit_line(path: Path, index: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Change one line of a bundle and write it back in canonical form, as a
    careful forger would (so the form check alone does not catch it)."""
    lines = path.read_bytes().splitlines(keepends=True)
    obj = json.loads(lines[index])
    change(obj)
    lines[index] = audit.canonical_json(obj) + b"\n"
    path.write_bytes(b"".join(lines))


def entry_index(seq: int) -> int:
    return seq  # line 0 is the header, entry N is line N


# --- a clean log -------------------------------------------------------------


def test_clean_bundle_verifies_with_counts_and_fingerprint(chain: Chain, bundle: Path) -> None:
    report = audit.verify_bundle(bundle)
    assert report.ok, report.problem_en
    assert (report.entries, report.checkpoints) == (300, 300 // EVERY)
    assert report.first_bad_seq is None and report.problem == "ok"
    assert report.public_key_fingerprints == [audit.public_key_fingerprint(chain.public_key)]
    assert report.last_seq == 300
    assert report.exported_at == chain.final.at
    assert "300" in report.summary_en and "300" in report.summary_ja
    assert report.public_key_fingerprints[0] in report.summary_ja


def test_bundle_verifies_offline_after_copying_elsewhere(
    chain: Chain, tmp_path_factory: pytest.TempPathFactory
) -> None:
    exporter = tmp_path_factory.mktemp("appliance")
    auditor = tmp_path_factory.mktemp("auditor-laptop")
    written = exporter / "audit-2025.kura"
    sha = audit.write_bundle(written, chain.entries, chain.checkpoints, chain.final, "kura-1")
    copy = auditor / "received.kura"
    shutil.copyfile(written, copy)
    written.unlink()

    report = audit.verify_bundle(copy, trusted_public_key=chain.public_key)
    assert report.ok, report.problem_en
    assert report.bundle_sha256 == sha
    assert not list(exporter.iterdir()), "no temporary file is left behind"


def test_read_bundle_gives_back_what_was_written(chain: Chain, bundle: Path) -> None:
    read = audit.read_bundle(bundle)
    assert read.entries == tuple(chain.entries)
    assert read.checkpoints == tuple(chain.checkpoints)
    assert read.final == chain.final
    assert read.appliance == "kura-test-1"
    assert read.public_keys == (chain.public_key,)
    assert audit.read_bundle(bundle.read_bytes()) == read


def test_entries_the_vault_builds_from_database_rows_verify() -> None:
    """The vault builds entries from a row (non-UTC time zone, a plain dict)
    with chain_hash; they must verify just the same."""
    key = Ed25519PrivateKey.generate()
    jst = timezone(timedelta(hours=9))
    entries: list[AuditEntry] = []
    prev_hash = audit.GENESIS
    for seq in range(1, 6):
        at = datetime(2025, 4, 1, 18, 0, seq, 123456, tzinfo=jst)
        facts = {"z": 1, "a": ["x", 2.5]}
        digest = audit.chain_hash(
            prev_hash, seq, at, "yamada", "MU", "login", "ok", "", "", "local", facts
        )
        entry = AuditEntry(
            seq=seq,
            at=at,
            actor="yamada",
            role="MU",
            action="login",
            outcome="ok",
            target="",
            purpose="",
            client="local",
            detail=facts,
            prev_hash=prev_hash,
            hash=digest,
        )
        audit.refuse_numbers(entry)
        entries.append(entry)
        prev_hash = digest
    final = audit.sign_export(key, 5, prev_hash, datetime.now(UTC))
    assert audit.verify_chain(entries, [], final).ok
    assert audit.verify_bundle(audit.bundle_bytes(entries, [], final, "kura")).ok


def test_empty_log_exports_and_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    final = audit.sign_export(key, 0, audit.GENESIS, START)
    report = audit.verify_bundle(audit.bundle_bytes([], [], final, "kura"))
    assert report.ok and report.entries == 0


# --- tampering with entries --------------------------------------------------


def test_changed_field_names_that_entry(bundle: Path) -> None:
    def change(obj: dict[str, Any]) -> None:
        obj["actor"] = "someone-else"

    edit_line(bundle, entry_index(137), change)
    report = audit.verify_bundle(bundle)
    assert not report.ok
    assert (report.problem, report.first_bad_seq) == ("entry_altered", 137)
    assert "137" in report.problem_en and "137" in report.problem_ja


def test_changed_detail_is_caught(chain: Chain) -> None:
    entries = list(chain.entries)
    entries[41] = dataclasses.replace(entries[41], detail={**entries[41].detail, "count": 0})
    report = audit.verify_chain(entries, chain.checkpoints, chain.final)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "entry_altered", 42)


def test_deleted_entry_is_named_as_missing(chain: Chain, bundle: Path) -> None:
    lines = bundle.read_bytes().splitlines(keepends=True)
    del lines[entry_index(137)]
    bundle.write_bytes(b"".join(lines))
    report = audit.verify_bundle(bundle)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "entry_missing", 137)
    assert "missing" in report.problem_en and "136" in report.problem_en
    assert "138" in report.problem_en and "欠落" in report.problem_ja


def test_deleted_first_entry(chain: Chain) -> None:
    report = audit.verify_chain(chain.entries[1:], chain.checkpoints, chain.final)
    assert (report.problem, report.first_bad_seq) == ("entry_missing", 1)


def test_deleted_entry_with_later_ones_renumbered_breaks_the_chain(chain: Chain) -> None:
    entries = chain.entries[:136] + [
        dataclasses.replace(e, seq=e.seq - 1) for e in chain.entries[137:]
    ]
    report = audit.verify_chain(entries, chain.checkpoints, chain.final)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "chain_broken", 137)
    assert "missing" in report.problem_en


def test_swapped_entries_are_reported_out_of_order(bundle: Path) -> None:
    lines = bundle.read_bytes().splitlines(keepends=True)
    a, b = entry_index(137), entry_index(138)
    lines[a], lines[b] = lines[b], lines[a]
    bundle.write_bytes(b"".join(lines))
    report = audit.verify_bundle(bundle)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "out_of_order", 137)


def test_swapped_contents_keeping_sequence_numbers(chain: Chain) -> None:
    entries = list(chain.entries)
    a, b = entries[136], entries[137]
    entries[136] = dataclasses.replace(b, seq=137)
    entries[137] = dataclasses.replace(a, seq=138)
    report = audit.verify_chain(entries, chain.checkpoints, chain.final)
    assert (report.ok, report.first_bad_seq) == (False, 137)


def test_duplicated_entry(chain: Chain) -> None:
    entries = [*chain.entries[:60], chain.entries[59], *chain.entries[60:]]
    report = audit.verify_chain(entries, chain.checkpoints, chain.final)
    assert (report.problem, report.first_bad_seq) == ("duplicate", 60)


def test_rewritten_and_rehashed_entries_are_caught_by_the_next_checkpoint(
    chain: Chain,
) -> None:
    entries = list(chain.entries)
    entries[119] = dataclasses.replace(entries[119], purpose="", target="hidden")
    forged = rehash_from(entries, 119)
    assert audit.verify_chain(
        forged, [], audit.sign_export(Ed25519PrivateKey.generate(), 300, forged[-1].hash, START)
    ).ok, "the chain alone holds"

    report = audit.verify_chain(forged, chain.checkpoints, chain.final)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "checkpoint_mismatch", 150)
    assert "101" in report.problem_en and "150" in report.problem_en


def test_rehash_after_the_last_checkpoint_is_caught_by_the_export_checkpoint(
    chain: Chain,
) -> None:
    entries = list(chain.entries)
    entries[-1] = dataclasses.replace(entries[-1], outcome="ok", action="login")
    forged = rehash_from(entries, 299)
    before_last = [c for c in chain.checkpoints if c.seq < 300]
    report = audit.verify_chain(forged, before_last, chain.final)
    assert (report.problem, report.first_bad_seq) == ("checkpoint_mismatch", 300)
    assert "export checkpoint" in report.problem_en and "251" in report.problem_en


def test_resigned_by_another_key_shows_a_foreign_fingerprint_and_fails_when_trusted(
    chain: Chain,
) -> None:
    mallory = Ed25519PrivateKey.generate()
    forged = rehash_from(chain.entries, 10)
    cps = [
        audit.sign_checkpoint(mallory, c.seq, forged[c.seq - 1].hash, c.at)
        for c in chain.checkpoints
    ]
    final = audit.sign_export(mallory, 300, forged[-1].hash, chain.final.at)
    data = audit.bundle_bytes(forged, cps, final, "kura")

    untrusting = audit.verify_bundle(data)
    real = audit.public_key_fingerprint(chain.public_key)
    assert untrusting.ok and untrusting.public_key_fingerprints != [real]

    report = audit.verify_bundle(data, trusted_public_key=chain.public_key)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "untrusted_key", EVERY)


# --- tampering with checkpoints and the tail ---------------------------------


def test_forged_checkpoint_signature(chain: Chain, bundle: Path) -> None:
    def forge(obj: dict[str, Any]) -> None:
        obj["signature"] = bytes(random.Random(1).randbytes(64)).hex()

    edit_line(bundle, 300 + 2, forge)  # the checkpoint at entry 100
    report = audit.verify_bundle(bundle)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "bad_signature", 100)


def test_checkpoint_altered_to_fit_a_rehashed_chain(chain: Chain) -> None:
    entries = list(chain.entries)
    entries[119] = dataclasses.replace(entries[119], actor="nobody")
    forged = rehash_from(entries, 119)
    cps = [
        dataclasses.replace(c, hash=forged[c.seq - 1].hash) if c.seq >= 120 else c
        for c in chain.checkpoints
    ]
    final = dataclasses.replace(chain.final, hash=forged[-1].hash)
    report = audit.verify_chain(forged, cps, final)
    assert (report.problem, report.first_bad_seq) == ("bad_signature", 150)


def test_signed_checkpoint_that_does_not_match_its_entry(chain: Chain) -> None:
    cps = list(chain.checkpoints)
    cps[3] = audit.sign_checkpoint(chain.key, 200, chain.entries[198].hash, cps[3].at)
    report = audit.verify_chain(chain.entries, cps, chain.final)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "checkpoint_mismatch", 200)


def test_truncated_tail_is_caught_by_the_export_checkpoint(chain: Chain) -> None:
    cps = [c for c in chain.checkpoints if c.seq <= 250]
    report = audit.verify_chain(chain.entries[:280], cps, chain.final)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "truncated", 281)
    assert "281" in report.problem_en and "300" in report.problem_en


def test_truncated_tail_keeping_later_checkpoints(chain: Chain, tmp_path: Path) -> None:
    path = tmp_path / "cut.kura"
    audit.write_bundle(path, chain.entries[:280], chain.checkpoints, chain.final, "kura")
    report = audit.verify_bundle(path)
    assert (report.problem, report.first_bad_seq) == ("truncated", 281)


def test_old_checkpoint_cannot_pose_as_the_export_checkpoint(chain: Chain) -> None:
    """Cut the log at a checkpoint and promote that checkpoint to the end."""
    cps = [c for c in chain.checkpoints if c.seq < 250]
    posing = dataclasses.replace(chain.checkpoints[4], final=True)
    assert posing.seq == 250
    data = audit.bundle_bytes(chain.entries[:250], cps, posing, "kura")
    report = audit.verify_bundle(data)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "bad_signature", 250)


def test_entries_added_after_export(chain: Chain) -> None:
    more = list(chain.entries)
    for i in range(301, 306):
        more.append(next_entry(more[-1], i))
    report = audit.verify_chain(more, chain.checkpoints, chain.final)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "unexpected_entries", 301)


def test_first_fault_wins_when_there_are_several(chain: Chain) -> None:
    entries = list(chain.entries)
    entries[249] = dataclasses.replace(entries[249], client="elsewhere")
    cps = list(chain.checkpoints)
    cps[1] = dataclasses.replace(cps[1], signature=bytes(64))  # entry 100
    report = audit.verify_chain(entries, cps, chain.final)
    assert (report.problem, report.first_bad_seq) == ("bad_signature", 100)

    cps[1] = chain.checkpoints[1]
    cps[4] = dataclasses.replace(cps[4], signature=bytes(64))  # entry 250
    report = audit.verify_chain(entries, cps, chain.final)
    assert (report.problem, report.first_bad_seq) == ("entry_altered", 250)


# --- malformed bundles: a clear report, never a traceback --------------------


def small_bundle() -> bytes:
    c = build_chain(6)
    return audit.bundle_bytes(c.entries, c.checkpoints, c.final, "kura")


@pytest.mark.parametrize(
    ("name", "mangle", "problem"),
    [
        ("empty file", lambda b: b"", "malformed"),
        ("not JSON", lambda b: b"PK\x03\x04 this is a zip\n", "malformed"),
        ("binary", lambda b: bytes(range(256)) * 4, "malformed"),
        ("other JSON", lambda b: b'{"hello":"world"}\n', "malformed"),
        (
            "wrong format",
            lambda b: b.replace(b"kura-audit-bundle", b"kura-audit-bundlf", 1),
            "malformed",
        ),
        ("future version", lambda b: b.replace(b'"version":1}', b'"version":2}', 1), "malformed"),
        ("cut mid-line", lambda b: b[: len(b) // 2], "truncated"),
        ("cut before the export line", lambda b: b"".join(b.splitlines(True)[:-1]), "truncated"),
        ("pretty-printed line", lambda b: b.replace(b'","', b'", "', 1), "malformed"),
        ("CRLF line ends", lambda b: b.replace(b"\n", b"\r\n"), "malformed"),
        (
            "unknown line type",
            lambda b: b.replace(b'"type":"entry"', b'"type":"note"', 1),
            "malformed",
        ),
        ("line after the end", lambda b: b + b.splitlines(True)[1], "malformed"),
        (
            "header key not hex",
            lambda b: b.replace(b'"public_keys":["', b'"public_keys":["0', 1),
            "malformed",
        ),
    ],
)
def test_malformed_bundle_gives_a_clear_report(
    name: str, mangle: Callable[[bytes], bytes], problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.kura"
    path.write_bytes(mangle(small_bundle()))
    report = audit.verify_bundle(path)
    assert not report.ok, name
    assert report.problem == problem, (name, report.problem_en)
    assert report.problem_en and report.problem_ja
    with pytest.raises(AuditBundleMalformed):
        audit.read_bundle(path)


def test_header_keys_must_match_the_signers(chain: Chain) -> None:
    data = audit.bundle_bytes(
        chain.entries[:10],
        [],
        audit.sign_export(chain.key, 10, chain.entries[9].hash, START),
        "kura",
    )
    lines = data.splitlines(keepends=True)
    header = json.loads(lines[0])
    header["public_keys"] = [bytes(32).hex()]
    lines[0] = audit.canonical_json(header) + b"\n"
    report = audit.verify_bundle(b"".join(lines))
    assert (report.ok, report.problem, report.bad_line) == (False, "malformed", 1)


def test_unreadable_bundle(tmp_path: Path) -> None:
    missing = audit.verify_bundle(tmp_path / "nowhere.kura")
    directory = audit.verify_bundle(tmp_path)
    for report in (missing, directory):
        assert (report.ok, report.problem) == (False, "unreadable")
        assert report.problem_en.startswith("The bundle cannot be read")


def test_equivalent_json_spellings_are_refused() -> None:
    """Edits that parse to the same values would keep the hashes intact; the
    canonical-form check refuses them."""
    data = small_bundle()
    start = data.index(b'"hash":"') + len(b'"hash":"')
    hex_upper = data[:start] + data[start : start + 64].upper() + data[start + 64 :]
    for changed in (
        data.replace(b'"ratio":2.0', b'"ratio":2e0', 1),  # one byte: '.' -> 'e'
        data.replace("源".encode(), b"\\u6e90", 1),  # the same character, escaped
        data.replace(b'{"count":1,', b'{"count":1,"count":1,', 1),  # a repeated key
        hex_upper,
    ):
        assert changed != data
        report = audit.verify_bundle(changed)
        assert (report.ok, report.problem) == (False, "malformed")


_SMALL = small_bundle()
_SMALL_LINES = _SMALL.splitlines(keepends=True)
_ENTRY_LINES = [i for i, line in enumerate(_SMALL_LINES) if b'"type":"entry"' in line]


def _flip(line_index: int, offset: int, mask: int) -> bytes:
    lines = list(_SMALL_LINES)
    line = bytearray(lines[line_index])
    line[offset % len(line)] ^= mask
    lines[line_index] = bytes(line)
    return b"".join(lines)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    line_index=st.sampled_from(_ENTRY_LINES),
    offset=st.integers(min_value=0, max_value=10_000),
    mask=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_flip_in_an_entry_line_is_never_ok(
    line_index: int, offset: int, mask: int
) -> None:
    report = audit.verify_bundle(_flip(line_index, offset, mask))
    assert not report.ok
    assert report.problem_en


def test_every_byte_of_an_entry_line_with_tricky_replacements() -> None:
    """Exhaustive over one entry line: each byte replaced by characters that
    could make an equivalent spelling (exponent, escapes, whitespace, case)."""
    index = _ENTRY_LINES[2]
    line = _SMALL_LINES[index]
    tricky = b'eE.+-0129aAfF\\ \t\r\n"/u,:{}[]'
    for offset in range(len(line)):
        for replacement in tricky:
            if line[offset] == replacement:
                continue
            report = audit.verify_bundle(_flip(index, offset, line[offset] ^ replacement))
            assert not report.ok, (offset, chr(replacement))


# --- the number guard ---------------------------------------------------------


def _entry_with(**fields: Any) -> AuditEntry:
    base: dict[str, Any] = {
        "at": START,
        "actor": "yamada",
        "role": "MU",
        "action": "subject.reveal",
        "target": str(uuid.uuid4()),
        "purpose": "gensen",
        "client": "192.0.2.7",
    }
    return audit.make_entry(None, **{**base, **fields})


def test_make_entry_refuses_anything_that_looks_like_a_my_number() -> None:
    digits = fake_number(7)
    fullwidth = digits.translate({ord("0") + i: ord("０") + i for i in range(10)})
    cases: list[dict[str, Any]] = [
        {"target": digits},
        {"actor": f"user{digits}"},
        {"purpose": f"{digits[:4]}-{digits[4:8]}-{digits[8:]}"},
        {"client": f"{digits[:4]} {digits[4:8]} {digits[8:]}"},
        {"target": fullwidth},
        {"detail": {"reason": f"番号 {digits} を確認"}},
        {"detail": {"rows": [1, {"note": digits}]}},
        {"detail": {digits: 1}},
        {"detail": {"n": int(digits) + 10**12}},
        {"target": "abc" + digits},
        {"target": digits + "1"},  # a 13-digit run holds a 12-digit one
    ]
    for fields in cases:
        with pytest.raises(ValueError, match="looks like") as caught:
            _entry_with(**fields)
        assert digits not in str(caught.value) and fullwidth not in str(caught.value)


def test_refuse_numbers_checks_an_entry_built_directly() -> None:
    entry = dataclasses.replace(_entry_with(), target=fake_number(3))
    with pytest.raises(ValueError, match="'target'"):
        audit.refuse_numbers(entry)


def test_guard_lets_identifiers_and_digests_through() -> None:
    """Subject UUIDs and file digests are random hex; their digit runs must
    not make an ordinary action fail."""
    d = fake_number(11) + fake_number(12)
    subject = f"ab{d[:6]}-{d[6:10]}-4{d[10:13]}-8{d[13:16]}-{d[:12]}"
    assert uuid.UUID(subject)
    digest = "ab" + d[:12] + "c" * 50
    entry = _entry_with(target=subject, detail={"file_sha256": digest, "rows": 123456789})
    assert entry.target == subject
    assert not audit.looks_like_my_number(d[:11])
    assert not audit.looks_like_my_number("2025-04-01T09:00:00.000000Z 192.168.100.200")
    assert audit.looks_like_my_number(f"x {d[:12]} y")
    assert audit.looks_like_my_number(d[:12])


# --- building entries -----------------------------------------------------------


def test_make_entry_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="timezone"):
        _entry_with(at=datetime(2025, 4, 1, 9, 0))  # naive: the point of the test
    with pytest.raises(ValueError, match="role"):
        _entry_with(role="root")
    with pytest.raises(ValueError, match="outcome"):
        _entry_with(outcome="maybe")
    with pytest.raises(ValueError, match="actor"):
        _entry_with(actor="")
    with pytest.raises(ValueError, match="JSON"):
        _entry_with(detail={"when": START})
    with pytest.raises(ValueError, match="JSON"):
        _entry_with(detail={"x": float("nan")})
    with pytest.raises(ValueError, match="cannot follow"):
        audit.make_entry(None, seq=2, at=START, actor="a", role="", action="login")


def test_hash_is_deterministic_across_time_zones_and_key_order() -> None:
    jst = timezone(timedelta(hours=9))
    a = _entry_with(target="t", detail={"b": 1, "a": "あ"})
    b = _entry_with(target="t", at=START.astimezone(jst), detail={"a": "あ", "b": 1})
    assert a.hash == b.hash
    body = audit.canonical(1, a.at, "x", "", "login", "ok", "", "", "local", {"b": 1, "a": 2})
    assert body == (
        b'{"action":"login","actor":"x","at":"2025-04-01T09:00:00.000000Z","client":"local",'
        b'"detail":{"a":2,"b":1},"outcome":"ok","purpose":"","role":"","seq":1,"target":""}'
    )


def test_make_entry_links_to_the_previous_entry_or_head() -> None:
    first = _entry_with()
    assert first.seq == 1 and first.prev_hash == audit.GENESIS
    after_entry = audit.make_entry(first, at=START, actor="-", role="", action="login")
    after_head = audit.make_entry(
        ChainHead(first.seq, first.hash), at=START, actor="-", role="", action="login"
    )
    assert after_entry == after_head
    assert after_entry.seq == 2 and after_entry.prev_hash == first.hash
    assert after_entry.hash == after_entry.expected_hash()


def test_checkpoint_signature_covers_every_field(chain: Chain) -> None:
    cp = chain.checkpoints[0]
    assert audit.checkpoint_valid(cp)
    for changed in (
        dataclasses.replace(cp, seq=cp.seq + 1),
        dataclasses.replace(cp, hash=bytes(32)),
        dataclasses.replace(cp, at=cp.at + timedelta(microseconds=1)),
        dataclasses.replace(cp, final=True),
        dataclasses.replace(
            cp, public_key=audit.raw_public_key(Ed25519PrivateKey.generate().public_key())
        ),
        dataclasses.replace(cp, public_key=b"short"),
    ):
        assert not audit.checkpoint_valid(changed)


def test_bundle_needs_an_export_checkpoint_at_the_end(chain: Chain, tmp_path: Path) -> None:
    plain = audit.sign_checkpoint(chain.key, 300, chain.entries[-1].hash, START)
    with pytest.raises(ValueError, match="export checkpoint"):
        audit.write_bundle(tmp_path / "x.kura", chain.entries, [], plain, "kura")
    assert not list(tmp_path.iterdir())


def test_a_wrong_length_trusted_key_is_reported_not_raised(bundle: Path) -> None:
    report = audit.verify_bundle(bundle, trusted_public_key=bytes(31))
    assert (report.ok, report.problem) == (False, "bad_trusted_key")
