"""``kura witness`` on a host: the files it makes (modes, the CA), the pg_autoctl and
SQL it runs (recorded: pg_auto_failover is not on the build host, see docs/ha.md), and
the enrolment file a data node then accepts."""

from __future__ import annotations

import datetime
import json
import stat
from pathlib import Path

import pytest

from kura import cli, witness
from kura.core import formation
from kura.core import witness as core
from kura.core.errors import KuraError


class Recorder:
    def __init__(self, running: bool = False) -> None:
        self.calls: list[tuple[list[str], str | None, str, dict[str, str]]] = []
        self.running = running

    def __call__(self, argv: list[str], stdin: str | None, user: str,
                 env: dict[str, str]) -> str:
        self.calls.append((argv, stdin, user, env))
        if argv[1:2] == ["status"] and not self.running:
            raise KuraError("not running", "停止中")
        return ""


def test_init_makes_the_ca_and_the_monitor(tmp_path: Path) -> None:
    top = tmp_path / "witness"
    runner = Recorder()
    code = witness.init("192.0.2.3", top, runner)
    layout = witness.Layout(top)
    for name, mode in (("ca.key", 0o600), ("server.key", 0o600), ("ca.crt", 0o644)):
        assert stat.S_IMODE((layout.tls / name).stat().st_mode) == mode, name
    assert stat.S_IMODE(layout.passwords.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.pgpass.stat().st_mode) == 0o600
    assert code.pin == core.ca_pin((layout.tls / "ca.crt").read_bytes())
    argvs = [call[0] for call in runner.calls]
    assert argvs[0] == formation.create_monitor(str(layout.pgdata), "192.0.2.3",
                                                layout.tls_files())
    assert "verify-full" in argvs[0]
    assert [a[1] for a in argvs[1:]] == ["status", "start", "-X", "stop"]
    assert all(call[2] == "postgres" for call in runner.calls)
    assert all(call[3] == {"PGPASSFILE": str(layout.pgpass)} for call in runner.calls)
    # The password goes on standard input, never in argv.
    password = json.loads(layout.passwords.read_text())["autoctl_node"]
    sql = runner.calls[3][1]
    assert sql is not None and password in sql
    assert not any(password in " ".join(call[0]) for call in runner.calls)
    for guc, timer in formation.TIMERS["monitor"].items():
        assert f"ALTER SYSTEM SET {guc} = '{timer.value}'" in sql
    assert "jit = 'off'" in sql


def test_init_leaves_a_running_monitor_running(tmp_path: Path) -> None:
    runner = Recorder(running=True)
    witness.init("192.0.2.3", tmp_path / "w", runner)
    assert [call[0][1] for call in runner.calls] == ["create", "status", "-X"]


def test_init_refuses_to_replace_a_witness(tmp_path: Path) -> None:
    witness.init("192.0.2.3", tmp_path, Recorder())
    ca = (tmp_path / "tls/ca.crt").read_bytes()
    with pytest.raises(KuraError, match="already holds a witness"):
        witness.init("192.0.2.3", tmp_path, Recorder())
    assert (tmp_path / "tls/ca.crt").read_bytes() == ca


def test_an_unfinished_init_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    with pytest.raises(KuraError, match="did not finish") as caught:
        witness.init("192.0.2.3", tmp_path, Recorder())
    assert "削除して再実行" in caught.value.message_ja


def test_a_failed_setting_still_stops_the_monitor(tmp_path: Path) -> None:
    class Failing(Recorder):
        def __call__(self, argv: list[str], stdin: str | None, user: str,
                     env: dict[str, str]) -> str:
            super().__call__(argv, stdin, user, env)
            if argv[0] == "psql":
                raise KuraError("psql failed", "失敗")
            return ""

    runner = Failing()
    with pytest.raises(KuraError):
        witness.init("192.0.2.3", tmp_path, runner)
    assert runner.calls[-1][0][1] == "stop"


def test_enrol_code_and_enrolment_file_from_the_cli(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    top = tmp_path / "w"
    code = witness.init("192.0.2.3", top, Recorder())
    assert cli.main(["witness", "enrol-code", "--dir", str(top), "-q"]) == 0
    printed = capsys.readouterr().out.strip()
    assert core.decode(printed) == code
    out = tmp_path / "node-a.kura-enrol"
    assert cli.main(["witness", "enrol", "--dir", str(top), "--name", "node-a",
                     "--address", "192.0.2.11", "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    bundle = core.read_bundle(out.read_text(), core.decode(printed),
                              datetime.datetime.now(datetime.UTC))
    assert bundle.passwords == json.loads((top / "passwords.json").read_text())
    # never overwritten: it may be the copy on its way to the node
    assert cli.main(["witness", "enrol", "--dir", str(top), "--name", "node-a",
                     "--address", "192.0.2.11", "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main(["witness", "enrol", "--dir", str(top), "--name", "Bad Name",
                     "--address", "192.0.2.11", "-o", str(tmp_path / "x")]) == 1
    assert "not a node name" in capsys.readouterr().err


def test_enrol_code_without_a_witness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["witness", "enrol-code", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "kura witness init" in err and "ウィットネス" in err


def test_dropin_only_for_another_folder(tmp_path: Path) -> None:
    assert witness.dropin(witness.DEFAULT_DIR) is None
    text = witness.dropin(tmp_path)
    assert text is not None
    assert f"Environment=PGDATA={tmp_path}/pgdata" in text
    assert f"ReadWritePaths={tmp_path}" in text
