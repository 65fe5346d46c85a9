"""What the security review found besides (issue 10, point 6), each shown fixed:
formula-like names in CSV files and on the employee's link, deeply nested JSON
and lone surrogates, rows refused while reading an import in its audit entry,
the duplicate-number answer to an MA's correction, `kura audit export` without
a terminal, and `./build.sh run`'s logs and answers file kept from other users.
(The docs test of the roles per route is in tests/test_docs.py.)"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kura.console.web.importjobs import ImportJob
from kura.core import exports, importer, jsonbounds, spreadsheet
from kura.core import requests as collect
from kura.core.errors import BadRequest
from kura.devserver import LocalAppliance
from tests.support import Api, fresh_totp, my_numbers, png

TOP = Path(__file__).parent.parent
# Numbers of this module only (a seed no other test uses), never a real person's.
NUMBERS = iter(my_numbers(40, seed=0x2E71E))
FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+81 3", "-2+3", "@SUM(A1:A9)"]
YEAR = datetime.now(exports.TOKYO).year


def audit(sa: Api, action: str) -> list[dict[str, Any]]:
    r = sa.get("/audit", query={"action": action, "limit": 500})
    assert r.status == 200, r.body
    return [e for e in r.json["entries"] if e["action"] == action]


@pytest.fixture
def logs(appliance: LocalAppliance) -> Iterator[None]:
    """Fails the test if the vault or the console logged a traceback meanwhile."""
    paths = sorted(appliance.logs.glob("*.log"))
    sizes = {p: p.stat().st_size for p in paths}
    yield
    for path in paths:
        with path.open("rb") as f:
            f.seek(sizes[path])
            added = f.read().decode(errors="replace")
        assert "Traceback" not in added, f"{path.name}: {added[-2000:]}"


# --- a. formula-like text ------------------------------------------------------------


def test_every_csv_cell_that_starts_like_a_formula_is_written_as_text() -> None:
    cells = [*FORMULAS, "\tTAB", "\rCR", "山田 太郎", "0123"]
    for encoding, codec in (("shift_jis", "cp932"), ("utf-8-bom", "utf-8-sig")):
        data = exports.csv_bytes([["payee", "P-1", cell, "", "0"] for cell in cells], encoding)
        rows = list(csv.reader(io.StringIO(data.decode(codec), newline="")))
        assert [r[2] for r in rows[1:]] == [
            *("'" + f for f in FORMULAS), "'\tTAB", "'\rCR", "山田 太郎", "0123"
        ]
    report = importer.rejection_report_csv(
        [importer.Rejection(2, "bad", "-", "\t=1+1", "@cmd")], "cp932"
    )
    [_, row] = list(csv.reader(io.StringIO(report.decode("cp932"), newline="")))
    assert row == ["2", "'-", "'\t=1+1", "'@cmd"]


def test_an_export_of_payees_with_formula_names_opens_as_text(users: dict[str, Api]) -> None:
    mu = users["MU"]
    tag = uuid.uuid4().hex[:6]
    rows = [{"kind": "payee", "code": f"FX-{tag}-{i}", "name": name, "number": next(NUMBERS)}
            for i, name in enumerate(FORMULAS)]
    imported = mu.post("/subjects/import", {"rows": rows})
    assert imported.status == 200 and imported.json["created"] == len(rows), imported.body
    listed = mu.get("/subjects", query={"query": f"FX-{tag}", "kind": "payee"}).json["subjects"]
    prepared = mu.post("/export-requests", {"purpose": "payment_record", "tax_year": YEAR,
                                            "ids": [s["id"] for s in listed]})
    assert prepared.status == 201, prepared.body
    taken = mu.post(f"/export-requests/{prepared.json['request']['id']}/download")
    assert taken.status == 200, taken.body
    lines = list(csv.reader(io.StringIO(taken.body.decode("cp932"), newline="")))
    assert sorted(line[2] for line in lines[1:]) == sorted("'" + f for f in FORMULAS)


def test_the_employee_link_refuses_a_name_that_starts_like_a_formula() -> None:
    for name in FORMULAS:
        with pytest.raises(spreadsheet.FormulaLikeText) as refused:
            collect.make_entry(1, {"relation": "child", "name": name, "name_kana": "",
                                   "birth_date": "2015-01-01", "number": my_numbers(1)[0]},
                               "本人", "")
        assert refused.value.detail == {"field": "name", "reason": "formula", "entry": 1}
        assert "=" in refused.value.message_ja and "=" in refused.value.message_en
        assert name not in refused.value.message_en


def test_the_link_refuses_it_through_the_api_and_stays_usable(
    users: dict[str, Api], anon: Api
) -> None:
    made = users["MU"].post("/requests", {"name": "数式 太郎", "employee_code":
                                          f"FXR-{uuid.uuid4().hex[:6]}",
                                          "purposes": ["withholding_slip"]})
    assert made.status == 200, made.body
    token = made.json["token"]
    docs = [{"kind": "number", "content_type": "image/png",
             "content": base64.b64encode(png()).decode()},
            {"kind": "identity", "content_type": "image/png",
             "content": base64.b64encode(png()).decode()}]
    entries = [{"relation": "self", "number": next(NUMBERS), "birth_date": "1980-01-01"},
               {"relation": "child", "name": "=SUM(A1:A9)", "birth_date": "2015-01-01",
                "number": next(NUMBERS)}]
    refused = anon.post("/registration/submit",
                        {"token": token, "entries": entries, "documents": docs})
    assert refused.status == 400, refused.body
    error = refused.json["error"]
    assert error["detail"]["entry"] == 1 and error["detail"]["field"] == "name"
    assert "扶養親族1" in error["message"] and "dependent 1" in error["message_en"]
    assert anon.post("/registration/open", {"token": token}).status == 200


# --- b. nesting and surrogates -------------------------------------------------------


@pytest.mark.usefixtures("logs")
def test_deep_json_and_lone_surrogates_get_a_400_even_before_sign_in(
    anon: Api, users: dict[str, Api]
) -> None:
    deep = b'{"username": "x", "password": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = anon.post("/session", body=deep, content_type="application/json")
    assert r.status == 400 and r.json["error"]["detail"]["reason"] == "too_deep", r.body
    just_deep = b'{"username": "x", "password": ' + b"[" * 40 + b"]" * 40 + b"}"
    r = anon.post("/session", body=just_deep, content_type="application/json")
    assert r.status == 400 and r.json["error"]["detail"]["reason"] == "too_deep", r.body

    lone = b'{"username": "\\ud800", "password": "x"}'
    r = anon.post("/session", body=lone, content_type="application/json")
    assert r.status == 400, r.body
    assert r.json["error"]["detail"] == {"field": "username", "reason": "surrogate"}

    mu = users["MU"]
    r = mu.post("/subjects", body=b'{"kind": "payee", "code": "S-1", "name": "a\\udfffb",'
                b' "number": "x"}', content_type="application/json")
    assert r.status == 400 and r.json["error"]["detail"]["field"] == "name", r.body
    # A pair that makes one character (an emoji) is text, and is searched for.
    r = mu.post("/subjects/lookup", body=b'{"code": "S-1"}', content_type="application/json")
    assert r.status == 200, r.body


def test_nesting_is_measured_without_reading_strings() -> None:
    jsonbounds.check_nesting(b'{"a": "[[[[[[[[[[\\"[[[[[[[[", "b": [[1]]}', max_depth=3)
    with pytest.raises(jsonbounds.TooDeep):
        jsonbounds.check_nesting(b'{"a": "\\\\", "b": [[[1]]]}', max_depth=3)
    assert jsonbounds.loads(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    with pytest.raises(BadRequest, match="not valid JSON"):
        jsonbounds.loads(b'{"a": [}')


# --- c. rows refused while reading an import ------------------------------------------


def test_rows_refused_while_reading_are_in_the_import_audit_entry(users: dict[str, Api]) -> None:
    mu, sa = users["MU"], users["SA"]
    tag = uuid.uuid4().hex[:6]
    good = next(NUMBERS)
    text = ("支払先コード,氏名,個人番号\r\n"
            f"RD-{tag}-1,読込 一,{good}\r\n"
            f"RD-{tag}-2,読込 二,123\r\n"
            f"RD-{tag}-3,,{next(NUMBERS)}\r\n")
    r = mu.post("/subjects/import", body=text.encode(), content_type="text/csv")
    assert r.status == 200 and r.json["created"] == 1 and len(r.json["rejected"]) == 2, r.body
    bad_only = f"支払先コード,氏名,個人番号\r\nRD-{tag}-4,読込 四,12\r\n"
    r = mu.post("/subjects/import", body=bad_only.encode(), content_type="text/csv")
    assert r.status == 200 and r.json["created"] == 0, r.body
    entries = audit(sa, "subject.import")[:2]
    details = sorted((e["detail"] for e in entries), key=lambda d: d["created"])
    assert details == [
        {"created": 0, "existing": 0, "rejected": 1, "rejected_reading": 1},
        {"created": 1, "existing": 0, "rejected": 2, "rejected_reading": 2},
    ]


class RecordingVault:
    """The vault's side of the socket for a console import job: records the calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def call(self, op: str, args: dict[str, Any] | None = None,
                   session: str | None = None, client: str = "",
                   terminal: str = "") -> dict[str, Any]:
        assert op == "subject.import" and args is not None
        self.calls.append(args)
        return {"created": len(args["rows"]), "existing": 0, "rejected": [], "total": 0}


