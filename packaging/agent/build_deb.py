"""Build kura-agent's Debian package: out/kura-agent_<version>_all.deb.

The agent ships alone on endpoints: the package holds ``kura.agent``,
``kura/core/bundle.py`` and the two ``__init__`` files that make them
importable as ``kura.*`` (nothing else of Kura), ``/usr/bin/kura-agent`` and
the two systemd units. Its Python dependencies are Debian's own packages.
Run by ``./build.sh agent-deb``; needs only dpkg-deb.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent.parent
DAEMONS = TOP / "daemons"
SITE = "usr/lib/python3/dist-packages"
DEPENDS = ("python3 (>= 3.11), python3-aiohttp, python3-cryptography, python3-nftables, "
           "python3-pyudev, nftables")
LAUNCHER = """#!/usr/bin/python3
# kura-agent: Kura's endpoint agent (see /usr/share/doc/kura-agent).
import sys

from kura.agent.cli import main

sys.exit(main())
"""
KURA_INIT = '"""Only the parts of Kura that kura-agent needs on an endpoint."""\n'
POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # restore is enabled at once (it only acts once a bundle is stored);
    # the agent itself starts after `kura-agent enroll` (its unit needs identity.json).
    systemctl enable kura-agent-restore.service kura-agent.service || true
    systemctl try-restart kura-agent.service || true
fi
exit 0
"""
PRERM = """#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now kura-agent.service kura-agent-restore.service || true
fi
exit 0
"""


def version() -> str:
    text = (TOP / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    if not match:
        raise SystemExit("build_deb: no version in pyproject.toml")
    return match.group(1)


def files() -> dict[str, Path]:
    """Package path → source file."""
    chosen = {f"{SITE}/kura/core/bundle.py": DAEMONS / "kura/core/bundle.py"}
    for source in sorted((DAEMONS / "kura/agent").glob("*.py")):
        chosen[f"{SITE}/kura/agent/{source.name}"] = source
    for unit in ("kura-agent.service", "kura-agent-restore.service"):
        chosen[f"usr/lib/systemd/system/{unit}"] = TOP / "systemd" / unit
    chosen["usr/share/doc/kura-agent/agents.md"] = TOP / "docs/agents.md"
    return chosen


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def build(out: Path) -> Path:
    ver = version()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        for target, source in files().items():
            (root / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, root / target)
            (root / target).chmod(0o644)
        write(root / SITE / "kura/__init__.py", KURA_INIT)
        write(root / SITE / "kura/core/__init__.py", KURA_INIT)
        write(root / "usr/bin/kura-agent", LAUNCHER, 0o755)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024 + 1
        sums = "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  "  # noqa: S324 - dpkg's md5sums format
                       f"{p.relative_to(root)}\n"
                       for p in sorted(root.rglob("*")) if p.is_file())
        debian = root / "DEBIAN"
        write(debian / "control", f"""Package: kura-agent
Version: {ver}
Architecture: all
Maintainer: Kura <kura@localhost>
Installed-Size: {size}
Depends: {DEPENDS}
Recommends: usbguard
Section: admin
Priority: optional
Description: Kura endpoint agent (signed policy bundles, nftables, usbguard)
 Enrols a clerk PC or business server with a Kura appliance, enforces its
 signed policy bundles with one nftables table (restored at boot before the
 network), blocks USB mass storage through usbguard, and reports posture.
""")
        write(debian / "md5sums", sums)
        write(debian / "postinst", POSTINST, 0o755)
        write(debian / "prerm", PRERM, 0o755)
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"kura-agent_{ver}_all.deb"
        env = {**os.environ, "SOURCE_DATE_EPOCH": "0"}
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root),
                        str(deb)], check=True, env=env, capture_output=True)
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TOP / "out")
    args = parser.parse_args(argv)
    if shutil.which("dpkg-deb") is None:
        print("build_deb: dpkg-deb is missing (apt-get install dpkg)", file=sys.stderr)
        return 1
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
