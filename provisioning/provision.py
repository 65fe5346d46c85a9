"""Turn a bare Debian trixie root into the Kura appliance.

    python3 provisioning/provision.py ROOT --wheel kura-*.whl --root-partuuid UUID

Run by image/build.py as mmdebstrap's customize hook (ROOT is the new root,
with /dev, /proc and /sys mounted for chroot). In order:

1. copy provisioning/files/ over the root (fstab, networkd default, sysctl,
   sysusers, tmpfiles, repart.d, journald);
2. install the kura wheel into /usr/lib/python3/dist-packages (Debian's own
   python3-* packages provide every dependency) and compile it to hash-based
   .pyc files, which do not depend on file times;
3. install the systemd units, create the users, enable the services and put
   kura-tty@ in place of the login prompts on tty1 and ttyS0;
4. remove what must not be shared between appliances or found on a stolen
   disk: machine-id, the snakeoil key, any PostgreSQL cluster, the build
   host's resolv.conf and hostname;
5. build the unified kernel image (ukify, from the trixie root itself) and
   leave it with systemd-boot in /usr/lib/kura-image for the ESP;
(image/build.py then clamps every file time to SOURCE_DATE_EPOCH.)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent
PURELIB = "usr/lib/python3/dist-packages"

# Units of the repository's systemd/ folder that the appliance enables.
ENABLE = [
    "kura-vault.service",
    "kura-console.service",
    "kura-policy.service",
    "kura-firstboot-auto.service",
    "kura-boot-report.service",
    "kura-tty@tty1.service",
    "kura-tty@ttyS0.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
]
# Installed but left disabled: first boot enables them for the role the admin
# chose (a primary or standby of an HA pair runs kura-hasync and the keeper, a
# witness runs pg_auto_failover's monitor).
BY_ROLE = ["kura-hasync.service", "kura-keeper.service", "kura-witness.service"]
# Not for the appliance at all: kura-agent's Debian package installs these on
# clerk PCs and business servers (docs/agents.md); the image leaves them out.
ENDPOINT_ONLY = ["kura-agent.service", "kura-agent-restore.service"]
# No login prompt anywhere: the consoles belong to kura-tty@ (wizard, then status).
MASK = ["getty@tty1.service", "serial-getty@ttyS0.service", "console-getty.service"]
CMDLINE = "root=PARTUUID={partuuid} ro rootwait console=tty1 console=ttyS0,115200 panic=10"


def say(msg: str) -> None:
    print(f"      provision: {msg}", flush=True)


def run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"provision: {argv[0]} failed (exit {proc.returncode})")


def chroot(root: Path, *argv: str) -> None:
    run(["chroot", str(root), *argv])


def copy_tree(src: Path, root: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        dest = root / rel
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            os.chmod(dest, 0o755 if os.access(path, os.X_OK) else 0o644)


def install_wheel(root: Path, wheel: Path) -> None:
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    scheme = {
        "purelib": f"/{PURELIB}",
        "platlib": f"/{PURELIB}",
        "scripts": "/usr/bin",
        "data": "/usr",
        "headers": "/usr/include/python3",
    }
    dest = SchemeDictionaryDestination(
        scheme, interpreter="/usr/bin/python3", script_kind="posix", destdir=str(root)
    )
    with WheelFile.open(wheel) as source:
        install(source, dest, {"INSTALLER": b"kura-image"})
    packages = sorted(
        p.name for p in (root / PURELIB).iterdir() if p.name.startswith("kura") and p.is_dir()
        and not p.name.endswith("-info")
    )
    chroot(root, "python3", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
           *[f"/{PURELIB}/{name}" for name in packages])
    say(f"installed {wheel.name}: {', '.join(packages)}")


def install_webui(root: Path) -> None:
    """The console's templates, static files and message catalogs."""
    dest = root / "usr/share/kura/webui"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(TOP / "webui", dest, ignore=shutil.ignore_patterns("__pycache__", "*.mo"))
    for path in dest.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    say(f"installed the web console's files in /{dest.relative_to(root)}")


