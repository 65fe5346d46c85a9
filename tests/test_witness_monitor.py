"""``kura witness init`` for real, with the appliance's own PostgreSQL 17 and
pg_auto_failover 2.2 (the image's root tree, read-only with an overlay, in a private
mount and network namespace: nothing of it is left behind and no kl-* namespace is
touched): the monitor it makes starts with the unit's command line, accepts a keeper's
connection verified against the witness's CA with the formation's password, has the
tuned timers, and refuses a client that trusts another CA, a client without the
password, and any other local user as the superuser. About 4 s.

Needs root and out/kura.raw (or $KURA_RAW_IMAGE); skipped otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kura.core import witness as core

TOP = Path(__file__).resolve().parent.parent
IMAGE = Path(os.environ.get("KURA_RAW_IMAGE", str(TOP / "out" / "kura.raw")))
if not IMAGE.exists():
    IMAGE = Path("/work/main/out/kura.raw")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not IMAGE.exists() or shutil.which("unshare") is None,
    reason="needs root, unshare and the raw image (./build.sh image)")


def root_partition(image: Path) -> tuple[int, int]:
    import json

    done = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                          check=True)
    table = json.loads(done.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    part = next(p for p in table["partitions"] if p.get("name") == "root")
    return int(part["start"]) * sector, int(part["size"]) * sector


def test_witness_init_makes_a_monitor_that_only_trusts_its_ca() -> None:
    offset, size = root_partition(IMAGE)
    work = Path(tempfile.mkdtemp(prefix="kura-witness-test-"))
    try:
        began = time.monotonic()
        done = subprocess.run(
            ["unshare", "-m", "-n", "--propagation", "private", "sh",
             str(TOP / "tests/witness/monitor.sh"), str(IMAGE), str(offset), str(size),
             str(work), str(TOP / "daemons")],
            capture_output=True, text=True, timeout=300, check=False)
        seconds = time.monotonic() - began
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    checks = {}
    for line in done.stdout.splitlines():
        if line.startswith("check "):
            _, name, value = line.split(" ", 2)
            checks[name] = value
    code_line = next(line for line in done.stdout.splitlines() if "KW1-" in line)
    code = core.decode(code_line.split()[-1])
    assert (code.address, code.port) == ("127.0.0.1", 5432)
    assert checks["ca_key_mode"] == "600:postgres"
    assert checks["trust_lines"] == "0"
    assert checks["listener_errors"] == "0", out[-2000:]
    assert checks["verified"] == "t", out[-2000:]  # TLS, verify-full against the CA
    assert checks["health_check_period"] == "1s"  # kura.core.formation's timers
    assert checks["jit"] == "off"
    assert checks["other_ca"].startswith("refused"), out[-2000:]
    assert "certificate verify failed" in checks["other_ca"]
    assert checks["no_password"] == "refused"
    assert checks["local_superuser"] == "refused"
    print(f"kura witness init and a monitor up, checked: {seconds:.1f} s")
