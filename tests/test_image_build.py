"""The image builder's pieces, on small inputs: the same inputs give the same
bytes, and the disk has the partitions the appliance mounts by name.

The whole image is built once per CI run by ./build.sh test (and booted by
tests/image/); `./build.sh verify-repro` compares two full builds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP / "image"))

import build  # noqa: E402  (image/build.py, a script)

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.vfat", "mcopy", "sfdisk")),
    reason="image tools not installed (./build.sh test installs them)",
)
SDE = 1_700_000_000


@pytest.fixture(scope="module")
def trixie_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """trixie's mke2fs and libraries, unpacked from the image build's package cache
    (./build.sh test builds the image, and so fills the cache, before pytest)."""
    debs = []
    for name in ("e2fsprogs", "libext2fs2t64", "libcom-err2", "libblkid1", "libuuid1", "libc6"):
        found = sorted(build.CACHE.glob(f"archives/{name}_*.deb"))
        if not found:
            pytest.skip(f"no {name} package in {build.CACHE}: build the image first")
        debs.append(found[-1])
    tools = tmp_path_factory.mktemp("trixie-tools")
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tools)], check=True)
    return tools


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_tree(base: Path) -> Path:
    root = base / "tree"
    (root / "etc/kura").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/kura/kura.toml").write_text("appliance = 'kura'\n")
    (root / "usr/bin/tool").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "usr/bin/tool", 0o755)  # noqa: S103 (an executable, as in the image)
    (root / "etc/link").symlink_to("kura/kura.toml")
    build.clamp_times(root, SDE)
    return root


def test_fixed_uuids_are_stable_and_distinct() -> None:
    assert build.fixed_uuid("partition:root") == build.fixed_uuid("partition:root")
    names = ["disk", *(f"partition:{p}" for p in build.GPT_TYPES), "filesystem:kura-data"]
    assert len({build.fixed_uuid(n) for n in names}) == len(names)


def test_clamp_times_never_leaves_a_time_after_the_commit(tmp_path: Path) -> None:
    root = sample_tree(tmp_path)
    (root / "new").write_text("made by a maintainer script now")
    build.clamp_times(root, SDE)
    for p in [root, *root.rglob("*")]:
        assert os.lstat(p).st_mtime <= SDE, p


@needs_tools
def test_ext4_from_a_tree_is_bit_identical_across_builds(tmp_path: Path,
                                                         trixie_tools: Path) -> None:
    tree = sample_tree(tmp_path)
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    build.mkfs_ext4(a, "kura-root", 16, SDE, tree, trixie_tools)
    # A second build, later: the files' ctime and atime have moved on meanwhile.
    time.sleep(1.1)
    for p in tree.rglob("*"):
        if not p.is_symlink():
            p.chmod(p.lstat().st_mode & 0o7777)  # a new ctime
    build.mkfs_ext4(b, "kura-root", 16, SDE, tree, trixie_tools)
    assert digest(a) == digest(b)
    # ... and carries the content, label and fixed UUID.
    info = subprocess.run(["dumpe2fs", "-h", str(a)], capture_output=True, text=True).stdout
    assert "kura-root" in info
    assert build.fixed_uuid("filesystem:kura-root") in info
    listing = subprocess.run(["debugfs", "-R", "cat /etc/kura/kura.toml", str(a)],
                             capture_output=True, text=True).stdout
    assert "appliance = 'kura'" in listing


@needs_tools
def test_esp_is_bit_identical_and_boots_systemd_boot_by_default(tmp_path: Path) -> None:
    efi = tmp_path / "efi"
    efi.mkdir()
    (efi / "systemd-bootx64.efi").write_bytes(b"MZ" + b"\0" * 4094)
    (efi / "kura.efi").write_bytes(b"MZ" + b"\1" * 8190)
    (efi / "loader.conf").write_text("timeout 0\n")
    build.clamp_times(efi, SDE)
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    build.make_esp(a, efi, SDE)
    time.sleep(1.1)
    build.make_esp(b, efi, SDE)
    assert digest(a) == digest(b)
    listing = subprocess.run(["mdir", "-i", str(a), "-/", "-b", "::/"], capture_output=True,
                             text=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    for name in ("EFI/BOOT/BOOTX64.EFI", "EFI/Linux/kura.efi", "loader/loader.conf"):
        assert name.lower() in listing.lower(), listing


@needs_tools
def test_disk_has_the_four_named_partitions_at_aligned_offsets(tmp_path: Path) -> None:
    parts = []
    for name, mib in (("esp", 2), ("root", 3), ("kura-keys", 1), ("kura-data", 2)):
        img = tmp_path / f"{name}.img"
        size = mib << 20
        img.write_bytes(name.encode() * (size // len(name)) + b"\0" * (size % len(name)))
        parts.append(build.Part(name, img, mib))
    disk = tmp_path / "disk.raw"
    build.assemble(disk, parts)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    assert table["id"].lower() == build.fixed_uuid("disk")
    got = [(p["name"], p["type"].upper(), p["uuid"].lower()) for p in table["partitions"]]
    assert got == [(p.name, build.GPT_TYPES[p.name], build.fixed_uuid("partition:" + p.name))
                   for p in parts]
    with disk.open("rb") as f:
        for p, entry in zip(parts, table["partitions"], strict=True):
            assert entry["start"] % 2048 == 0
            f.seek(entry["start"] * 512)
            assert f.read(len(p.name)) == p.name.encode()
    again = tmp_path / "again.raw"
    build.assemble(again, parts)
    assert digest(disk) == digest(again)


def test_lock_must_cover_every_wanted_package(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "packages.lock"
    lock.write_text("# header\nsystemd 257.13-1\n")
    monkeypatch.setattr(build, "LOCK", lock)
    with pytest.raises(build.BuildError, match="image-lock"):
        build.read_lock()


def test_the_committed_lock_pins_every_package_of_packages_txt() -> None:
    pins = build.read_lock()
    assert all("=" in p and p.split("=", 1)[1] for p in pins)
    names = {p.split("=", 1)[0] for p in pins}
    assert set(build.wanted_packages()) <= names
    # Every Python dependency of the kura package comes from Debian.
    # psycopg's C implementation is only a Recommends, which the build skips: named.
    for dep in ("python3-cryptography", "python3-aiohttp", "python3-psycopg", "python3-psycopg-c",
                "python3-jinja2",
                "python3-passlib", "python3-pyroute2", "python3-pyudev", "python3-sdnotify"):
        assert dep in names


def test_mirrors_come_from_the_hosts_apt_sources(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KURA_MIRROR", raising=False)
    monkeypatch.delenv("KURA_SECURITY_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# old style\ndeb [arch=amd64] http://mirror.invalid/debian/ bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    (tmp_path / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: https://vendor.invalid/apt\nSuites: stable\n")
    assert build.mirrors(tmp_path) == ("http://mirror.invalid/debian",
                                       "http://security.invalid/debian-security")
    # An explicit mirror wins; no Debian mirror at all is a clear error.
    monkeypatch.setenv("KURA_MIRROR", "http://chosen.invalid/debian")
    assert build.mirrors(tmp_path)[0] == "http://chosen.invalid/debian"
    monkeypatch.delenv("KURA_MIRROR")
    with pytest.raises(build.BuildError, match="KURA_MIRROR"):
        build.mirrors(tmp_path / "nothing")


def test_build_refuses_a_host_without_a_real_dev_null(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(build.Path, "is_char_device", lambda self: False)
    with pytest.raises(build.BuildError, match="/dev/null"):
        build.check_host(tmp_path)


def test_provisioning_installs_and_enables_every_unit_of_the_repository() -> None:
    sys.path.insert(0, str(TOP / "provisioning"))
    import provision

    units = {p.name for p in (TOP / "systemd").glob("*.service")} - set(provision.ENDPOINT_ONLY)
    enabled = {re.sub(r"@.+\.service$", "@.service", u) for u in provision.ENABLE
               if u.startswith("kura")}
    by_role = set(provision.BY_ROLE)
    assert not enabled & by_role, "a role's unit is enabled on every appliance"
    assert not (enabled | by_role) & set(provision.ENDPOINT_ONLY), "an endpoint unit on the image"
    assert enabled | by_role == units, \
        "a unit in systemd/ is neither enabled on the image nor left to first boot (or vice versa)"
    # The consoles belong to kura-tty@: no login prompt on tty1 or the serial port.
    assert {"getty@tty1.service", "serial-getty@ttyS0.service"} <= set(provision.MASK)
    assert {"kura-tty@tty1.service", "kura-tty@ttyS0.service"} <= set(provision.ENABLE)


def test_image_fstab_mounts_keys_and_data_by_label_without_exec() -> None:
    fstab = (TOP / "provisioning/files/etc/fstab").read_text()
    rows = {f[1]: f for f in (line.split() for line in fstab.splitlines())
            if f and not f[0].startswith("#")}
    assert rows["/var/lib/kura-keys"][0] == "LABEL=kura-keys"
    assert rows["/var/lib/postgresql"][0] == "LABEL=kura-data"
    for mount in ("/var/lib/kura-keys", "/var/lib/postgresql"):
        assert {"nosuid", "nodev", "noexec"} <= set(rows[mount][3].split(","))
    assert "x-systemd.growfs" in rows["/var/lib/postgresql"][3]
