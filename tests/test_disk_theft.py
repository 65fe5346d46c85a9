"""A stolen disk gives away no number. Three thousand My Numbers go in through
every way the API offers (bulk JSON, a Shift_JIS CSV, single registrations of
payees, employees and dependents), some are revealed, looked up, exported,
typed into the wrong field; then PostgreSQL is checkpointed, everything is
stopped, and every byte left behind (the cluster's heap and WAL, the logs,
the configuration, the keys, the audit bundle an SA downloaded) is searched
for every number in every spelling a program might have written it in.

Only the export a user asked for may hold numbers: it is the take-out, and it
goes to the user, never to the appliance's disk."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from kura.devserver import LocalAppliance
from kura.pgcluster import bindir
from kura.proc import run
from tests.conftest import new_appliance
from tests.policy_support import set_policy
from tests.support import Api, activate, hyphenated, my_numbers, provision, wrong_check_digit

COUNT = 3000
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
TO_ASCII = str.maketrans("０１２３４５６７８９", "0123456789")


def full_width(number: str) -> str:
    return number.translate(FULL_WIDTH)


def spelled(number: str, i: int) -> str:
    """The number the way a clerk or a payroll program might send it."""
    dashed = hyphenated(number)
    return (number, dashed, full_width(number), dashed.replace("-", " "))[i % 4]


# --- the scanner ---------------------------------------------------------------------

# Every byte is first mapped to a class (``CLASSES``), so that each spelling of
# "12 digits" becomes one fixed needle that bytes.find locates at memchr speed;
# only there does a regular expression read the run, turn it back into ASCII
# digits and check every 12-digit window of it (a number inside a longer run of
# digits is found too) against the set of numbers.
_CLASS_OF = {
    **{d: b"d" for d in range(0x30, 0x3A)},  # ASCII digits
    0x00: b"z",
    0xEF: b"e", 0xBC: b"b", **{d: b"f" for d in range(0x90, 0x9A)},  # full-width, UTF-8
    0x82: b"k", **{d: b"s" for d in range(0x4F, 0x59)},  # full-width, Shift_JIS
    0xFF: b"y", **{d: b"t" for d in range(0x10, 0x1A)},  # full-width, UTF-16-LE
    0x2D: b"h", 0x20: b"h",  # the separators of 4-4-4
}
CLASSES = bytes(_CLASS_OF.get(b, b".")[0] for b in range(256))

_Decode = Callable[[bytes], str]


@dataclass(frozen=True)
class Spelling:
    needle: bytes  # 12 digits written this way, in byte classes
    pattern: re.Pattern[bytes]  # the run of digits starting there
    decode: _Decode  # the run as ASCII digits (separators dropped)
    overlapping: bool = False


SPELLINGS: dict[str, Spelling] = {
    "ascii": Spelling(b"d" * 12, re.compile(rb"[0-9]{12,}"), lambda b: b.decode("ascii")),
    "utf-16-le": Spelling(
        b"dz" * 12, re.compile(rb"(?:[0-9]\x00){12,}"), lambda b: b.decode("utf-16-le")
    ),
    "utf-16-be": Spelling(
        b"zd" * 12, re.compile(rb"(?:\x00[0-9]){12,}"), lambda b: b.decode("utf-16-be")
    ),
    "full-width utf-8": Spelling(
        b"ebf" * 12,
        re.compile(rb"(?:\xef\xbc[\x90-\x99]){12,}"),
        lambda b: b.decode("utf-8").translate(TO_ASCII),
    ),
    "full-width shift_jis": Spelling(
        b"ks" * 12,
        re.compile(rb"(?:\x82[\x4f-\x58]){12,}"),
        lambda b: b.decode("cp932").translate(TO_ASCII),
    ),
    "full-width utf-16-le": Spelling(
        b"ty" * 12,
        re.compile(rb"(?:[\x10-\x19]\xff){12,}"),
        lambda b: b.decode("utf-16-le").translate(TO_ASCII),
    ),
    # 4-4-4 with a hyphen or a space
    "4-4-4 ascii": Spelling(
        b"dddd" + b"h" + b"dddd" + b"h" + b"dddd",
        re.compile(rb"[0-9]{4}[- ][0-9]{4}[- ][0-9]{4}"),
        lambda b: re.sub(rb"[- ]", b"", b).decode("ascii"),
        overlapping=True,
    ),
    "4-4-4 utf-16-le": Spelling(
        b"dz" * 4 + b"hz" + b"dz" * 4 + b"hz" + b"dz" * 4,
        re.compile(rb"(?:[0-9]\x00){4}[- ]\x00(?:[0-9]\x00){4}[- ]\x00(?:[0-9]\x00){4}"),
        lambda b: re.sub("[- ]", "", b.decode("utf-16-le")),
        overlapping=True,
    ),
    # JSON written with ensure_ascii: no class needle, the literal prefix is rare enough
    "full-width json escapes": Spelling(
        b"",
        re.compile(rb"(?:\\u[fF][fF]1[0-9]){12,}"),
        lambda b: json.loads(b'"' + b + b'"').translate(TO_ASCII),
    ),
}


@dataclass(frozen=True)
class Hit:
    path: str
    offset: int
    spelling: str
    number: str

    def __str__(self) -> str:  # never the number itself in test output
        return f"{self.path}@{self.offset} ({self.spelling}, ending {self.number[-4:]})"


@dataclass
class Scan:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    hits: list[Hit] = field(default_factory=list)

    def found(self) -> set[str]:
        return {h.number for h in self.hits}

    def by_spelling(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for h in self.hits:
            out.setdefault(h.spelling, set()).add(h.number)
        return out


def _check_run(run: str, wanted: set[str], where: Hit, scan: Scan) -> None:
    for i in range(len(run) - 11):
        if run[i : i + 12] in wanted:
            scan.hits.append(replace(where, number=run[i : i + 12]))


def scan_bytes(data: bytes, wanted: set[str], where: str, scan: Scan) -> None:
    scan.bytes += len(data)
    classes = data.translate(CLASSES)
    for name, spelling in SPELLINGS.items():
        if not spelling.needle:
            for match in spelling.pattern.finditer(data):
                run = spelling.decode(match.group())
                _check_run(run, wanted, Hit(where, match.start(), name, ""), scan)
            continue
        at = classes.find(spelling.needle)
        while at >= 0:
            match = spelling.pattern.match(data, at)
            assert match, (name, where, at)
            run = spelling.decode(match.group())
            _check_run(run, wanted, Hit(where, at, name, ""), scan)
            at = classes.find(spelling.needle, at + 1 if spelling.overlapping else match.end())


def regular_files(roots: Iterable[Path]) -> Iterator[Path]:
    seen: set[tuple[int, int]] = set()
    for root in roots:
        candidates = [root] if root.is_file() else []
        for folder, _dirs, names in os.walk(root):
            candidates += [Path(folder) / n for n in names]
        for path in candidates:
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                yield path


def scan_files(roots: Iterable[Path], wanted: set[str]) -> Scan:
    """Read every regular file under ``roots`` once and look for every number
    in ``wanted`` in every spelling."""
    scan, started = Scan(), time.monotonic()
    for path in regular_files(roots):
        scan_bytes(path.read_bytes(), wanted, str(path), scan)
        scan.files += 1
    scan.seconds = time.monotonic() - started
    return scan


# --- the appliance, used every way, then stopped ---------------------------------------


@dataclass
class StolenDisk:
    # repr=False: a failing test prints its fixtures, and these hold numbers
    numbers: list[str] = field(repr=False)  # every number registered
    payee_numbers: set[str] = field(repr=False)  # allowed for payment_record: the export's
    typed: set[str] = field(repr=False)  # 12 digits typed but refused (wrong check digit)
    control: str = field(repr=False)  # planted in plain text by the test (the witness)
    export: bytes = field(repr=False)
    dump: bytes = field(repr=False)  # pg_dump of the kura database, taken before the stop
    audit_bundle: Path = Path()
    state: Path = Path()
    datadir: Path = Path()
    cluster_base: Path = Path()


def _sign_in_everyone(appliance: LocalAppliance) -> tuple[Api, Api, Api]:
    password = appliance.bootstrap_da("admin")
    assert password
    anon = Api(appliance.url, appliance.cert)
    admin = activate(anon.sign_in("admin", password), password)
    return (provision(admin, "mu-theft", "MU"), provision(admin, "sa-theft", "SA"),
            provision(admin, "ma-theft", "MA"))


def _csv_shift_jis(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["種別", "コード", "氏名", "フリガナ", "個人番号", "扶養者コード"])
    writer.writerows(rows)
    return out.getvalue().encode("cp932")


def _use_every_way(
    mu: Api, sa: Api, ma: Api, numbers: list[str], typed: list[str]
) -> tuple[bytes, bytes]:
    """Register, look up, reveal, export and mistype; return the export and the
    audit bundle as downloaded."""
    json_part, csv_part, one_by_one, staff = (
        numbers[:2000],
        numbers[2000:2700],
        numbers[2700:2900],
        numbers[2900:],
    )

    # Bulk JSON, two requests of 1,000, numbers in four spellings; one extra row
    # repeats an already registered number under another code.
    for half in (0, 1):
        part = json_part[half * 1000 : (half + 1) * 1000]
        rows = [
            {"kind": "payee", "code": f"J-{half}-{i:04d}", "name": f"取引先 {half}-{i}",
             "name_kana": "トリヒキサキ", "number": spelled(n, i)}
            for i, n in enumerate(part)
        ]
        if half:
            rows.append({"kind": "payee", "code": "J-DUP", "name": "重複 花子",
                         "number": json_part[0]})
        r = mu.post("/subjects/import", {"rows": rows})
        assert r.status == 200, (r.status, r.body[:300])
        assert r.json["created"] == 1000
        assert [x["code"] for x in r.json["rejected"]] == ([] if not half else ["duplicate_number"])

    # A Shift_JIS CSV: payees, employees and their dependents, two rows with a
    # wrong check digit.
    csv_rows = [["支払先", f"C-{i:04d}", f"外注 {i}", "ガイチュウ", spelled(n, i), ""]
                for i, n in enumerate(csv_part[:600])]
    for i, n in enumerate(csv_part[600:650]):
        csv_rows.append(["社員", f"CE-{i:03d}", f"社員 {i}", "シャイン", spelled(n, i), ""])
    for i, n in enumerate(csv_part[650:]):
        csv_rows.append(["扶養親族", f"CD-{i:03d}", f"家族 {i}", "カゾク", spelled(n, i),
                         f"CE-{i:03d}"])
    csv_rows += [["支払先", f"C-BAD-{i}", "誤り 太郎", t, ""] for i, t in enumerate(typed)]
    r = mu.post("/subjects/import", body=_csv_shift_jis(csv_rows), content_type="text/csv")
    assert r.status == 200, (r.status, r.body[:300])
    assert r.json["created"] == 700
    assert len(r.json["rejected"]) == len(typed)

    # One by one: payees, then employees and their dependents.
    for i, n in enumerate(one_by_one):
        r = mu.post("/payees", {"code": f"P-{i:04d}", "name": f"個人 {i}", "number": spelled(n, i)})
        assert r.status == 201, (r.status, r.body[:300])
    for i, n in enumerate(staff[:50]):
        r = mu.post("/subjects", {"kind": "employee", "code": f"E-{i:03d}", "name": f"従業員 {i}",
                                  "number": spelled(n, i), "birth_date": "1980-04-01"})
        assert r.status == 201, (r.status, r.body[:300])
    for i, n in enumerate(staff[50:]):
        r = mu.post("/subjects", {"kind": "dependent", "code": f"D-{i:03d}", "name": f"扶養 {i}",
                                  "employee_code": f"E-{i:03d}", "number": spelled(n, i)})
        assert r.status == 201, (r.status, r.body[:300])
    refused = mu.post("/payees", {"code": "P-OTHER", "name": "別人", "number": one_by_one[0]})
    assert refused.status == 409

    # Look up, reveal for the right purpose, and for a wrong one.
    for n in random.Random(7).sample(numbers, 5):
        found = mu.post("/subjects/lookup", {"number": hyphenated(n)})
        assert found.status == 200 and len(found.json["subjects"]) == 1
        assert n not in found.body.decode()
    payee = mu.post("/subjects/lookup", {"number": one_by_one[1]}).json["subjects"][0]
    for _ in range(3):
        shown = mu.post(f"/subjects/{payee['id']}/reveal", {"purpose": "payment_record"})
        assert shown.status == 200 and shown.json["number"] == one_by_one[1]
    wrong = mu.post(f"/subjects/{payee['id']}/reveal", {"purpose": "health_pension"})
    assert wrong.status == 422 and wrong.error_code == "purpose_required"
    as_purpose = mu.post(f"/subjects/{payee['id']}/reveal", {"purpose": one_by_one[2]})
    assert as_purpose.status in (400, 422)
    assert one_by_one[2] not in as_purpose.body.decode()

    # A number typed into the user-name field, in three spellings.
    for i in range(3):
        attempt = mu.anonymous().post("/session", {"username": spelled(numbers[i], i),
                                                   "password": "not-the-password"})
        assert attempt.status == 401
        assert numbers[i] not in attempt.body.decode()

    # 2,800 rows is over the default approval threshold: the SA raises it first
    # (a weakening: the MA approves it, the appliance having one SA).
    assert set_policy(sa, {"export_approval_threshold": 5000}, ma)[
        "export_approval_threshold"] == 5000
    export = mu.post("/exports", {"purpose": "payment_record", "encoding": "shift_jis"})
    assert export.status == 200, (export.status, export.body[:300])
    assert export.headers["x-kura-rows"] == "2800"

    bundle = sa.get("/audit/export")
    assert bundle.status == 200, (bundle.status, bundle.body[:300])
    return export.body, bundle.body


def _plant_control(appliance: LocalAppliance, control: str) -> None:
    """One number the test itself writes in plain text, in a database of its
    own in the same cluster: the scan must find it in the heap and in the WAL,
    which shows that it reads PostgreSQL's files the way they are written."""
    appliance.cluster.psql("postgres", "CREATE DATABASE scanner_control", dbname="postgres")
    values = ", ".join(f"'{v}'" for v in (control, hyphenated(control), full_width(control)))
    insert = f"INSERT INTO planted VALUES ({values})"  # noqa: S608 (generated digits only)
    appliance.cluster.psql("postgres", "CREATE TABLE planted (plain text, dashed text, wide text);"
                           + insert, dbname="scanner_control")