def install_units(root: Path) -> None:
    units = root / "usr/lib/systemd/system"
    for unit in sorted((TOP / "systemd").glob("*.service")):
        if unit.name in ENDPOINT_ONLY:
            continue
        shutil.copyfile(unit, units / unit.name)
        os.chmod(units / unit.name, 0o644)
    dropin = root / "usr/share/kura/seal-creds"
    dropin.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TOP / "systemd/seal-creds/kura-vault.service.d/50-seal-creds.conf",
                    dropin / "50-seal-creds.conf")
    chroot(root, "systemd-sysusers")
    chroot(root, "systemd-tmpfiles", "--create", "--prefix=/etc/kura", "--prefix=/var/lib/kura")
    missing = [u for u in ENABLE if not (units / re.sub(r"@.+\.", "@.", u)).exists()]
    if missing:
        raise SystemExit(f"provision: units missing from systemd/: {', '.join(missing)}")
    run(["systemctl", f"--root={root}", "enable", *ENABLE])
    run(["systemctl", f"--root={root}", "mask", *MASK])
    say(f"enabled {len(ENABLE)} units, masked {', '.join(MASK)}")


def scrub(root: Path) -> None:
    """What must be made per appliance at first boot, or never be on the disk."""
    (root / "etc/machine-id").write_text("uninitialized\n")
    for rel in (
        "var/lib/dbus/machine-id",
        "etc/ssl/private/ssl-cert-snakeoil.key",
        "etc/ssl/certs/ssl-cert-snakeoil.pem",
        "etc/hostname",
        "etc/resolv.conf",
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
        "var/lib/dpkg/status-old",
        "var/lib/dpkg/diversions-old",
    ):
        p = root / rel
        if p.is_symlink() or p.exists():
            p.unlink()
    # No cluster from the build (kura-data is mounted over /var/lib/postgresql;
    # the wizard makes the cluster there), and no SSH host key if a package
    # ever brings an SSH server.
    for d in (root / "etc/postgresql", root / "var/lib/postgresql"):
        for child in d.iterdir() if d.exists() else []:
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/hostname").write_text("kura\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tkura\n::1\tlocalhost\n")
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    localtime = root / "etc/localtime"
    if localtime.is_symlink() or localtime.exists():
        localtime.unlink()
    localtime.symlink_to("/usr/share/zoneinfo/Asia/Tokyo")
    (root / "etc/timezone").write_text("Asia/Tokyo\n")
    for mnt in ("var/lib/kura-keys", "var/lib/postgresql", "efi"):
        (root / mnt).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "var/lib/kura-keys", 0o700)
    say("machine-id, snakeoil key, clusters and host files removed")


def build_uki(root: Path, partuuid: str) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise SystemExit(f"provision: expected one kernel in /boot, found {kernels}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    out = root / "usr/lib/kura-image"
    out.mkdir(parents=True, exist_ok=True)
    # Again, now that /etc/fstab is ours (the initrd checks the root with it).
    chroot(root, "update-initramfs", "-u", "-k", version)
    chroot(
        root, "ukify", "build",
        f"--linux=/boot/vmlinuz-{version}",
        f"--initrd=/boot/initrd.img-{version}",
        f"--cmdline={CMDLINE.format(partuuid=partuuid)}",
        "--os-release=@/etc/os-release",
        f"--uname={version}",
        "--output=/usr/lib/kura-image/kura.efi",
    )
    shutil.copyfile(root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                    out / "systemd-bootx64.efi")
    (out / "loader.conf").write_text("timeout 0\neditor no\nconsole-mode keep\n")
    # The kernel and initrd live inside the UKI; the copies in /boot are not needed.
    for f in (root / "boot").iterdir():
        if f.is_file() and f.name.startswith(("vmlinuz-", "initrd.img-", "System.map-", "config-")):
            f.unlink()
    say(f"unified kernel image for Linux {version}, {(out / 'kura.efi').stat().st_size >> 20} MiB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--wheel", required=True)
    p.add_argument("--root-partuuid", required=True)
    args = p.parse_args()
    root = Path(args.root)
    copy_tree(HERE / "files", root)
    install_wheel(root, Path(args.wheel))
    install_webui(root)
    install_units(root)
    scrub(root)
    build_uki(root, args.root_partuuid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
