"""Kura on the lab's pair: kura-vault, kura-console and kura-hasync on both data nodes,
run from the checkout (bound at /opt/kura/daemons) with the image's own python3 and
Debian libraries, as supervised services of the lab.

What the first-boot wizard and the pairing ceremony do on real appliances is done here
directly: the kura roles and database on the primary (the standby gets them by
replication), the same root key on both (the host seal's file copied: the pairing's
stand-in), one console certificate naming the floating address and both nodes.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kura.pgcluster import SCHEMA_PRIVILEGES_SQL, roles_and_database_sql
from kura.tls import make_self_signed
from tests.ha.lab import DATA_NODES, NS_PREFIX, PGDATA, REPO, VIP, ClientProcess, Lab

CONFIG = "/etc/kura/kura.toml"
KEYS = "/var/lib/kura-keys"
CONSOLE_PORT = 8443
URL = f"https://{VIP}:{CONSOLE_PORT}"
PYTHON = ["python3", "-X", "faulthandler"]
HA_TIMERS = {"fence_seconds": 3, "poll_seconds": 1}


@dataclass
class KuraPair:
    lab: Lab
    cert: Path  # the console's certificate (the client trusts it)
    creds: Path  # the MU's credentials (0600), made by `setup`

    def vault_status(self, name: str) -> dict[str, object]:
        out = self.lab.nodes[name].run(
            [*PYTHON, "-c", _STATUS_SCRIPT], user="root", check=False, timeout=20).stdout
        try:
            return dict(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            return {}

    def vip_holder(self) -> list[str]:
        """The data nodes that have the floating address on their interface."""
        held = []
        for name in DATA_NODES:
            out = subprocess.run(["ip", "-n", NS_PREFIX + name, "-4", "-o", "addr", "show"],
                                 capture_output=True, text=True, check=False).stdout
            if f" {VIP}/" in out:
                held.append(name)
        return held

    def codes_on(self, name: str) -> set[str]:
        out = self.lab.nodes[name].psql("SELECT code FROM subjects WHERE code LIKE 'W-%'",
                                        "kura", timeout=30)
        return set(out.split())

    def writer(self, start_id: int = 1, pause: float = 0.05) -> ClientProcess:
        return self._client("writer", "--start-id", str(start_id), "--pause", str(pause))

    def _client(self, mode: str, *extra: str) -> ClientProcess:
        log = self.lab.base / "logs" / f"api-{mode}-{time.time():.3f}.log"
        out = log.open("wb")
        process = subprocess.Popen(
            _client_argv(mode, self.cert, self.creds, *extra), stdout=out,
            stderr=subprocess.STDOUT, cwd=REPO)
        return ClientProcess(process, log)


_STATUS_SCRIPT = """
import asyncio, json
from pathlib import Path
from kura.console.vaultclient import VaultClient
async def main():
    client = VaultClient(Path('/run/kura/vault.sock'), 1)
    try:
        print(json.dumps(await client.call('status', {}, None, 'local')))
    finally:
        await client.close()
asyncio.run(main())
"""

_BOOTSTRAP_SCRIPT = """
import asyncio, sys
from pathlib import Path
from kura.console.vaultclient import VaultClient
async def main():
    client = VaultClient(Path('/run/kura/vault.sock'), 1)
    try:
        result = await client.call('bootstrap_da', {'username': 'admin'}, None, 'local')
        sys.stdout.write(result['password'])
    finally:
        await client.close()
asyncio.run(main())
"""


def _client_argv(mode: str, cert: Path, creds: Path, *extra: str) -> list[str]:
    import sys

    return ["ip", "netns", "exec", NS_PREFIX + "client", sys.executable, "-m",
            "tests.ha.apiclient", mode, "--url", URL, "--ca", str(cert), "--creds", str(creds),
            *extra]


def _config(name: str, passwords: dict[str, str]) -> str:
    hasync_dsn = ("host=/run/postgresql dbname=postgres user=kura_hasync "
                  f"password={passwords['kura_hasync']}")
    return f"""appliance = "{name}"
