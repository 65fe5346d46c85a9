"""A whole Kura appliance on this machine, without the image: a private
PostgreSQL cluster, kura-vault, kura-console and kura-policy as child processes, all state
under one folder. ``kura dev`` (./build.sh dev) runs it in the foreground;
the tests and benchmarks start the same thing in a temporary folder."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kura import tls
from kura.console.vaultclient import VaultClient
from kura.core.errors import KuraError
from kura.core.keys import new_root_key
from kura.pgcluster import PG_USER, Cluster
from kura.proc import as_user
from kura.vault import schema, sealing


class DevError(KuraError):
    """The local appliance could not start."""

    code = "dev"
    status = 500
    ja = "ローカルアプライアンスを起動できません。"
    en = "The local appliance could not start."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_can_reach(path: Path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = subprocess.run([*as_user(PG_USER), "test", "-x", str(path)], check=False)
    return probe.returncode == 0


@dataclass
class LocalAppliance:
    state: Path
    port: int = 8443
    pg_port: int = 5432
    seal: str = "host"  # "host" | "shamir:M/N" | "creds"
    appliance: str = "kura-dev"
    shares: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    extra_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy_port: int = 0  # kura-policy's; 0: a free one

    def __post_init__(self) -> None:
        self.state = self.state.resolve()
        if not self.policy_port:
            self.policy_port = free_port()
        pg_base = self.state / "db"
        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o755)  # noqa: S103 (postgres must traverse it)
        if not _pg_can_reach(self.state):
            # The postgres user cannot walk down to our folder (a parent is 0700):
            # keep the cluster where it can, named after our folder.
            tag = hashlib.sha256(str(self.state).encode()).hexdigest()[:12]
            pg_base = Path("/var/lib/kura-dev") / tag
            pg_base.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(pg_base.parent, 0o755)  # noqa: S103 (postgres must traverse it)
        self.cluster = Cluster(pg_base, self.pg_port)

    # --- paths ---------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.state / "kura.toml"

    @property
    def keys_dir(self) -> Path:
        return self.state / "keys"

    @property
    def socket(self) -> Path:
        return self.state / "run" / "vault.sock"

    @property
    def cert(self) -> Path:
        return self.state / "tls" / "cert.pem"

    @property
    def logs(self) -> Path:
        return self.state / "log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def policy_url(self) -> str:
        return f"https://127.0.0.1:{self.policy_port}"

    # --- set-up --------------------------------------------------------------

    def prepare(self) -> None:
        """Everything but the daemons: cluster, schema, seal, certificate, config."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cluster.create()
        self.cluster.start()
        schema.migrate(self.cluster.dsn("kura_owner"))
        if sealing.read_seal(self.keys_dir) is None:
            root = new_root_key()
            if self.seal == "host":
                sealing.init_host(self.keys_dir, root)
            elif self.seal == "creds":
                self.shares = sealing.init_creds(self.keys_dir, root, with_key="host")
            elif self.seal.startswith("shamir:"):
                m, n = (int(x) for x in self.seal.removeprefix("shamir:").split("/"))
                self.shares = sealing.init_shamir(self.keys_dir, root, m, n)
            else:
                raise DevError(f"unknown seal {self.seal!r}", f"不明な封印方式: {self.seal}")
        if not self.cert.exists():
            tls.make_self_signed(
                self.cert, self.state / "tls" / "key.pem", ["127.0.0.1", "localhost"]
            )
        self.write_config()

    def write_config(self) -> None:
        sections: dict[str, dict[str, Any]] = {
            "database": {
                "dsn": self.cluster.dsn("kura_vault"),
                "owner_dsn": self.cluster.dsn("kura_owner"),
            },
            "vault": {
                "socket": str(self.socket),
                "keys_dir": str(self.keys_dir),
                "allowed_uids": [os.geteuid()],
                "admin_uids": [os.geteuid()],
                "policy_uids": [os.geteuid()],
            },
            "console": {
                "listen": "127.0.0.1",
                "port": self.port,
                "cert": str(self.cert),
                "key": str(self.state / "tls" / "key.pem"),
            },
            "policy": {"listen": "127.0.0.1", "port": self.policy_port, "retry_seconds": 0.5},
        }
        for name, values in self.extra_config.items():
            sections.setdefault(name, {}).update(values)
        lines = [f"appliance = {json.dumps(self.appliance)}"]
        for name, values in sections.items():
            lines.append(f"\n[{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")

    # --- the daemons -----------------------------------------------------------

    def start_daemon(self, name: str) -> subprocess.Popen[bytes]:
        module = {"vault": "kura.vault.main", "console": "kura.console.main",
                  "policy": "kura.policy.main"}[name]
        if name == "vault":
            # A killed vault leaves its socket behind; readiness below is the new one.
            self.socket.unlink(missing_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.procs[name] = proc
        if name == "vault":
            self._wait(lambda: self.socket.exists(), proc, "kura-vault")
        elif name == "console":
            self._wait(lambda: _port_open(self.port), proc, "kura-console")
        else:
            # Sealed (or a standby), it waits for the shares (or the promotion)
            # and serves then.
            status = self.vault_call_sync("status")
            if not status["sealed"] and status.get("role") != "standby":
                self._wait(lambda: _port_open(self.policy_port), proc, "kura-policy")
        return proc

    def _wait(self, ready: Any, proc: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + 60
        while not ready():
            if proc.poll() is not None:
                tail = (self.logs / f"{what.removeprefix('kura-')}.log").read_text()[-2000:]
                raise DevError(
                    f"{what} exited with {proc.returncode}:\n{tail}",
                    f"{what} が終了しました（{proc.returncode}）",
                )
            if time.monotonic() > deadline:
                raise DevError(
                    f"{what} did not start within 60 s",
                    f"{what} が 60 秒以内に起動しませんでした。",
                )
            time.sleep(0.05)

    def stop_daemon(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def start(self) -> None:
        self.prepare()
        self.start_daemon("vault")
        self.start_daemon("console")
        self.start_daemon("policy")

    def stop(self) -> None:
        for name in ("policy", "console", "vault"):
            self.stop_daemon(name)
        self.cluster.stop()

    # --- first account ---------------------------------------------------------

    async def vault_call(
        self, op: str, args: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        client = VaultClient(self.socket, 1)
        try:
            return await client.call(op, args or {}, session, "local")
        finally:
            await client.close()

    def vault_call_sync(
        self, op: str, args: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """``vault_call`` from synchronous code, even where an event loop is
        already running in this thread (a browser driver's): then in a thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.vault_call(op, args, session))
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.vault_call(op, args, session)).result()

    def bootstrap_da(self, username: str = "admin", password: str | None = None) -> str | None:
        """Create the first DA if there is no account yet; return its password then."""
        args: dict[str, Any] = {"username": username}
        if password:
            args["password"] = password
        try:
            result = self.vault_call_sync("bootstrap_da", args)
        except KuraError as exc:
            if getattr(exc, "vault_code", "") == "conflict":
                return None
            raise
        return str(result["password"])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(state: Path, port: int, seal: str, da_password: str | None) -> int:
    """``kura dev``: run until Ctrl-C."""
    # kura-policy on its documented port when that is free here.
    policy_port = 8445 if not _port_open(8445) else free_port()
    appliance = LocalAppliance(state, port=port, seal=seal, policy_port=policy_port)
    print(f"Kura (development) — state in {appliance.state}", flush=True)
    try:
        appliance.start()
        status = asyncio.run(appliance.vault_call("status"))
        password = None
        if not status["sealed"]:
            password = appliance.bootstrap_da("admin", da_password)
        print("", flush=True)
        print(f"  web console:  {appliance.url}/")
        print(f"  API document: {appliance.url}/api/v1/openapi.json")
        print(f"  certificate:  SHA-256 {tls.fingerprint(appliance.cert)}")
        print(f"  agents:       {appliance.policy_url} (kura-policy)")
        if not status["sealed"]:
            ca = asyncio.run(appliance.vault_call("agents.ca"))
            print(f"  agent CA:     SHA-256 {ca['fingerprint']} (kura-agent enroll --fingerprint)")
        if appliance.shares:
            print("  custodian shares (shown once; write them down):")
            for i, share in enumerate(appliance.shares, 1):
                print(f"    {i}: {share}")
        if status["sealed"]:
            print(
                "  the vault is sealed: POST each share to /api/v1/unseal, then run again"
                " to create the first DA"
            )
        elif password:
            print("  first DA:     user 'admin', one-time password:")
            print(f"                {password}")
            print("                (change it at first sign-in; KURA_DA_PASSWORD sets it)")
        else:
            print("  accounts exist already; sign in as before")
        print(f"  logs:         {appliance.logs}")
        print("\nCtrl-C stops everything.", flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    except KuraError as exc:
        print(f"kura dev: {exc.message_en}", file=sys.stderr)
        return 1
    finally:
        print("\nstopping…", flush=True)
        appliance.stop()
    return 0


__all__ = ["LocalAppliance", "free_port", "main"]
