"""Build Kura's appliance disk image: Debian trixie, UEFI + systemd-boot.

    python3 image/build.py build [--out out]    the image (what ./build.sh image runs)
    python3 image/build.py lock                  refresh image/packages.lock
    python3 image/build.py verify-repro          build twice, compare, name differences

Steps (each printed as it starts, with its time when it ends):

1. check the host (root, /dev/null, tools, free space);
2. build the kura wheel from the checkout (SOURCE_DATE_EPOCH = the last commit);
3. mmdebstrap a trixie root with exactly the versions in image/packages.lock,
   then provisioning/provision.py turns it into the appliance (files, units,
   users, the wheel, the unified kernel image);
4. make the partitions' filesystems without loop devices or mounts:
   mkfs.vfat --invariant + mtools for the ESP, mkfs.ext4 -d for the root,
   empty ext4 for kura-keys and kura-data (which grows at first boot);
5. lay them out on a GPT disk with sfdisk, convert to qcow2, write
   SHA256SUMS and the package list.

Every identifier (disk and partition GUIDs, filesystem UUIDs, ext4 hash
seeds) is derived from a fixed name, and every timestamp from
SOURCE_DATE_EPOCH, so the same commit and lock give the same bytes.

Needs only Debian's archive and PyPI. The mirror is read from the host's own
apt sources (override with KURA_MIRROR and KURA_SECURITY_MIRROR).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
LOCK = TOP / "image" / "packages.lock"
PACKAGES = TOP / "provisioning" / "packages.txt"
PROVISION = TOP / "provisioning" / "provision.py"
SUITE = "trixie"
CACHE = Path(os.environ.get("KURA_IMAGE_CACHE", "/var/cache/kura-image"))
IMAGE_NAME = "kura"

MiB = 1 << 20
# Partition sizes. The root's is computed from its content; kura-data grows
# to fill the disk at first boot (systemd-repart + x-systemd.growfs).
ESP_MIB = 256
KEYS_MIB = 16
DATA_MIB = 256
GPT_TYPES = {
    "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "root": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # root, x86-64
    "kura-keys": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",  # Linux filesystem
    "kura-data": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
}
_NS = uuid.UUID("6b757261-2d69-6d61-6765-000000000000")  # "kura-image"


def fixed_uuid(name: str) -> str:
    """A stable identifier for a disk, partition or filesystem of the image."""
    return str(uuid.uuid5(_NS, name))


ROOT_PARTUUID = fixed_uuid("partition:root")


class BuildError(Exception):
    """A step failed; the message says what to do."""


# -- output ----------------------------------------------------------------------


class Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.started = time.monotonic()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.n += 1
        print(f"\033[1m[{self.n}/{self.total}] {what}\033[0m", flush=True)
        t0 = time.monotonic()
        yield
        print(f"      done in {time.monotonic() - t0:.1f} s", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def run(argv: Sequence[str | Path], *, env: dict[str, str] | None = None,
        cwd: Path | None = None, quiet: bool = False) -> str:
    """Run a command; on failure raise with the tail of its output."""
    proc = subprocess.run(
        [str(a) for a in argv],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise BuildError(f"{Path(str(argv[0])).name} failed (exit {proc.returncode}):\n{tail}")
    if not quiet and proc.stdout.strip():
        for line in proc.stdout.splitlines()[-3:]:
            print(f"      {line}")
    return proc.stdout


# -- host --------------------------------------------------------------------------

HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "sfdisk": "fdisk",
    "qemu-img": "qemu-utils",
    "zstd": "zstd",
}


def check_host(out: Path) -> None:
    if os.geteuid() != 0:
        raise BuildError("the image is built as root (mmdebstrap, file ownership)")
    if not Path("/dev/null").is_char_device():
        raise BuildError(
            "/dev/null is not a character device on this host; apt would fail inside the "
            "build. Fix: rm -f /dev/null && mknod -m 666 /dev/null c 1 3"
        )
    if os.uname().machine != "x86_64":
        raise BuildError("the image is amd64 and is built on an x86_64 host")
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise BuildError(f"missing host packages: apt-get install {' '.join(sorted(set(missing)))}")
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    if free < 8 << 30:
        raise BuildError(f"only {free >> 20} MiB free under {out}; the build needs about 8 GiB")


def mirrors(apt_etc: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The Debian archive and security mirrors, read from the host's apt sources
    (one-line and deb822 formats) unless KURA_MIRROR / KURA_SECURITY_MIRROR say."""
    main = os.environ.get("KURA_MIRROR", "")
    security = os.environ.get("KURA_SECURITY_MIRROR", "")
    uris: list[str] = []
    for f in [apt_etc / "sources.list", *sorted((apt_etc / "sources.list.d").glob("*"))]:
        if not f.is_file() or f.suffix not in ("", ".list", ".sources"):
            continue
        for line in f.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("URIs:"):
                uris += line.split()[1:]
            elif line.startswith("deb "):
                uris += [w for w in line.split() if "://" in w][:1]
    for uri in uris:
        uri = uri.rstrip("/")
        if not main and uri.endswith("/debian"):
            main = uri
        if not security and uri.endswith("/debian-security"):
            security = uri
    if not main:
        raise BuildError("no Debian mirror in the host's apt sources; set KURA_MIRROR=URL")
    return main, security