[database]
dsn = "host=/run/postgresql dbname=kura user=kura_vault password={passwords['kura_vault']}"
owner_dsn = "host=/run/postgresql dbname=kura user=kura_owner password={passwords['kura_owner']}"
pool_min = 1
pool_max = 8
[vault]
socket = "/run/kura/vault.sock"
keys_dir = "{KEYS}"
[console]
listen = "0.0.0.0"
port = {CONSOLE_PORT}
cert = "/etc/kura/tls/cert.pem"
key = "/etc/kura/tls/key.pem"
[ha]
node = "{name}"
local_dsn = "{hasync_dsn}"
vip = "{VIP}/24"
interface = "eth0"
pg_autoctl_config = "/var/lib/postgresql/.config/pg_autoctl{PGDATA}/pg_autoctl.cfg"
fence_seconds = {HA_TIMERS['fence_seconds']}
poll_seconds = {HA_TIMERS['poll_seconds']}
status_file = "/run/kura-hasync/status.json"
"""


def install(lab: Lab) -> KuraPair:
    """Kura on both data nodes of a stable formation; returns once the console answers on
    the floating address and an MU can write."""
    primary = lab.wait_stable()
    passwords = {role: secrets.token_urlsafe(18)
                 for role in ("kura_owner", "kura_vault", "kura_hasync")}
    node = lab.nodes[primary]
    node.psql(roles_and_database_sql(passwords))
    node.psql(SCHEMA_PRIVILEGES_SQL, "kura")
    node.psql(f"CREATE ROLE kura_hasync LOGIN PASSWORD '{passwords['kura_hasync']}' "
              "IN ROLE pg_monitor")
    cert_dir = lab.base / "console-tls"
    cert, key = cert_dir / "cert.pem", cert_dir / "key.pem"
    make_self_signed(cert, key, [VIP, *(lab.nodes[n].address for n in DATA_NODES)])
    for name in DATA_NODES:
        n = lab.nodes[name]
        hba = n.root / PGDATA.lstrip("/") / "pg_hba.conf"
        with hba.open("a") as rules:
            rules.write("local kura kura_owner,kura_vault scram-sha-256\n"
                        "local postgres kura_hasync scram-sha-256\n")
        n.psql("SELECT pg_reload_conf()")
        etc = n.root / "etc/kura"
        (etc / "tls").mkdir(parents=True, exist_ok=True)
        shutil.copy(cert, etc / "tls/cert.pem")
        shutil.copy(key, etc / "tls/key.pem")
        (etc / "tls/key.pem").chmod(0o600)
        config = etc / "kura.toml"
        config.write_text(_config(name, passwords))
        config.chmod(0o600)
    # The root key: made on the primary, the same on the standby (the pairing's stand-in).
    node.run([*PYTHON, "-m", "kura.cli", "vault", "init", "--seal", "host", "--config", CONFIG],
             user="root")
    for name in DATA_NODES:
        if name != primary:
            target = lab.nodes[name].root / KEYS.lstrip("/")
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(node.root / KEYS.lstrip("/"), target)
    for name in (primary, *(n for n in DATA_NODES if n != primary)):
        n = lab.nodes[name]
        env = {"PGPASSFILE": "/var/lib/postgresql/.pgpass"}
        n.add_service("kura-vault", [*PYTHON, "-m", "kura.vault.main", "--config", CONFIG],
                      user="root")
        n.add_service("kura-console", [*PYTHON, "-m", "kura.console.main", "--config", CONFIG],
                      user="root")
        # systemd's RuntimeDirectory=kura-hasync, which holds the status file
        n.add_service("kura-hasync", ["sh", "-c", "mkdir -p /run/kura-hasync && exec "
                                      + " ".join(PYTHON) + " -m kura.hasync.main --config "
                                      + CONFIG], user="root", env=env)
    _wait(lambda: pair_status(lab, primary).get("sealed") is False, 90, "the primary's vault")
    password = node.run([*PYTHON, "-c", _BOOTSTRAP_SCRIPT], user="root", check=False).stdout
    pair = KuraPair(lab, cert, lab.base / "mu.json")
    da_file = lab.base / "da.password"
    da_file.write_text(password)
    da_file.chmod(0o600)
    _wait(lambda: pair.vip_holder() == [primary], 30, "the floating address on the primary")
    done = subprocess.run(
        [*_client_argv("setup", cert, pair.creds, "--da-password-file", str(da_file))],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    if done.returncode:
        raise RuntimeError(f"setup through {URL} failed: {done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")
    return pair


def pair_status(lab: Lab, name: str) -> dict[str, object]:
    return KuraPair(lab, Path(), Path()).vault_status(name)


def _wait(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

