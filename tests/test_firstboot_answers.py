"""The unattended answers file: a good one is read into frozen answers; a
bad one is refused before anything changes, with a message in Japanese and
English that names the field; kura-firstboot auto then leaves the machine to
the interactive wizard (exit 0), and refuses to run on a machine that is not
the appliance."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from kura import tls
from kura_firstboot import answers, main
from kura_firstboot.errors import AnswersError
from tests.firstboot_support import make_system

GOOD = """
language = "ja"
role = "single"

[network]
interface = "ens3"
mode = "static"
address = "192.0.2.10/24"
gateway = "192.0.2.1"
dns = ["192.0.2.53", "192.0.2.54"]

[host]
hostname = "kura01.example.jp"
timezone = "Asia/Tokyo"
ntp = ["ntp.nict.jp"]

[tls]
mode = "self-signed"

[seal]
mode = "custodian"
threshold = 2
shares = 3

[admin]
username = "admin"
password = "Kura-first-DA-2026"
"""


def test_a_good_file_is_read() -> None:
    given = answers.parse(GOOD)
    assert given.hostname == "kura01.example.jp"
    assert given.network.address == "192.0.2.10/24"
    assert given.network.dns == ("192.0.2.53", "192.0.2.54")
    assert (given.seal_mode, given.threshold, given.shares) == ("custodian", 2, 3)
    assert given.ntp == ("ntp.nict.jp",)
    assert given.language == "ja"
    # The password is never in the answers' repr (a log line or a traceback).
    assert "Kura-first-DA-2026" not in repr(given)


def test_defaults_need_only_three_fields() -> None:
    given = answers.parse(
        '[host]\nhostname = "kura"\n[seal]\nmode = "tpm"\n'
        '[admin]\npassword = "Kura-first-DA-2026"\n'
    )
    assert given.network.mode == "dhcp"
    assert given.timezone == "Asia/Tokyo"
    assert (given.role, given.tls_mode, given.admin_username) == ("single", "self-signed", "admin")


def replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


BAD = {
    "network.address": ('address = "192.0.2.10/24"', 'address = "192.0.2.300/24"'),
    "network.gateway": ('gateway = "192.0.2.1"', 'gateway = "198.51.100.1"'),
    "network.dns": ('"192.0.2.54"', '"dns.example"'),
    "network.mode": ('mode = "static"', 'mode = "wifi"'),
    "network.mtu": ('mode = "static"', 'mode = "static"\nmtu = 9000'),
    "host.hostname": ('hostname = "kura01.example.jp"', 'hostname = "kura_01"'),
    "host.timezone": ('timezone = "Asia/Tokyo"', 'timezone = "../../etc/passwd"'),
    "role": ('role = "single"', 'role = "leader"'),
    "seal.mode": ('mode = "custodian"', 'mode = "paper"'),
    "seal.shares": ("threshold = 2", "threshold = 4"),
    "seal.threshold": ("threshold = 2", 'threshold = "two"'),
    "admin.password": ('password = "Kura-first-DA-2026"', 'password = "short"'),
    "admin.username": ('username = "admin"', 'username = "管理者"'),
    "tls.cert": ('mode = "self-signed"', 'mode = "import"\nkey = "x"'),
    "(file)": ("[admin]", "[admin"),
}


@pytest.mark.parametrize("field", BAD)
def test_each_bad_field_is_named(field: str) -> None:
    old, new = BAD[field]
    with pytest.raises(AnswersError) as caught:
        answers.parse(replace(GOOD, old, new))
    assert caught.value.field == field
    assert caught.value.en and caught.value.ja != caught.value.en


def test_a_missing_required_field_is_named() -> None:
    with pytest.raises(AnswersError) as caught:
        answers.parse(replace(GOOD, 'password = "Kura-first-DA-2026"', ""))
    assert caught.value.field == "admin.password"


def test_an_imported_certificate_must_match_its_key(tmp_path: Path) -> None:
    tls.make_self_signed(tmp_path / "a.pem", tmp_path / "a.key", ["kura01"])
    tls.make_self_signed(tmp_path / "b.pem", tmp_path / "b.key", ["kura01"])
    section = (
        'mode = "import"\ncert = """' + (tmp_path / "a.pem").read_text() + '"""\nkey = """'
    )
    good = replace(GOOD, 'mode = "self-signed"', section + (tmp_path / "a.key").read_text()
                   + '"""')
    assert answers.parse(good).tls_mode == "import"
    bad = replace(GOOD, 'mode = "self-signed"', section + (tmp_path / "b.key").read_text()
                  + '"""')
    with pytest.raises(AnswersError) as caught:
        answers.parse(bad)
    assert caught.value.field == "tls.key"
    assert "does not match" in caught.value.en
    assert "一致しません" in caught.value.ja


def test_auto_with_a_bad_file_says_which_field_in_both_languages(tmp_path: Path) -> None:
    system, recorder = make_system(tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "kura.setup").write_text(replace(GOOD, 'gateway = "192.0.2.1"',
                                              'gateway = "192.0.2.999"'))
    out = io.StringIO()
    assert main.run_auto(system, creds, out, io.StringIO(), usb_wait=0) == 0
    text = out.getvalue()
    assert "[answers.bad] 応答ファイルの network.gateway に誤りがあります" in text
    assert "[answers.bad] Answers file, network.gateway: " in text
    assert "[answers.fallback]" in text and "Traceback" not in text
    assert recorder.calls == []  # nothing was changed
    assert not (system.root / "var/lib/kura/firstboot/state.json").exists()


def test_auto_without_answers_does_nothing(tmp_path: Path) -> None:
    system, recorder = make_system(tmp_path)
    out = io.StringIO()
    assert main.run_auto(system, None, out, io.StringIO(), usb_wait=0) == 0
    assert "[auto.none]" in out.getvalue()
    assert recorder.calls == []


def test_refuses_to_run_outside_the_appliance() -> None:
    done = subprocess.run([sys.executable, "-m", "kura_firstboot.main", "tty"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "not a Kura appliance" in done.stderr and "アプライアンスではありません" in done.stderr


def test_root_option_reads_the_credential_and_reports(tmp_path: Path) -> None:
    """The command line end to end on a fake root: a bad credential gives the
    bilingual message and exit 0, no traceback."""
    system, _ = make_system(tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "kura.setup").write_text(GOOD.replace('"kura01.example.jp"', "3"))
    done = subprocess.run(
        [sys.executable, "-m", "kura_firstboot.main", "--root", str(system.root), "auto"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"CREDENTIALS_DIRECTORY": str(creds), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "host.hostname" in done.stdout and "Traceback" not in done.stdout + done.stderr
