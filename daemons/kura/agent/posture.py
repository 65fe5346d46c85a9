"""What the agent reports of the endpoint's health: its OS, the security
updates it has not installed, and whether its root file system is encrypted.

Each function takes the paths it reads (a root directory, a command) so that
the tests feed it fixture trees instead of this host's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

APT_SIMULATE = ("apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade")


def os_release(root: Path = Path("/")) -> str:
    """PRETTY_NAME of /etc/os-release (or /usr/lib/os-release), "" if none."""
    for name in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "PRETTY_NAME":
                return value.strip().strip("\"'")
    return ""


def count_security_updates(simulation: str) -> int:
    """Packages an ``apt-get -s upgrade`` would install from a security
    origin: its ``Inst`` lines naming a ``-security`` suite."""
    return sum(1 for line in simulation.splitlines()
               if line.startswith("Inst ") and "-security" in line)


def security_updates(command: tuple[str, ...] = APT_SIMULATE) -> int | None:
    """Pending security updates, from apt's own simulation (no lock taken,
    nothing changed); None when apt is not there or fails."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return count_security_updates(done.stdout) if done.returncode == 0 else None


def _root_mount(mountinfo: str) -> tuple[str, str] | None:
    """``(major:minor, source)`` of the file system mounted on / (the last
    such mount wins)."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            after = fields[fields.index("-") + 1:] if "-" in fields else []
            found = (fields[2], after[1] if len(after) > 1 else "")
    return found


def _on_luks(name: str, sys_block: Path, seen: set[str]) -> bool:
    """Whether block device ``name`` is a LUKS mapping or sits on one
    (through device-mapper or md layers: LVM on LUKS, RAID on LUKS)."""
    if name in seen:
        return False
    seen.add(name)
    device = sys_block / name
    try:
        uuid = (device / "dm" / "uuid").read_text().strip()
    except OSError:
        uuid = ""
    if uuid.startswith("CRYPT-LUKS"):
        return True
    slaves = device / "slaves"
    return slaves.is_dir() and any(_on_luks(slave.name, sys_block, seen)
                                   for slave in sorted(slaves.iterdir()))


def _block_name(sys_block: Path, device: str, source: str) -> str | None:
    """The /sys/class/block entry of the root file system: by device number,
    or, where that is an anonymous one (btrfs reports 0:NN), by the mount's
    source (/dev/mapper/NAME is matched against dm/name, /dev/X against X)."""
    mapper = source.removeprefix("/dev/mapper/") if source.startswith("/dev/mapper/") else None
    for entry in sorted(sys_block.iterdir()):
        try:
            if (entry / "dev").read_text().strip() == device:
                return entry.name
            if mapper is not None and (entry / "dm/name").read_text().strip() == mapper:
                return entry.name
        except OSError:
            continue
    if source.startswith("/dev/") and (sys_block / source.removeprefix("/dev/")).exists():
        return source.removeprefix("/dev/")
    return None


def disk_encrypted(mountinfo: Path = Path("/proc/self/mountinfo"),
                   sys_block: Path = Path("/sys/class/block")) -> bool:
    """Whether / sits on dm-crypt with LUKS, following device-mapper slaves."""
    try:
        mount = _root_mount(mountinfo.read_text())
    except OSError:
        return False
    if mount is None or not sys_block.is_dir():
        return False
    name = _block_name(sys_block, *mount)
    return name is not None and _on_luks(name, sys_block, set())