@pytest.mark.parametrize("good_rows", [2, 0])
def test_a_console_import_job_tells_the_vault_what_it_refused_while_reading(
    good_rows: int,
) -> None:
    rows = [f"RJ-{i},読込 {i},{n}" for i, n in enumerate(my_numbers(good_rows, seed=77))]
    text = "支払先コード,氏名,個人番号\r\n" + "".join(
        line + "\r\n" for line in [*rows, "RJ-x,読込 x,12", "RJ-y,,12"])
    parsed = importer.parse_csv(text.encode())
    job = ImportJob(id="j", owner="mu", encoding=parsed.encoding, total=good_rows + 2,
                    started_at=datetime.now(), rejections=list(parsed.rejections),
                    pending=list(parsed.records))
    vault = RecordingVault()
    asyncio.run(job.run(vault, "token", "127.0.0.1"))
    assert [c.get("refused_on_parse") for c in vault.calls] == [2]
    assert sum(len(c["rows"]) for c in vault.calls) == good_rows


# --- d. the duplicate-number answer to a correction -----------------------------------


def test_a_correction_to_a_registered_number_names_no_one_and_is_audited(
    users: dict[str, Api],
) -> None:
    mu, ma, sa = users["MU"], users["MA"], users["SA"]
    tag = uuid.uuid4().hex[:6]
    theirs = next(NUMBERS)
    made = [mu.post("/payees", {"code": f"DUP-{tag}-{i}", "name": f"重複 {name}",
                                "number": number}).json["subject"]
            for i, (name, number) in enumerate((("自分", next(NUMBERS)), ("他人", theirs)))]
    mine, other = made
    r = ma.patch(f"/subjects/{mine['id']}", {"number": theirs, "name": "変更 されない"})
    assert r.status == 409 and r.error_code == "duplicate_number", r.body
    for secret in (other["id"], other["code"], "他人", theirs, theirs[-4:]):
        assert secret not in r.body.decode(), secret
    assert ma.get(f"/subjects/{mine['id']}").json["subject"]["name"] == "重複 自分"
    [entry] = [e for e in audit(sa, "subject.correct") if e["target"] == mine["id"]]
    assert (entry["outcome"], entry["detail"]) == ("denied", {"reason": "duplicate_number"})
    assert theirs not in json.dumps(entry) and other["id"] not in json.dumps(entry)


