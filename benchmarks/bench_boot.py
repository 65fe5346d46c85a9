"""Power-on to a working console, for the built image (out/kura.qcow2).

    .venv/bin/python benchmarks/bench_boot.py [--image out/kura.qcow2] [--accel kvm|tcg]

Boots a fresh machine with unattended answers (TPM seal) and prints, in
seconds from power-on: the kernel starting, the first-boot set-up finished,
and the console answering HTTPS; then powers it off, boots it again and
prints the same for an ordinary boot (the vault unseals itself from the TPM).
The baseline in the same run is the firmware alone: power-on to the kernel.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP / "image"))

from vm import VM  # noqa: E402

ANSWERS = b"""
[host]
hostname = "kura-bench"
[seal]
mode = "tpm"
threshold = 2
shares = 3
[admin]
password = "Kura-bench-DA-2026!x"
"""


def https_answers(port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /api/v1/status HTTP/1.0\r\nHost: kura\r\n\r\n")
            return tls.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def one_boot(machine: VM, label: str) -> dict[str, float]:
    t0 = time.monotonic()
    machine.start()
    machine.expect(r"Linux version", timeout=600)
    kernel = time.monotonic() - t0
    while not https_answers(machine.host_port(443)):
        if time.monotonic() - t0 > 900:
            raise SystemExit(f"{label}: the console never answered")
        time.sleep(0.5)
    answered = time.monotonic() - t0
    return {"kernel": kernel, "console": answered}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=str(TOP / "out" / "kura.qcow2"))
    p.add_argument("--accel", choices=["kvm", "tcg"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kura-bench-boot-") as tmp:
        machine = VM(Path(args.image), Path(tmp) / "vm", grow="+2G", accel=args.accel)
        machine.credential("kura.setup", ANSWERS)
        try:
            first = one_boot(machine, "first boot")
            machine.shutdown(timeout=180)
            second = one_boot(machine, "second boot")
            machine.shutdown(timeout=180)
        finally:
            machine.close()
    print(f"accelerator: {machine.accel}")
    print(f"{'boot':<30} {'kernel':>8} {'console':>9} {'ratio to firmware':>18}")
    for label, t in (("first (with unattended set-up)", first), ("second (TPM unseal)", second)):
        print(f"{label:<30} {t['kernel']:8.1f} {t['console']:9.1f} "
              f"{t['console'] / t['kernel']:17.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
