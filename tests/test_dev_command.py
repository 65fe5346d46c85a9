"""`kura dev` (what ./build.sh dev runs) as a newcomer uses it: it prints the
URL, the certificate fingerprint and the first DA's password; Ctrl-C stops
everything; a second run reuses the data."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from kura import tls
from kura.devserver import free_port
from tests.support import Api


def _start(state: Path, port: int, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kura.cli", "dev", "--state", str(state), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C" in line or time.monotonic() > deadline:
            break
    return proc, "".join(lines)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_dev_prints_how_to_sign_in_stops_cleanly_and_reuses_data() -> None:
    base = Path(tempfile.mkdtemp(prefix="kura-devcmd-"))
    os.chmod(base, 0o755)  # noqa: S103 (the postgres user must reach its cluster)
    state, port = base / "state", free_port()
    env = dict(os.environ, KURA_DA_PASSWORD="Kura-First-Pass-2026!")
    proc, out = _start(state, port, env)
    try:
        assert f"https://127.0.0.1:{port}" in out
        fingerprint = tls.fingerprint(state / "tls" / "cert.pem")
        assert fingerprint in out
        assert "Kura-First-Pass-2026!" in out
        # kura-policy for endpoint agents: its URL answers, with the CA whose
        # fingerprint is printed for `kura-agent enroll --fingerprint`.
        policy_url = re.search(r"agents: +(https://127\.0\.0\.1:\d+) ", out)
        ca_fingerprint = re.search(r"agent CA: +SHA-256 ([0-9a-f]{64}) ", out)
        assert policy_url and ca_fingerprint, out
        blind = ssl.create_default_context()
        blind.check_hostname, blind.verify_mode = False, ssl.CERT_NONE
        ca_url = f"{policy_url[1]}/kura-agent/v1/ca"  # https, from the output above
        with urllib.request.urlopen(ca_url, context=blind) as r:  # noqa: S310
            ca = x509.load_pem_x509_certificate(r.read())
        assert ca.fingerprint(hashes.SHA256()).hex() == ca_fingerprint[1]
        api = Api(f"https://127.0.0.1:{port}", state / "tls" / "cert.pem")
        signed_in = api.sign_in("admin", "Kura-First-Pass-2026!")
        assert signed_in.role == "DA"
    finally:
        _stop(proc)
    # Everything stopped: no PostgreSQL left running on that cluster, port free.
    assert not list(state.glob("db/pg/postmaster.pid"))
    assert not re.search(r"Traceback", out)

    proc, out = _start(state, port, env)
    try:
        assert "accounts exist already" in out
        api = Api(f"https://127.0.0.1:{port}", state / "tls" / "cert.pem")
        assert api.sign_in("admin", "Kura-First-Pass-2026!").role == "DA"
    finally:
        _stop(proc)


def test_dev_generates_a_one_time_password_when_none_is_set() -> None:
    base = Path(tempfile.mkdtemp(prefix="kura-devcmd-"))
    os.chmod(base, 0o755)  # noqa: S103
    state, port = base / "state", free_port()
    env = {k: v for k, v in os.environ.items() if k != "KURA_DA_PASSWORD"}
    proc, out = _start(state, port, env)
    try:
        match = re.search(r"one-time password:\s*\n\s*(\S+)", out)
        assert match, out
        api = Api(f"https://127.0.0.1:{port}", state / "tls" / "cert.pem")
        first = api.sign_in("admin", match.group(1))
        assert first.get("/session").json["must_change_password"] is True
        assert first.get("/users").error_code == "action_required"
    finally:
        _stop(proc)