# --- e. kura audit export without a terminal ------------------------------------------


def test_audit_export_reads_the_password_from_a_descriptor_without_a_terminal(
    appliance: LocalAppliance, users: dict[str, Api], tmp_path: Path
) -> None:
    sa = users["SA"]
    env = {k: v for k, v in os.environ.items() if k not in ("KURA_PASSWORD", "KURA_TOTP")}
    argv = [sys.executable, "-m", "kura.cli", "audit", "export", "--config",
            str(appliance.config_path), "--user", sa.username]
    no_source = subprocess.run([*argv, "-o", str(tmp_path / "x")], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, env=env, timeout=60, check=False)
    assert no_source.returncode == 1 and "--password-fd" in no_source.stderr
    assert "Traceback" not in no_source.stderr and not (tmp_path / "x").exists()

    read, write = os.pipe()
    os.write(write, sa.password.encode() + b"\n")
    os.close(write)
    env["KURA_TOTP"] = fresh_totp(sa.totp_secret)  # one the vault has not seen yet
    bundle = tmp_path / "audit.jsonl"
    try:
        done = subprocess.run([*argv, "--password-fd", str(read), "-o", str(bundle)],
                              stdin=subprocess.DEVNULL, pass_fds=(read,), capture_output=True,
                              text=True, env=env, timeout=60, check=False)
    finally:
        os.close(read)
    assert done.returncode == 0, done.stderr
    assert bundle.stat().st_size > 0 and "entries" in done.stdout
    assert sa.password not in done.stdout + done.stderr
    helped = subprocess.run([*argv[:5], "--help"], capture_output=True, text=True, check=True)
    assert "--password-fd" in helped.stdout and "KURA_PASSWORD" in helped.stdout
    assert "--password-fd" in (TOP / "README.md").read_text()


