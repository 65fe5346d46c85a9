"""The wizard end to end on a fake root, driven like the serial console: a
tag, an answer. Only what cannot run here is stood in for (systemctl,
pg_createcluster and networkd, see firstboot_support); the network is
verified on a real link, the seal is really made, and a real kura-vault on a
real PostgreSQL is unsealed with the shares and makes the first DA.

A power cut while the shares are shown is simulated by hanging up: the next
run resumes at the seal, says the shares cannot be shown again, and remakes
the seal. Passwords never reach the journal, the commands or the screen;
shares reach only the terminal."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kura import config
from kura.devserver import free_port
from kura.pgcluster import Cluster
from kura.vault import schema
from kura_firstboot import main
from kura_firstboot.system import System
from kura_firstboot.wizard import Timeouts
from tests.firstboot_support import (
    FakeRootSystem,
    Lan,
    Networkd,
    Recorder,
    SerialLine,
    VaultProcess,
    make_lan,
    make_system,
    reset_database,
    run_in_thread,
)

PASSWORD = "Kura-first-DA-2026"
FAST = Timeouts(static=5, dhcp=5, confirm=1, vault=30)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="kura-firstboot-"))
    os.chmod(base, 0o755)  # noqa: S103 (the postgres user must reach its cluster)
    db = Cluster(base / "db", free_port())
    db.create()
    schema.migrate(db.dsn("kura_owner"))
    yield db
    db.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    yield from make_lan("f")


@pytest.fixture
def appliance(
    tmp_path: Path, cluster: Cluster, lan: Lan
) -> Iterator[tuple[FakeRootSystem, Recorder, VaultProcess]]:
    reset_database(cluster)
    system, recorder = make_system(tmp_path)
    system.owner_dsn = cluster.dsn("kura_owner")
    vault = VaultProcess(system.root, cluster.dsn("kura_vault"))
    for verb in ("start", "restart"):
        recorder.hooks[("systemctl", verb, "kura-vault.service")] = vault.start
    recorder.hooks[("systemctl", "stop", "kura-vault.service")] = vault.stop
    recorder.hooks[("systemctl", "restart", "systemd-networkd.service")] = Networkd(
        system.root, lan)
    yield system, recorder, vault
    vault.stop()


def state(system: System) -> str:
    return (system.root / "var/lib/kura/firstboot/state.json").read_text()


def set_up_network(serial: SerialLine, lan: Lan, confirm: bool) -> None:
    serial.expect("network.interface")
    serial.send(lan.ifname)
    serial.expect("network.mode")
    serial.send("static")
    serial.expect("network.address")
    serial.send(lan.address)
    serial.expect("network.gateway")
    serial.send(lan.gateway)
    serial.expect("network.dns")
    serial.send("")
    assert "198.51.100.10" in serial.expect("network.works")
    serial.expect("network.confirm")
    if confirm:
        serial.send("yes")


def read_share(serial: SerialLine) -> str:
    line = serial.expect("seal.share")
    return line.split(" ", 2)[2]


def test_interactive_setup_resume_and_factory_reset(
    appliance: tuple[FakeRootSystem, Recorder, VaultProcess], lan: Lan
) -> None:
    system, recorder, _ = appliance

    # --- first session: cut off while the shares are being shown ---------------
    serial = SerialLine()
    thread, result = run_in_thread(
        lambda: main.run_tty(system, serial.infd, serial.out, "vt220", "ttyS0", FAST))
    assert "1: 日本語" in serial.expect("language")
    serial.send("2")
    assert "Step 1/10" in serial.expect("step")
    set_up_network(serial, lan, confirm=False)  # nobody confirms within the time
    serial.expect("network.timeout")
    assert "元に戻しました" in serial.expect("network.reverted")
    assert "was reverted" in serial.expect("network.reverted")
    set_up_network(serial, lan, confirm=True)
    serial.expect("hostname")
    serial.send("kura_01")  # refused, asked again
    serial.expect("retry")
    serial.expect("hostname")
    serial.send("kura01")
    serial.expect("time.zone")
    serial.send("")
    serial.expect("time.ntp")
    serial.send("ntp.nict.jp")
    serial.expect("role")
    serial.send("single")
    serial.expect("tls.mode")
    serial.send("")
    serial.expect("tls.fingerprint")
    serial.expect("database.working")
    serial.expect("seal.no_tpm")
    serial.expect("seal.count")
    serial.send("3")
    serial.expect("seal.threshold")
    serial.send("2")
    serial.expect("seal.shares_custodian")
    lost_share = read_share(serial)
    serial.expect("seal.share.confirm")
    serial.hang_up()  # the power goes
    thread.join(30)
    assert result == [0]
    journal = json.loads(state(system))
    assert journal["next"] == "seal" and journal["pending"]["seal"]["made"] is True
    assert lost_share not in state(system)

    # --- second session: resumes at the seal, remakes it, finishes -----------------
    serial = SerialLine()
    thread, result = run_in_thread(
        lambda: main.run_tty(system, serial.infd, serial.out, "vt220", "ttyS0", FAST))
    serial.expect("language")
    serial.send("en")
    assert "Step 7/10" in serial.expect("step")
    assert "二度と表示できません" in serial.expect("seal.unconfirmed")
    assert "cannot be shown again" in serial.expect("seal.unconfirmed")
    serial.expect("seal.existing")
    serial.send("remake")
    serial.expect("seal.forgotten")
    serial.expect("seal.count")
    serial.send("3")
    serial.expect("seal.threshold")
    serial.send("2")
    serial.expect("seal.shares_custodian")
    shares = []
    for number in (1, 2, 3):
        share = read_share(serial)
        assert "seal.share.confirm" in serial.expect("seal.share.confirm")
        if number == 1:  # not written down yet: shown again
            serial.send("no")
            serial.expect("seal.share.again")
            assert read_share(serial) == share
            serial.expect("seal.share.confirm")
        serial.send("yes")
        shares.append(share)
    assert len(set(shares)) == 3 and lost_share not in shares
    assert all(len(share.split()) == 33 for share in shares)  # SLIP-39, 256 bits
    serial.expect("seal.shares_done")
    serial.expect("vault.starting")
    serial.expect("vault.open", timeout=60)  # unsealed with the shares just made
    serial.expect("admin.username")
    serial.send("")
    serial.expect("admin.password")
    serial.send(PASSWORD)
    serial.expect("admin.password.again")
    serial.send(PASSWORD + "x")
    serial.expect("admin.password.mismatch")
    serial.expect("admin.password")
    serial.send(PASSWORD)
    serial.expect("admin.password.again")
    serial.send(PASSWORD)
    serial.expect("admin.made")
    serial.expect("finish.done")
    assert "https://198.51.100.10/" in serial.expect("status.url")
    fingerprint = serial.expect("status.fingerprint").split()[-1]
    serial.expect("status.vault.open")
    serial.expect("menu")

    # What the appliance now holds.
    journal = json.loads(state(system))
    assert journal["next"] is None and journal["answers"]["role"]["role"] == "single"
    assert journal["answers"]["tls"]["fingerprint"] == fingerprint
    assert (system.root / "var/lib/kura/firstboot.done").exists()
    assert (system.root / "etc/kura/role").read_text() == "single\n"
    cfg = config.parse(__import__("tomllib").loads(
        (system.root / "etc/kura/kura.toml").read_text()))
    assert cfg.appliance == "kura01"
    assert cfg.vault.allowed_uids == {0, 991, 992} and cfg.console.port == 443
    assert "policy_uids = [992]" in (system.root / "etc/kura/kura.toml").read_text()
    assert (cfg.policy.listen, cfg.policy.port) == ("0.0.0.0", 8445)  # noqa: S104
    assert cfg.database.dsn == "host=/run/postgresql dbname=kura user=kura_vault"
    assert (system.root / "etc/kura/kura.toml").stat().st_mode & 0o777 == 0o640
    assert (system.root / "etc/kura/tls/key.pem").stat().st_mode & 0o777 == 0o600
    assert (system.root / "etc/kura/tls/key.pem").stat().st_uid == 991
    assert (system.root / "etc/systemd/network/10-kura-" f"{lan.ifname}.network").exists()
    assert (system.root / "etc/hostname").read_text() == "kura01\n"
    commands = recorder.commands()
    assert ("pg_createcluster 17 main -- --auth-local=peer --auth-host=scram-sha-256 "
            "--data-checksums") in commands
    assert "systemctl restart postgresql@17-main.service" in commands
    assert "systemctl start kura-console.service" in commands
    assert "systemctl start kura-policy.service" in commands
    # kura.toml was new: the vault is (re)started to read it, before the console.
    assert commands.index("systemctl start kura-console.service") > commands.index(
        "systemctl restart kura-vault.service")
    assert "systemctl daemon-reload" not in commands  # custodian seal: no TPM drop-in
    login = system.vault_call("login", {"username": "admin", "password": PASSWORD})
    assert login["role"] == "DA" and login["must_change_password"] is True

    # No secret where it does not belong.
    for secret in (PASSWORD, *shares, lost_share):
        assert secret not in state(system)
        assert secret not in recorder.everything()
    assert PASSWORD not in serial.text

    # --- factory reset from the status screen --------------------------------------------
    serial.send("reset")
    serial.expect("reset.username")
    serial.send("admin")
    serial.expect("reset.password")
    serial.send("wrong-Password-1")
    assert "[error]" in serial.expect("error")
    serial.expect("menu")
    serial.send("reset")
    serial.expect("reset.username")
    serial.send("admin")
    serial.expect("reset.password")
    serial.send(PASSWORD)
    assert "ERASE" in serial.expect("reset.confirm")
    serial.send("ERASE")
    serial.expect("reset.working")
    thread.join(30)
    assert result == [0]
    assert recorder.commands()[-1] == "systemctl reboot"
    assert "pg_dropcluster --stop 17 main" in recorder.commands()
    for gone in ("var/lib/kura/firstboot.done", "var/lib/kura/firstboot/state.json",
                 "etc/kura", "var/lib/kura-keys/seal.json"):
        assert not (system.root / gone).exists(), gone
    assert PASSWORD not in serial.text


def test_unattended_setup_from_a_credential(
    appliance: tuple[FakeRootSystem, Recorder, VaultProcess], lan: Lan, tmp_path: Path
) -> None:
    system, recorder, _ = appliance
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "kura.setup").write_text(f"""
[network]
interface = "{lan.ifname}"
mode = "static"
address = "{lan.address}"
gateway = "{lan.gateway}"
[host]
hostname = "kura-auto"
[seal]
mode = "custodian"
threshold = 2
shares = 3
[admin]
username = "firstda"
password = "{PASSWORD}"
""")
    out, console = io.StringIO(), io.StringIO()
    assert main.run_auto(system, creds, out, console, usb_wait=0) == 0, out.getvalue()
    progress, secret = out.getvalue(), console.getvalue()
    assert "[step] Step 10/10: finishing" in progress
    assert "[auto.done]" in progress and "[seal.shares_console] 3 shares" in progress
    shares = [line.split(" ", 2)[2] for line in secret.splitlines()
              if line.startswith("[seal.share] ")]
    assert len(shares) == 3
    for secret_text in (*shares, PASSWORD):
        assert secret_text not in progress  # the journal never sees them
        assert secret_text not in state(system)
        assert secret_text not in recorder.everything()
    assert json.loads(state(system))["next"] is None
    login = system.vault_call("login", {"username": "firstda", "password": PASSWORD})
    assert login["role"] == "DA"
    # Done: a second run does nothing.
    again = io.StringIO()
    assert main.run_auto(system, creds, again, io.StringIO(), usb_wait=0) == 0
    assert "[auto.already]" in again.getvalue()


def test_after_setup_the_terminal_shows_the_status_at_once(tmp_path: Path) -> None:
    """A terminal started after an unattended run shows the URL and the
    fingerprint without asking anything first (the image tests read them)."""
    system, _ = make_system(tmp_path)
    from kura_firstboot import certificate
    from kura_firstboot.journal import Journal

    journal = Journal.load(system)
    journal.complete("network", {"interface": "nonexistent0"})
    journal.complete("hostname", {"hostname": "kura01"})
    certificate.make_self_signed(system, ["kura01"])
    (system.root / "var/lib/kura/firstboot.done").write_text("done\n")
    serial = SerialLine()
    thread, result = run_in_thread(
        lambda: main.run_tty(system, serial.infd, serial.out, "vt220", "ttyS0", FAST))
    assert "https://kura01/" in serial.expect("status.url")
    assert re.search(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", serial.expect("status.fingerprint"))
    serial.expect("status.vault.down")
    serial.expect("menu")
    serial.send("language")
    serial.expect("language")
    serial.send("en")
    assert "Web console" in serial.expect("status.url")
    serial.expect("menu")
    serial.hang_up()
    thread.join(10)
    assert result == [0]
    assert serial.tags()[0] == "status.title"
