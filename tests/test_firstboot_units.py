"""kura-tty@.service and kura-firstboot-auto.service verify cleanly offline
(systemd-analyze in a throw-away root with a stub kura-firstboot) and say
what the image relies on: the wizard on the terminal, after the unattended
run, in place of the login prompts; the unattended run only before the stamp,
with the kura.setup credential and its output on the console."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).parent.parent
UNITS = ("kura-tty@.service", "kura-firstboot-auto.service")
ANALYZE = shutil.which("systemd-analyze")
# Settings newer than the build host's systemd (Debian 12 has 252; the image 257).
NEWER = {"ImportCredential": 254}


def settings(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (TOP / "systemd" / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def host_systemd() -> int:
    assert ANALYZE is not None
    out = subprocess.run([ANALYZE, "--version"], capture_output=True, text=True, check=True)
    return int(re.search(r"systemd (\d+)", out.stdout).group(1))  # type: ignore[union-attr]


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_units_verify_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    if Path("/usr/lib/systemd/system").is_dir():
        shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    units.mkdir(parents=True, exist_ok=True)
    for unit in UNITS:
        shutil.copy(TOP / "systemd" / unit, units / unit)
    for name in ("kura-vault.service", "kura-console.service"):
        shutil.copy(TOP / "systemd" / name, units / name)
    (units / "postgresql.service").write_text("[Service]\nExecStart=/bin/true\n")
    stub = root / "usr/bin/kura-firstboot"
    stub.parent.mkdir(parents=True, exist_ok=True)
    for program in ("kura-firstboot", "kura-vault", "kura-console"):
        (root / "usr/bin" / program).write_text("#!/bin/sh\nexit 0\n")
        (root / "usr/bin" / program).chmod(0o755)
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "verify", f"--root={root}", "--man=no", "--generators=no",
         "/usr/lib/systemd/system/kura-tty@tty1.service",
         "/usr/lib/systemd/system/kura-firstboot-auto.service"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    version = host_systemd()
    messages = [
        line for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and not any(
            f"Unknown key '{key}'" in line and version < since
            for key, since in NEWER.items())
    ]
    assert messages == []


def test_tty_unit_replaces_the_login_prompt_after_the_unattended_run() -> None:
    tty = settings("kura-tty@.service")
    assert tty["ExecStart"] == ["/usr/bin/kura-firstboot tty"]
    assert tty["StandardInput"] == ["tty"] and tty["TTYPath"] == ["/dev/%I"]
    assert tty["Restart"] == ["always"]
    assert tty["Conflicts"] == ["getty@%i.service serial-getty@%i.service"]
    after = " ".join(tty["After"])
    assert "kura-firstboot-auto.service" in after and "systemd-user-sessions.service" in after
    assert tty["WantedBy"] == ["getty.target"]


def test_auto_unit_runs_before_the_terminals_and_only_once() -> None:
    auto = settings("kura-firstboot-auto.service")
    assert auto["ExecStart"] == ["/usr/bin/kura-firstboot auto"]
    assert auto["Type"] == ["oneshot"]
    assert auto["ConditionPathExists"] == ["!/var/lib/kura/firstboot.done"]
    assert auto["ImportCredential"] == ["kura.setup"]
    assert auto["StandardOutput"] == ["journal+console"]
    assert "kura-tty@tty1.service kura-tty@ttyS0.service" in auto["Before"]
    # The wizard starts kura-vault itself: ordering the vault after this unit
    # would make that start wait for the wizard, forever.
    assert "kura-vault.service" not in " ".join(auto.get("Before", []) + auto.get("Wants", []))