def source_date_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    return int(run(["git", "-C", TOP, "log", "-1", "--format=%ct"], quiet=True).strip())


# -- the lock file -------------------------------------------------------------------


def wanted_packages() -> list[str]:
    names = []
    for line in PACKAGES.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def read_lock() -> list[str]:
    """``name=version`` for every package of the image."""
    if not LOCK.exists():
        raise BuildError(f"{LOCK.relative_to(TOP)} is missing; make it with ./build.sh image-lock")
    pins = []
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition(" ")
            pins.append(f"{name}={version.strip()}")
    missing = set(wanted_packages()) - {p.split("=", 1)[0] for p in pins}
    if missing:
        raise BuildError(
            f"packages.txt names {', '.join(sorted(missing))}, which the lock lacks; "
            "refresh it with ./build.sh image-lock"
        )
    return pins


def installed_packages(root: Path) -> list[str]:
    out = run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\n"],
        quiet=True,
    )
    return sorted(line for line in out.splitlines() if line.strip())


# -- the root filesystem ---------------------------------------------------------------


def mmdebstrap(root: Path, pins: list[str] | None, wheel: Path | None, sde: int) -> None:
    """Build the trixie root into ``root``: pinned (custom variant, the lock's
    exact versions) or, for a new lock, the newest versions of packages.txt."""
    main, security = mirrors()
    sources = [f"deb {main} {SUITE} main", f"deb {main} {SUITE}-updates main"]
    if security:
        sources.append(f"deb {security} {SUITE}-security main")
    archives = CACHE / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    argv: list[str | Path] = [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        "--architectures=amd64",
        "--aptopt=Acquire::Retries \"3\"",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/locale/ja/*",
        "--skip=essential/unlink",
        f"--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/ && "
        f"cp -a {archives}/. \"$1\"/var/cache/apt/archives/",
        # No PostgreSQL cluster at install time: the first boot makes it on kura-data.
        "--essential-hook=mkdir -p \"$1\"/etc/postgresql-common/createcluster.d && "
        "echo 'create_main_cluster = false' "
        "> \"$1\"/etc/postgresql-common/createcluster.d/kura.conf",
        f"--customize-hook=cp -a \"$1\"/var/cache/apt/archives/*.deb {archives}/ || true",
    ]
    if pins is None:
        argv += ["--variant=apt", f"--include={','.join(wanted_packages())}"]
    else:
        argv += ["--variant=custom", f"--include={','.join(pins)}"]
    if wheel is not None:
        argv.append(
            f"--customize-hook={sys.executable} {PROVISION} \"$1\" --wheel {wheel} "
            f"--root-partuuid {ROOT_PARTUUID}"
        )
    argv += [SUITE, root, *sources]
    env = {"SOURCE_DATE_EPOCH": str(sde), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    proc = subprocess.run([str(a) for a in argv], env={**os.environ, **env}, check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = root.parent / "mmdebstrap.log"
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        hint = ""
        if pins is not None and re.search(r"Version '.*' for '.*' was not found", proc.stdout):
            hint = ("\nA pinned version is no longer in the archive: refresh the lock with "
                    "./build.sh image-lock and commit it.")
        raise BuildError(f"mmdebstrap failed (full log: {log}):\n{tail}{hint}")


def build_wheel(work: Path, sde: int) -> Path:
    """A wheel of the checkout's tracked files (a clean copy, no stale build dirs)."""
    src = work / "src"
    files = run(["git", "-C", TOP, "ls-files", "-z"], quiet=True).split("\0")
    for name in filter(None, files):
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (TOP / name).is_file():
            shutil.copy2(TOP / name, target)
    dist = work / "wheel"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", dist, src],
        env={"SOURCE_DATE_EPOCH": str(sde)}, quiet=True)
    wheels = sorted(dist.glob("kura-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one kura wheel, found {[w.name for w in wheels]}")
    return wheels[0]


# -- filesystems and disk ----------------------------------------------------------------


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def clamp_times(root: Path, sde: int) -> None:
    """Files made by maintainer scripts and hooks carry the build's time."""
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if st.st_mtime > sde or st.st_atime > sde:
                os.utime(p, (sde, sde), follow_symlinks=False)
    os.utime(root, (sde, sde))


def mke2fs(tools: Path) -> list[str]:
    """trixie's mke2fs, run from a trixie tree (the image's own root) with its own
    loader and libraries. Unlike bookworm's 1.47.0, 1.47.2 clamps every inode
    time to SOURCE_DATE_EPOCH; the host's copies ctime and atime from the files,
    which differ between two builds."""
    loader = tools / "usr/lib64/ld-linux-x86-64.so.2"
    binary = tools / "usr/sbin/mke2fs"
    if not (loader.exists() and binary.exists()):
        raise BuildError(f"no trixie mke2fs under {tools}")
    return [str(loader), "--library-path", str(tools / "usr/lib/x86_64-linux-gnu"), str(binary),
            "-t", "ext4"]


def mkfs_ext4(image: Path, label: str, size_mib: int, sde: int, content: Path | None,
              tools: Path) -> None:
    if image.exists():
        image.unlink()
    with image.open("wb") as f:
        f.truncate(size_mib * MiB)
    fs_uuid = fixed_uuid(f"filesystem:{label}")
    argv: list[str | Path] = [
        *mke2fs(tools), "-q", "-F", "-L", label, "-U", fs_uuid,
        "-E", f"hash_seed={fixed_uuid('hash-seed:' + label)},lazy_itable_init=0,"
        "lazy_journal_init=0",
        "-b", "4096", "-I", "256", "-m", "1",
    ]
    if content is not None:
        argv += ["-d", content]
    argv.append(image)
    conf = tools / "etc/mke2fs.conf"
    run(argv, env={"E2FSPROGS_FAKE_TIME": str(sde), "SOURCE_DATE_EPOCH": str(sde),
                   "MKE2FS_CONFIG": str(conf)}, quiet=True)


def make_esp(image: Path, efi: Path, sde: int) -> None:
    """FAT32 ESP: systemd-boot as the default loader and Kura's UKI."""
    if image.exists():
        image.unlink()
    volid = fixed_uuid("filesystem:esp").replace("-", "")[:8]
    run(["mkfs.vfat", "--invariant", "-F", "32", "-i", volid, "-n", "ESP", "-C", image,
         str(ESP_MIB * 1024)], quiet=True)
    env = {"SOURCE_DATE_EPOCH": str(sde), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    for d in ("EFI", "EFI/BOOT", "EFI/systemd", "EFI/Linux", "loader"):
        run(["mmd", "-i", image, f"::/{d}"], env=env, quiet=True)
    for src, dest in (
        (efi / "systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI"),
        (efi / "systemd-bootx64.efi", "EFI/systemd/systemd-bootx64.efi"),
        (efi / "kura.efi", "EFI/Linux/kura.efi"),
        (efi / "loader.conf", "loader/loader.conf"),
    ):
        run(["mcopy", "-m", "-i", image, src, f"::/{dest}"], env=env, quiet=True)


@dataclass(frozen=True)
class Part:
    name: str
    image: Path
    mib: int


def assemble(disk: Path, parts: list[Part]) -> None:
    """A GPT disk with the partitions' images at 1 MiB-aligned offsets."""
    start = 1  # MiB
    lines = ["label: gpt", f"label-id: {fixed_uuid('disk')}", "unit: sectors", "first-lba: 2048"]
    placed = []
    for p in parts:
        lines.append(
            f"start={start * 2048}, size={p.mib * 2048}, type={GPT_TYPES[p.name]}, "
            f"uuid={fixed_uuid('partition:' + p.name)}, name=\"{p.name}\""
        )
        placed.append((p, start))
        start += p.mib
    total = (start + 1) * MiB  # room for the backup GPT
    if disk.exists():
        disk.unlink()
    with disk.open("wb") as f:
        f.truncate(total)
    proc = subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
                          input="\n".join(lines) + "\n", text=True, capture_output=True,
                          check=False)
    if proc.returncode != 0:
        raise BuildError(f"sfdisk failed: {proc.stderr.strip()}")
    with disk.open("r+b") as out:
        for p, offset in placed:
            out.seek(offset * MiB)
            with p.image.open("rb") as src:
                shutil.copyfileobj(src, out, 16 * MiB)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(16 * MiB), b""):
            h.update(block)
    return h.hexdigest()


# -- commands -------------------------------------------------------------------------


def build(out: Path, sde: int | None = None) -> Path:
    steps = Steps(6)
    sde = source_date_epoch() if sde is None else sde
    with steps.step("checking the host"):
        check_host(out)
        pins = read_lock()
        print(f"      SOURCE_DATE_EPOCH={sde}; {len(pins)} pinned packages; cache {CACHE}")
    work = Path(tempfile.mkdtemp(prefix="kura-image-", dir=out))
    try:
        with steps.step("building the kura wheel from the checkout"):
            wheel = build_wheel(work, sde)
            print(f"      {wheel.name}")
        root = work / "root"
        with steps.step(f"installing Debian {SUITE} and provisioning the appliance (mmdebstrap)"):
            mmdebstrap(root, pins, wheel, sde)
            clamp_times(root, sde)
            got = installed_packages(root)
            want = {p.replace("=", " ", 1) for p in pins}
            if set(got) != want:
                diff = sorted(set(got) ^ want)[:10]
                raise BuildError(f"the root does not match the lock: {diff}")
        with steps.step("making the filesystems (ESP, root, kura-keys, kura-data)"):
            efi = root / "usr/lib/kura-image"
            esp = work / "esp.img"
            make_esp(esp, efi, sde)
            shutil.rmtree(efi)
            root_mib = int(tree_bytes(root) * 1.25 / MiB) + 256
            root_mib += (-root_mib) % 64
            parts = [Part("esp", esp, ESP_MIB), Part("root", work / "root.img", root_mib),
                     Part("kura-keys", work / "keys.img", KEYS_MIB),
                     Part("kura-data", work / "data.img", DATA_MIB)]
            tools = root  # trixie's mke2fs; running it changes nothing in the tree
            mkfs_ext4(parts[1].image, "kura-root", root_mib, sde, root, tools)
            mkfs_ext4(parts[2].image, "kura-keys", KEYS_MIB, sde, None, tools)
            mkfs_ext4(parts[3].image, "kura-data", DATA_MIB, sde, None, tools)
            print(f"      root {root_mib} MiB")
        raw = out / f"{IMAGE_NAME}.raw"
        qcow = out / f"{IMAGE_NAME}.qcow2"
        with steps.step("laying out the GPT disk and converting to qcow2"):
            assemble(raw, parts)
            if qcow.exists():
                qcow.unlink()
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", raw, qcow], quiet=True)
        with steps.step("writing SHA256SUMS and the package list"):
            (out / "packages.txt").write_text("\n".join(got) + "\n")
            sums = [f"{sha256(p)}  {p.name}" for p in (raw, qcow, out / "packages.txt")]
            (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
            for line in sums:
                print(f"      {line}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"image built in {steps.elapsed():.0f} s: {raw} ({raw.stat().st_size >> 20} MiB), "
          f"{qcow} ({qcow.stat().st_size >> 20} MiB)")
    return raw


def lock() -> None:
    steps = Steps(2)
    with tempfile.TemporaryDirectory(prefix="kura-lock-") as tmp:
        root = Path(tmp) / "root"
        with steps.step(f"resolving packages.txt against Debian {SUITE}"):
            mmdebstrap(root, None, None, source_date_epoch())
        with steps.step(f"writing {LOCK.relative_to(TOP)}"):
            got = installed_packages(root)
            header = (
                "# Exact Debian package versions of the appliance image (name version).\n"
                "# Made by ./build.sh image-lock from provisioning/packages.txt; commit it.\n"
            )
            LOCK.write_text(header + "\n".join(got) + "\n")
            print(f"      {len(got)} packages")


def verify_repro(out: Path) -> int:
    """Build twice into separate folders and compare every output file."""
    a, b = out / "repro-a", out / "repro-b"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
    sde = source_date_epoch()  # one commit time for both
    build(a, sde)
    build(b, sde)
    differ = []
    for f in sorted(p.name for p in a.iterdir() if p.is_file()):
        if sha256(a / f) != sha256(b / f):
            differ.append(f)
    if not differ:
        print(f"reproducible: both builds gave {(a / 'SHA256SUMS').read_text().split()[0]} "
              f"for {IMAGE_NAME}.raw")
        return 0
    print(f"NOT reproducible: {', '.join(differ)} differ")
    if f"{IMAGE_NAME}.raw" in differ:
        for line in diff_partitions(a / f"{IMAGE_NAME}.raw", b / f"{IMAGE_NAME}.raw"):
            print(f"  {line}")
    return 1


def partitions(raw: Path) -> dict[str, tuple[int, int]]:
    """name → (byte offset, byte size) from the image's GPT."""
    table = json.loads(run(["sfdisk", "--json", raw], quiet=True))["partitiontable"]
    return {p["name"]: (p["start"] * 512, p["size"] * 512) for p in table["partitions"]}


def extract(raw: Path, offset: int, size: int, dest: Path) -> Path:
    with raw.open("rb") as src, dest.open("wb") as dst:
        src.seek(offset)
        remaining = size
        while remaining:
            block = src.read(min(remaining, 16 * MiB))
            dst.write(block)
            remaining -= len(block)
    return dest


def unpack(part: Path, fs: str) -> Path:
    """A partition image's files in a folder beside it (debugfs / mtools, no mounts)."""
    tree = part.with_suffix(".d")
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    if fs == "vfat":
        run(["mcopy", "-s", "-m", "-n", "-i", part, "::/*", tree],
            env={"MTOOLS_SKIP_CHECK": "1"}, quiet=True)
    else:
        run(["debugfs", "-R", f"rdump / {tree}", part], quiet=True)
    return tree


def diff_partitions(raw_a: Path, raw_b: Path) -> list[str]:
    """Which partitions differ, and for each, which files (or only metadata)."""
    found: list[str] = []
    pa, pb = partitions(raw_a), partitions(raw_b)
    for name in sorted(set(pa) | set(pb)):
        if pa.get(name, (0, 0))[1] != pb.get(name, (0, 0))[1]:
            found.append(f"partition {name}: sizes differ")
            continue
        parts = [extract(raw, *table[name], raw.parent / f"{name}.part")
                 for raw, table in ((raw_a, pa), (raw_b, pb))]
        if sha256(parts[0]) == sha256(parts[1]):
            continue
        fs = "vfat" if name == "esp" else "ext4"
        trees = [unpack(p, fs) for p in parts]
        proc = subprocess.run(["diff", "-rq", "--no-dereference", str(trees[0]), str(trees[1])],
                              capture_output=True, text=True, check=False)
        lines = proc.stdout.splitlines()
        found.append(f"partition {name}: " + (f"{len(lines)} files differ" if lines else
                                              "same files; times, order or metadata differ"))
        found += [f"    {line}" for line in lines[:40]]
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="image/build.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "lock", "verify-repro"])
    p.add_argument("--out", default=str(TOP / "out"), help="output folder (default out/)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    try:
        if args.command == "build":
            build(out)
        elif args.command == "lock":
            check_host(out)
            lock()
        else:
            return verify_repro(out)
    except BuildError as exc:
        print(f"image build failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
