"""The QEMU harness itself, on the UEFI firmware alone: no Kura image needed.

OVMF with a blank disk finds nothing to boot, says so on the serial port ("BdsDxe: ...")
and drops into the UEFI shell there, which is enough to check what the image tests rely
on: the console is read and typed into, the TPM is attached and answers, QMP works, a
power-off and a second power-on keep the machine's state, and no process is left behind.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vm import QEMU_IMG, VM, ConsoleTimeout, VMError, probe_kvm, run, strip_ansi

VMFactory = Callable[..., VM]  # the vm_factory fixture


def blank_disk(path: Path) -> Path:
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(path), "16M"])
    return path


def boot_to_shell(machine: VM) -> None:
    machine.start()
    machine.expect(r"BdsDxe", timeout=60)
    # "Press ESC in 5 seconds to skip startup.nsh": pressing ESC skips the wait, and is
    # the first proof that what we type reaches the guest.
    machine.expect(r"Press ESC in \d+ seconds", timeout=30)
    machine.console.send(b"\x1b")
    machine.expect(r"Shell> ", timeout=30)


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_firmware_console_tpm_and_power_cycle(vm_factory: VMFactory, tmp_path: Path) -> None:
    base = blank_disk(tmp_path / "blank.qcow2")
    base_digest = hashlib.sha256(base.read_bytes()).hexdigest()
    machine = vm_factory(base, memory_mib=256, guest_ports=[22])
    machine.credential("kura.setup", b"role = 'single'\n")  # qemu must accept the SMBIOS option

    boot_to_shell(machine)
    machine.send("echo kura-harness")
    machine.expect(r"^kura-harness$", timeout=20)  # the shell's output, not our echoed line

    tpm = machine.qmp.execute("query-tpm")
    assert [(t["model"], t["options"]["type"]) for t in tpm] == [("tpm-tis", "emulator")]
    # The firmware started the TPM and measured the boot: swtpm wrote its state.
    assert (machine.tpm_dir / "tpm2-00.permall").is_file()
    assert machine.qmp.execute("query-status")["status"] == "running"
    assert machine.host_port(22) != machine.host_port(443)

    # A clean power-off from inside the guest ends qemu with code 0.
    machine.send("reset -s")
    assert machine.wait(timeout=30) == 0
    assert not machine.running
    tpm_state = (machine.tpm_dir / "tpm2-00.permall").read_bytes()

    # Power on again: same overlay, EFI variables and TPM; the console continues.
    boot_to_shell(machine)
    with pytest.raises(ConsoleTimeout, match=r"(?s)no match for /never printed/.*Shell>"):
        machine.expect(r"never printed", timeout=0.5)
    assert (machine.tpm_dir / "tpm2-00.permall").read_bytes()[:64] == tpm_state[:64]

    # The UEFI shell ignores the ACPI power button: shutdown() gives up and stops qemu.
    started = time.monotonic()
    assert machine.shutdown(timeout=2) is False
    assert time.monotonic() - started < 15

    assert len(machine.qemu_pids) == 2 and len(machine.swtpm_pids) == 2
    assert all(gone(pid) for pid in machine.qemu_pids + machine.swtpm_pids)
    assert hashlib.sha256(base.read_bytes()).hexdigest() == base_digest  # never written
    log = machine.serial_log.read_text(errors="replace")
    assert log.count("UEFI Interactive Shell") == 2
    with pytest.raises(VMError, match="not running"):
        machine.send("echo too late")


def test_kill_leaves_no_process(vm_factory: VMFactory, tmp_path: Path) -> None:
    machine = vm_factory(blank_disk(tmp_path / "blank.qcow2"), memory_mib=256)
    with machine:
        machine.start()
        machine.expect(r"BdsDxe", timeout=60)
    assert not machine.running
    assert all(gone(pid) for pid in machine.qemu_pids + machine.swtpm_pids)


def test_kvm_probe_is_quick_and_cached() -> None:
    first = probe_kvm()
    assert first.seconds < 15
    assert first.reason
    assert probe_kvm() is first


def test_console_text_has_no_escape_codes() -> None:
    raw = "\x1b[2J\x1b[01;01H\x1b[=3h\x1b[1m\x1b[33m\x1b[40mShell> \x1b[0m\r\n"
    assert strip_ansi(raw) == "Shell> \n"


def test_credential_names_are_checked(tmp_path: Path) -> None:
    machine = VM(tmp_path / "none.qcow2", tmp_path / "state", accel="tcg")
    with pytest.raises(VMError, match="credential name"):
        machine.credential("kura,setup", b"x")
    with pytest.raises(VMError, match="no disk image"):
        machine.start()


def test_a_rebuilt_image_is_not_booted_under_an_old_disk(vm_factory: VMFactory,
                                                          tmp_path: Path) -> None:
    base = blank_disk(tmp_path / "image.qcow2")
    with vm_factory(base, memory_mib=128) as first:
        first.start()
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(base), "32M"])  # "rebuilt", other bytes
    again = vm_factory(base, memory_mib=128)  # same state folder: the same machine
    with pytest.raises(VMError, match="not the image this machine's disk"):
        again.start()
    assert not again.running
    again.reset_state()
    again.start()
    assert again.qmp.execute("query-status")["status"] in ("running", "prelaunch")
    again.close()