# --- g. ./build.sh run keeps its secrets from other users -----------------------------


def test_the_vm_keeps_logs_private_and_the_answers_off_the_command_line(tmp_path: Path) -> None:
    sys.path.insert(0, str(TOP / "image"))
    try:
        import vm
    finally:
        sys.path.remove(str(TOP / "image"))
    image = tmp_path / "kura.qcow2"
    subprocess.run([vm.QEMU_IMG, "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    state = tmp_path / "state"
    state.mkdir()
    (state / "serial.log").write_text("an older boot\n")
    os.chmod(state / "serial.log", 0o644)  # what an older run left
    answers = b"[admin]\npassword = 'first-admin-secret'\n"
    machine = vm.VM(image, state, accel="tcg", interactive=True)
    machine.credential("kura.setup", answers)
    machine._prepare()
    for log in (machine.serial_log, machine.qemu_log, state / "swtpm.log"):
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
    assert machine.serial_log.read_text() == "an older boot\n"

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    argv = machine.qemu_argv(runtime)
    line = " ".join(argv)
    assert b"first-admin-secret" not in line.encode()
    assert base64.b64encode(answers).decode() not in line
    assert "logappend=on" in line and f"logfile={machine.serial_log}" in line
    [table] = [a.removeprefix("file=") for a in argv if a.startswith("file=") and "smbios" in a]
    assert stat.S_IMODE(os.stat(table).st_mode) == 0o600
    # What systemd reads from /sys/firmware/dmi/entries/11-*/raw: an OEM strings table.
    raw = Path(table).read_bytes()
    assert raw[0] == 11 and raw[1] == 5 and raw[4] == 1 and raw.endswith(b"\0\0")
    name, _, value = raw[5:-2].decode().partition("=")
    assert name == "io.systemd.credential.binary:kura.setup"
    assert base64.b64decode(value) == answers