def _dump(appliance: LocalAppliance) -> bytes:
    """The kura database as pg_dump writes it. On disk PostgreSQL may compress
    long values (TOAST), which would hide digits from a byte scan; the dump
    shows every value as it is."""
    cluster = appliance.cluster
    return run(
        [bindir() / "pg_dump", "-h", cluster.socket_dir, "-p", str(cluster.port), "-U",
         "postgres", "-d", "kura"],
        env=dict(os.environ, PGPASSWORD=cluster.password("postgres")),
    )


@pytest.fixture(scope="module")
def stolen_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StolenDisk]:
    numbers = my_numbers(COUNT, seed=4242)
    typed = [wrong_check_digit(n) for n in my_numbers(2, seed=4343)]
    control = my_numbers(1, seed=4444)[0]
    assert control not in numbers
    appliance = new_appliance("theft")
    try:
        appliance.start()
        mu, sa, ma = _sign_in_everyone(appliance)
        export, bundle = _use_every_way(mu, sa, ma, numbers, typed)
        _plant_control(appliance, control)
        dump = _dump(appliance)
        appliance.cluster.psql("postgres", "CHECKPOINT", dbname="kura")
    finally:
        appliance.stop()
    downloads = tmp_path_factory.mktemp("downloads")
    (downloads / "kura-audit.jsonl").write_bytes(bundle)
    payees = set(numbers[:2600]) | set(numbers[2700:2900])
    yield StolenDisk(numbers, payees, set(typed), control, export, dump,
                     downloads / "kura-audit.jsonl", appliance.state, appliance.cluster.datadir,
                     appliance.cluster.base)
    shutil.rmtree(appliance.state.parent, ignore_errors=True)
    shutil.rmtree(appliance.cluster.base, ignore_errors=True)


