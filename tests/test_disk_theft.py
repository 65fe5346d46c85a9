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
import os
import random
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, activate, hyphenated, my_numbers, provision, wrong_check_digit

COUNT = 3000
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
TO_ASCII = str.maketrans("０１２３４５６７８９", "0123456789")


def full_width(number: str) -> str:
    return number.translate(FULL_WIDTH)


def spelled(number: str, i: int) -> str:
    """The number the way a clerk or a payroll program might send it."""
    return (number, hyphenated(number), full_width(number), " ".join(hyphenated(number).split("-")))[
        i % 4
    ]


# --- the scanner ---------------------------------------------------------------------

# Each spelling: a pattern that finds runs of digits written that way (runs of 12
# or more, so that a number inside a longer run is found too) and how to turn a
# run back into ASCII digits. Every 12-digit window of a run is checked.
_Decode = Callable[[bytes], str]
SPELLINGS: dict[str, tuple[re.Pattern[bytes], _Decode]] = {
    "ascii": (re.compile(rb"[0-9]{12,}"), lambda b: b.decode("ascii")),
    "utf-16-le": (re.compile(rb"(?:[0-9]\x00){12,}"), lambda b: b.decode("utf-16-le")),
    "utf-16-be": (re.compile(rb"(?:\x00[0-9]){12,}"), lambda b: b.decode("utf-16-be")),
    "full-width utf-8": (
        re.compile(rb"(?:\xef\xbc[\x90-\x99]){12,}"),
        lambda b: b.decode("utf-8").translate(TO_ASCII),
    ),
    "full-width shift_jis": (
        re.compile(rb"(?:\x82[\x4f-\x58]){12,}"),
        lambda b: b.decode("cp932").translate(TO_ASCII),
    ),
    "full-width utf-16-le": (
        re.compile(rb"(?:[\x10-\x19]\xff){12,}"),
        lambda b: b.decode("utf-16-le").translate(TO_ASCII),
    ),
}
# 4-4-4 with a hyphen or a space; the look-ahead finds overlapping candidates.
SEPARATED: dict[str, tuple[re.Pattern[bytes], _Decode]] = {
    "4-4-4 ascii": (
        re.compile(rb"(?=([0-9]{4}[- ][0-9]{4}[- ][0-9]{4}))"),
        lambda b: re.sub(rb"[- ]", b"", b).decode("ascii"),
    ),
    "4-4-4 utf-16-le": (
        re.compile(rb"(?=((?:[0-9]\x00){4}[- ]\x00(?:[0-9]\x00){4}[- ]\x00(?:[0-9]\x00){4}))"),
        lambda b: re.sub("[- ]", "", b.decode("utf-16-le")),
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


def scan_bytes(data: bytes, wanted: set[str], where: str, scan: Scan) -> None:
    scan.bytes += len(data)
    for name, (pattern, decode) in SPELLINGS.items():
        for match in pattern.finditer(data):
            run = decode(match.group())
            for i in range(len(run) - 11):
                if run[i : i + 12] in wanted:
                    scan.hits.append(Hit(where, match.start(), name, run[i : i + 12]))
    for name, (pattern, decode) in SEPARATED.items():
        for match in pattern.finditer(data):
            digits = decode(match.group(1))
            if digits in wanted:
                scan.hits.append(Hit(where, match.start(), name, digits))


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
    numbers: list[str]  # every number registered
    payee_numbers: set[str]  # those allowed for payment_record: what the export holds
    typed: set[str]  # 12 digits typed but refused (wrong check digit)
    export: bytes
    audit_bundle: Path
    state: Path
    datadir: Path
    cluster_base: Path


def _sign_in_everyone(appliance: LocalAppliance) -> tuple[Api, Api]:
    password = appliance.bootstrap_da("admin")
    assert password
    anon = Api(appliance.url, appliance.cert)
    admin = activate(anon.sign_in("admin", password), password)
    return provision(admin, "mu-theft", "MU"), provision(admin, "sa-theft", "SA")


def _csv_shift_jis(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["種別", "コード", "氏名", "フリガナ", "個人番号", "扶養者コード"])
    writer.writerows(rows)
    return out.getvalue().encode("cp932")


def _use_every_way(mu: Api, sa: Api, numbers: list[str], typed: list[str]) -> tuple[bytes, bytes]:
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

    export = mu.post("/exports", {"purpose": "payment_record", "encoding": "shift_jis"})
    assert export.status == 200, (export.status, export.body[:300])
    assert export.headers["x-kura-rows"] == "2800"

    bundle = sa.get("/audit/export")
    assert bundle.status == 200, (bundle.status, bundle.body[:300])
    return export.body, bundle.body


@pytest.fixture(scope="module")
def stolen_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StolenDisk]:
    numbers = my_numbers(COUNT, seed=4242)
    typed = [wrong_check_digit(n) for n in my_numbers(2, seed=4343)]
    appliance = new_appliance("theft")
    try:
        appliance.start()
        mu, sa = _sign_in_everyone(appliance)
        export, bundle = _use_every_way(mu, sa, numbers, typed)
        appliance.cluster.psql("postgres", "CHECKPOINT", dbname="kura")
    finally:
        appliance.stop()
    downloads = tmp_path_factory.mktemp("downloads")
    (downloads / "kura-audit.jsonl").write_bytes(bundle)
    payees = set(numbers[:2600]) | set(numbers[2700:2900])
    yield StolenDisk(numbers, payees, set(typed), export, downloads / "kura-audit.jsonl",
                     appliance.state, appliance.cluster.datadir, appliance.cluster.base)


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
    wanted = set(stolen_disk.numbers) | stolen_disk.typed
    roots = [stolen_disk.state, stolen_disk.cluster_base, stolen_disk.audit_bundle]
    scan = scan_files(roots, wanted)
    wal = sum(1 for p in regular_files([stolen_disk.datadir / "pg_wal"]))
    print(f"\nscanned {scan.files} files, {scan.bytes:,} bytes ({wal} in pg_wal) "
          f"in {scan.seconds:.1f} s for {len(wanted)} numbers")
    # what was scanned is what was written: the heap, the WAL, the logs, the keys
    assert wal >= 1
    names = {p.name for p in regular_files([stolen_disk.state])}
    assert {"vault.log", "console.log", "postgresql.log", "kura.toml"} <= names
    assert scan.bytes > 20_000_000
    assert not scan.hits, "numbers on disk:\n" + "\n".join(str(h) for h in scan.hits[:20])


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
