"""The steps one by one on a fake root: the journal resumes at the first step
not done after a crash, refuses illegal transitions and secrets; running a
step again changes nothing; the PostgreSQL files say what the appliance
needs; an imported certificate must match its key; every message exists in
both languages."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from kura import tls
from kura_firstboot import answers, certificate, database, host
from kura_firstboot.journal import STEPS, IllegalTransition, Journal, SecretInJournal
from kura_firstboot.messages import MESSAGES
from kura_firstboot.terminal import Terminal
from kura_firstboot.wizard import Wizard
from tests.firstboot_support import make_system, tree

ANSWERS = answers.parse(
    '[host]\nhostname = "kura01"\nntp = ["ntp.nict.jp"]\n[seal]\nmode = "custodian"\n'
    '[admin]\npassword = "Kura-first-DA-2026"\n'
)
NETWORK_DONE = {"interface": "ens3", "mac": "52:54:00:00:00:01", "mode": "static",
                "address": "192.0.2.10/24", "gateway": "192.0.2.1", "dns": [],
                "address_seen": "192.0.2.10"}


class PowerCut(BaseException):
    """Stands for the machine stopping mid-step."""


def test_a_crash_between_steps_resumes_at_the_next_one(tmp_path: Path) -> None:
    system, recorder = make_system(tmp_path)
    journal = Journal.load(system)
    journal.complete("network", NETWORK_DONE)
    out = io.StringIO()
    wizard = Wizard(system, Terminal(None, out), journal, ANSWERS)

    def cut() -> None:
        raise PowerCut

    wizard.step_tls = cut  # type: ignore[method-assign]
    with pytest.raises(PowerCut):
        wizard.run()
    assert Journal.load(system).next_step == "tls"
    hostnamectl = recorder.commands().count("hostnamectl set-hostname kura01")
    assert hostnamectl == 1

    # The next boot: starts at the TLS step; the steps done are not run again.
    out = io.StringIO()
    resumed = Wizard(system, Terminal(None, out), Journal.load(system), ANSWERS)
    resumed.step_database = cut  # type: ignore[method-assign]
    with pytest.raises(PowerCut):
        resumed.run()
    assert out.getvalue().startswith("[step] Step 5/10: TLS certificate\n")
    assert recorder.commands().count("hostnamectl set-hostname kura01") == 1
    names = [s for s in STEPS if s in Journal.load(system).done]
    assert names == ["network", "hostname", "time", "role", "tls"]
    # The certificate names the host and its address.
    cert = tls.fingerprint(system.root / "etc/kura/tls/cert.pem")
    assert cert in out.getvalue()


def test_rerunning_done_steps_changes_nothing(tmp_path: Path) -> None:
    system, recorder = make_system(tmp_path)
    journal = Journal.load(system)
    journal.complete("network", NETWORK_DONE)
    wizard = Wizard(system, Terminal(None, io.StringIO()), journal, ANSWERS)
    for step in ("hostname", "time", "role", "tls"):
        getattr(wizard, f"step_{step}")()
    database.setup(system)
    assert "systemctl restart postgresql@17-main.service" in recorder.commands()
    assert "systemctl restart systemd-timesyncd.service" in recorder.commands()
    before, calls = tree(system.root), len(recorder.calls)

    host.set_hostname(system, "kura01")
    host.set_timezone(system, "Asia/Tokyo")
    host.set_ntp(system, ("ntp.nict.jp",))
    host.set_role(system, "single")
    database.setup(system)
    assert tree(system.root) == before
    again = recorder.commands()[calls:]
    # No restart: nothing changed. Creating roles and the database is idempotent SQL.
    assert not [c for c in again if "restart" in c or c.startswith("pg_createcluster")]
    assert "systemctl start postgresql@17-main.service" in again


def test_journal_refuses_illegal_transitions_and_secrets(tmp_path: Path) -> None:
    system, _ = make_system(tmp_path)
    journal = Journal.load(system)
    with pytest.raises(IllegalTransition):
        journal.complete("seal")
    journal.forbid("Kura-first-DA-2026")
    with pytest.raises(SecretInJournal):
        journal.complete("network", {"oops": "Kura-first-DA-2026"})
    assert Journal.load(system).done == []
    journal = Journal.load(system)
    journal.complete("network", NETWORK_DONE)
    state = system.root / "var/lib/kura/firstboot/state.json"
    assert state.stat().st_mode & 0o777 == 0o600
    assert Journal.load(system).next_step == "hostname"


def test_postgresql_files(tmp_path: Path) -> None:
    system, recorder = make_system(tmp_path)
    tls.make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", ["kura01"])
    certificate.install(system, (tmp_path / "c.pem").read_bytes(),
                        (tmp_path / "k.pem").read_bytes())
    database.setup(system)
    base = system.root / "etc/postgresql/17/main"
    hba = (base / "pg_hba.conf").read_text().splitlines()
    rules = [line.split() for line in hba if line.strip() and not line.startswith("#")]
    assert rules[:2] == [["local", "kura", "kura_vault", "peer", "map=kura"],
                         ["local", "kura", "kura_owner", "peer", "map=kura"]]
    assert ["local", "all", "postgres", "peer"] in rules  # Debian's defaults stay, after ours
    ident = [line.split() for line in (base / "pg_ident.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert ident == [["kura", "kura-vault", "kura_vault"], ["kura", "root", "kura_owner"]]
    conf = (base / "conf.d/kura.conf").read_text()
    assert "listen_addresses = ''" in conf and "ssl = on" in conf
    assert "password_encryption = scram-sha-256" in conf
    assert "ssl_key_file = '/etc/postgresql/17/main/tls/server.key'" in conf
    key = base / "tls/server.key"
    assert (key.stat().st_mode & 0o777, key.stat().st_uid) == (0o600, 105)
    psql = [data.decode() for argv, data in recorder.calls if "psql" in argv and data]
    assert "CREATE ROLE kura_owner LOGIN;" in psql[0] and "PASSWORD" not in psql[0]
    assert "GRANT USAGE ON SCHEMA public TO kura_vault" in psql[1]


def test_imported_certificate_must_match_its_key(tmp_path: Path) -> None:
    system, _ = make_system(tmp_path)
    tls.make_self_signed(tmp_path / "a.pem", tmp_path / "a.key", ["kura01.example.jp"])
    tls.make_self_signed(tmp_path / "b.pem", tmp_path / "b.key", ["kura01.example.jp"])
    lines = ["import", (tmp_path / "a.pem").read_text(), "", (tmp_path / "b.key").read_text(), "",
             (tmp_path / "a.pem").read_text(), "", (tmp_path / "a.key").read_text(), ""]
    infd, feed = os.pipe()
    os.write(feed, "\n".join(lines).encode() + b"\n")
    os.close(feed)
    out = io.StringIO()
    journal = Journal.load(system)
    journal.complete("network", NETWORK_DONE)
    journal.complete("hostname", {"hostname": "kura01"})
    journal.complete("time", {})
    journal.complete("role", {})
    Wizard(system, Terminal(infd, out), journal).step_tls()
    text = out.getvalue()
    assert "[retry] the private key does not match the certificate" in text
    installed = (system.root / "etc/kura/tls/cert.pem").read_bytes()
    assert installed == (tmp_path / "a.pem").read_bytes()
    key = system.root / "etc/kura/tls/key.pem"
    assert (key.stat().st_mode & 0o777, key.stat().st_uid) == (0o600, 991)
    assert Journal.load(system).next_step == "database"


def test_hosts_file_names_the_appliance() -> None:
    hosts = host.render_hosts("127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost\n",
                              "kura01.example.jp")
    assert hosts.splitlines()[:2] == ["127.0.0.1\tlocalhost", "127.0.1.1\tkura01.example.jp kura01"]
    assert "old" not in hosts


def test_every_message_in_both_languages_and_every_id_exists() -> None:
    for msg_id, (ja, en) in MESSAGES.items():
        assert ja and en, msg_id
        fields = sorted(re.findall(r"{(\w+)}", ja)), sorted(re.findall(r"{(\w+)}", en))
        assert fields[0] == fields[1], msg_id
    source = "\n".join(p.read_text() for p in
                       (Path(__file__).parent.parent / "firstboot/kura_firstboot").glob("*.py"))
    calls = r'\.(?:say|say_both|ask|choose|confirm|_ask_valid|_paste)\(\s*"([a-z_.]+)"'
    used = set(re.findall(calls, source))
    assert used and used <= set(MESSAGES), used - set(MESSAGES)
