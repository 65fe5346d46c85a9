"""kura-agent's systemd units (installed by its .deb on endpoints, never on
the appliance image): they verify cleanly offline, stay within their exposure
limits, keep only CAP_NET_ADMIN, and the restore unit runs before the network.
The same offline checks as tests/test_units.py; see docs/units.md."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.test_units import STOCK_UNITS, analyze, needs_analyze, settings

TOP = Path(__file__).parent.parent
UNITS = ("kura-agent.service", "kura-agent-restore.service")
# It must hold CAP_NET_ADMIN on the host's network and run as root (usbguard's
# IPC), like kura-hasync; the restore unit needs no TCP at all.
LIMITS = {"kura-agent.service": 2.5, "kura-agent-restore.service": 2.0}


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_exposure_is_within_the_limit(unit: str) -> None:
    done = analyze("security", "--offline=true", "--no-pager", str(TOP / "systemd" / unit))
    assert done.returncode == 0, done.stderr
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", done.stdout)
    assert match, done.stdout[-500:]
    assert float(match.group(1)) <= LIMITS[unit], done.stdout


def fake_root(base: Path, *, with_program: bool = True) -> Path:
    root = base / "root"
    units = root / "usr/lib/systemd/system"
    if STOCK_UNITS.is_dir():
        shutil.copytree(STOCK_UNITS, units, symlinks=True)
    units.mkdir(parents=True, exist_ok=True)
    local = root / "etc/systemd/system"
    local.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(TOP / "systemd" / unit, local / unit)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    if with_program:
        stub = root / "usr/bin/kura-agent"
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


@needs_analyze
def test_units_verify_cleanly(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    done = analyze("verify", f"--root={root}", "--man=no", "--generators=no",
                   *(f"/etc/systemd/system/{unit}" for unit in UNITS))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    broken = analyze("verify", f"--root={fake_root(tmp_path / 'b', with_program=False)}",
                     "--man=no", "--generators=no", "/etc/systemd/system/kura-agent.service")
    assert "/usr/bin/kura-agent" in broken.stderr  # the check can fail


def test_only_cap_net_admin_and_restore_before_the_network() -> None:
    run, restore = settings("kura-agent.service"), settings("kura-agent-restore.service")
    for unit in (run, restore):
        assert unit["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
        assert unit["NoNewPrivileges"] == ["yes"]
        assert unit["ProtectSystem"] == ["strict"]
    assert run["Type"] == ["notify"] and run["WatchdogSec"] == ["60"]
    assert run["ExecStart"] == ["/usr/bin/kura-agent run"]
    assert run["StateDirectory"] == ["kura-agent"]
    assert run["StateDirectoryMode"] == ["0700"], "the key's directory stays private"
    assert restore["DefaultDependencies"] == ["no"]
    assert restore["Type"] == ["oneshot"]
    assert restore["ExecStart"] == ["/usr/bin/kura-agent restore"]
    assert "network-pre.target" in restore["Before"][0].split()
    assert restore["Wants"] == ["network-pre.target"]
    assert restore["After"] == ["local-fs.target"]


def test_not_on_the_appliance_image() -> None:
    """The agent is for endpoints: the image's provisioning neither enables
    nor installs its units."""
    sys.path.insert(0, str(TOP / "provisioning"))
    import provision

    assert set(UNITS) == set(provision.ENDPOINT_ONLY)
    assert not set(UNITS) & (set(provision.ENABLE) | set(provision.BY_ROLE))