def test_scanner_finds_numbers_written_every_way() -> None:
    """The positive control: a file holding the numbers in every spelling, among
    random bytes, gives up every one of them in every spelling."""
    numbers = my_numbers(300, seed=4242)
    rng = random.Random(5)
    writers: dict[str, Callable[[str], bytes]] = {
        "ascii": lambda n: n.encode(),
        "4-4-4 ascii": lambda n: hyphenated(n).encode(),
        "utf-16-le": lambda n: n.encode("utf-16-le"),
        "utf-16-be": lambda n: n.encode("utf-16-be"),
        "4-4-4 utf-16-le": lambda n: hyphenated(n).encode("utf-16-le"),
        "full-width utf-8": lambda n: full_width(n).encode("utf-8"),
        "full-width shift_jis": lambda n: full_width(n).encode("cp932"),
        "full-width utf-16-le": lambda n: full_width(n).encode("utf-16-le"),
        "full-width json escapes": lambda n: json.dumps(full_width(n)).encode(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "planted.bin"
        with open(path, "wb") as f:
            for n in numbers:
                for write in writers.values():
                    f.write(rng.randbytes(rng.randrange(0, 40)).replace(b"\x00", b"x"))
                    f.write(write(n))
            # one inside a longer run of digits
            f.write(b"99" + numbers[0].encode() + b"77")
        scan = scan_files([Path(scratch)], set(numbers))
    assert scan.files == 1
    found = scan.by_spelling()
    for spelling in writers:
        assert found.get(spelling) == set(numbers), spelling


def test_no_number_anywhere_on_the_disk(stolen_disk: StolenDisk) -> None:
    disk = stolen_disk
    wanted = set(disk.numbers) | disk.typed | {disk.control}
    scan = scan_files([disk.state, disk.cluster_base, disk.audit_bundle], wanted)
    wal = sum(1 for p in regular_files([disk.datadir / "pg_wal"]))
    print(f"\nscanned {scan.files} files, {scan.bytes:,} bytes ({wal} in pg_wal) "
          f"in {scan.seconds:.1f} s for {len(wanted)} numbers")
    # What was scanned is what was written: the heap, the WAL, the logs, the keys.
    assert wal >= 1
    names = {p.name for p in regular_files([disk.state, disk.cluster_base])}
    assert {"vault.log", "console.log", "postgresql.log", "kura.toml"} <= names
    assert scan.bytes > 20_000_000

    # The witness is found where PostgreSQL keeps rows and where it logs changes...
    witness = [h for h in scan.hits if h.number == disk.control]
    where = {(Path(h.path).relative_to(disk.datadir).parts[0], h.spelling) for h in witness}
    for spelling in ("ascii", "4-4-4 ascii", "full-width utf-8"):
        assert ("base", spelling) in where, spelling
    # A WAL record may be cut by a WAL page header, so one spelling seen whole
    # in pg_wal is enough to show that the log itself was read.
    assert any(part == "pg_wal" for part, _ in where), where
    # ...and nothing else is found anywhere.
    leaks = [h for h in scan.hits if h.number != disk.control]
    assert not leaks, "numbers on disk:\n" + "\n".join(str(h) for h in leaks[:20])


def test_no_number_in_any_database_value(stolen_disk: StolenDisk) -> None:
    """Every value of every table, decompressed, as pg_dump shows it."""
    scan = Scan()
    scan_bytes(stolen_disk.dump, set(stolen_disk.numbers) | stolen_disk.typed, "dump", scan)
    assert b"COPY public.subjects" in stolen_disk.dump
    assert b"COPY public.audit" in stolen_disk.dump
    assert not scan.hits, "numbers in the database:\n" + "\n".join(map(str, scan.hits[:20]))


def test_the_export_holds_the_numbers_but_is_not_kept(stolen_disk: StolenDisk) -> None:
    export = stolen_disk.export
    in_export = Scan()
    scan_bytes(export, set(stolen_disk.numbers), "export", in_export)
    # exactly the payees' numbers (the only subjects allowed for payment_record)
    assert in_export.found() == stolen_disk.payee_numbers
    rows = list(csv.reader(io.StringIO(export.decode("cp932"))))
    assert len(rows) == 1 + len(stolen_disk.payee_numbers)

    # Not a copy, not a piece of it, anywhere the appliance keeps things.
    lines = export.split(b"\r\n")
    pieces = [lines[0], *random.Random(3).sample(lines[1:-1], 20)]
    for path in regular_files([stolen_disk.state, stolen_disk.cluster_base]):
        data = path.read_bytes()
        assert data != export, path
        assert not any(piece in data for piece in pieces), path


def test_the_audit_bundle_records_the_mistakes_without_the_numbers(
    stolen_disk: StolenDisk,
) -> None:
    """The paths that might have written a number did run, and were recorded:
    the mistyped sign-ins, the refused reveal, the take-out."""
    lines = [json.loads(line) for line in stolen_disk.audit_bundle.read_bytes().splitlines()]
    entries = [e for e in lines if e.get("type") == "entry"]

    def count(action: str, outcome: str = "ok", **fields: str) -> int:
        return sum(1 for e in entries if e["action"] == action and e["outcome"] == outcome
                   and all(e[k] == v for k, v in fields.items()))

    assert count("login", "denied", actor="(invalid)") == 3
    assert count("subject.reveal", "denied", purpose="health_pension") == 1
    assert count("subject.reveal", purpose="payment_record") == 3
    assert count("subject.register", "denied") == 1
    assert count("subject.import") == 3
    exports = [e for e in entries if e["action"] == "subject.export"]
    assert [e["detail"]["rows"] for e in exports] == [2800]
