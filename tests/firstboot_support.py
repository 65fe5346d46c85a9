"""What the kura-firstboot tests share: a fake appliance root (the files the
image provides), a command runner that records calls and stands in for the
programs that cannot run here (systemctl, pg_createcluster, networkd), a LAN
made of a veth pair and a network namespace with a gateway, and a "serial
line" that drives the wizard prompt by prompt, the way the QEMU tests do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kura_firstboot.system import System

PASSWD = """root:x:0:0:root:/root:/bin/sh
postgres:x:105:110:PostgreSQL:/var/lib/postgresql:/bin/sh
kura-vault:x:990:990:Kura vault:/nonexistent:/usr/sbin/nologin
kura-console:x:991:990:Kura console:/nonexistent:/usr/sbin/nologin
kura-policy:x:992:990:Kura policy:/nonexistent:/usr/sbin/nologin
"""
GROUP = """root:x:0:
postgres:x:110:
kura:x:990:
"""
DEBIAN_HBA = """# PostgreSQL Client Authentication Configuration File
# ===================================================

# Database administrative login by Unix domain socket
local   all             postgres                                peer

# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
"""
DEBIAN_IDENT = "# MAPNAME       SYSTEM-USERNAME         PG-USERNAME\n"
SEAL_DROPIN = (
    Path(__file__).parent.parent / "systemd/seal-creds/kura-vault.service.d/50-seal-creds.conf"
)


def fake_root(base: Path) -> Path:
    """The files of the image that the wizard reads."""
    root = base / "root"
    for rel, body in {
        "etc/passwd": PASSWD,
        "etc/group": GROUP,
        "etc/hosts": "127.0.0.1\tlocalhost\n",
        "usr/share/kura/appliance": "Kura appliance image.\n",
        "usr/share/kura/seal-creds/50-seal-creds.conf": SEAL_DROPIN.read_text(),
        "usr/lib/postgresql/17/bin/initdb": "#!/bin/sh\n",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    tz = root / "usr/share/zoneinfo/Asia/Tokyo"
    tz.parent.mkdir(parents=True)
    tz.write_bytes(b"TZif2 stand-in")
    (root / "usr/share/zoneinfo/UTC").write_bytes(b"TZif2 stand-in")
    for folder in ("run", "var/lib/kura/firstboot", "etc/kura", "var/lib/kura-keys"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


Hook = Callable[[list[str], bytes | None], bytes | None]


@dataclass
class Recorder:
    """Records every command; a hook (by argv prefix) may act like the program."""

    root: Path
    calls: list[tuple[list[str], bytes | None]] = field(default_factory=list)
    hooks: dict[tuple[str, ...], Hook] = field(default_factory=dict)

    def __call__(self, argv: Sequence[str], input: bytes | None) -> bytes:
        args = list(argv)
        self.calls.append((args, input))
        for prefix, hook in self.hooks.items():
            if tuple(args[: len(prefix)]) == prefix:
                return hook(args, input) or b""
        if args[0] == "pg_createcluster":
            self._createcluster(args[1])
        return b""

    def _createcluster(self, ver: str) -> None:
        conf = self.root / f"etc/postgresql/{ver}/main"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "postgresql.conf").write_text("include_dir = 'conf.d'\n")
        (conf / "pg_hba.conf").write_text(DEBIAN_HBA)
        (conf / "pg_ident.conf").write_text(DEBIAN_IDENT)

    def commands(self) -> list[str]:
        return [" ".join(argv) for argv, _ in self.calls]

    def everything(self) -> str:
        """Every argv and standard input, as one text (to look for secrets)."""
        return "\n".join(
            " ".join(argv) + "\n" + (data or b"").decode("utf-8", "replace")
            for argv, data in self.calls
        )


class FakeRootSystem(System):
    """A System on a fake root; migrations go to a real test cluster if given."""

    owner_dsn: str | None = None

    def migrate(self, owner_dsn: str) -> list[int]:
        if self.owner_dsn is None:
            return []
        return super().migrate(self.owner_dsn)


def make_system(base: Path) -> tuple[FakeRootSystem, Recorder]:
    root = fake_root(base)
    recorder = Recorder(root)
    return FakeRootSystem(root, runner=recorder), recorder


# --- a LAN: a veth in this namespace, its peer (the gateway) in another -------------


@dataclass(frozen=True)
class Lan:
    ifname: str
    mac: str
    address: str  # what the appliance should take
    gateway: str  # answers ARP in the namespace
    namespace: str


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Networkd:
    """Stands in for systemd-networkd on the test link: on restart, the link
    takes the static Address= of the 10-kura-*.network file matching its MAC."""

    root: Path
    lan: Lan
    restarts: int = 0

    def __call__(self, argv: list[str], input: bytes | None) -> bytes:
        self.restarts += 1
        ip("addr", "flush", "dev", self.lan.ifname)
        for path in sorted((self.root / "etc/systemd/network").glob("10-kura-*.network")):
            body = path.read_text()
            if f"MACAddress={self.lan.mac}" in body:
                for address in re.findall(r"^Address=(.+)$", body, re.M):
                    ip("addr", "add", address, "dev", self.lan.ifname)
        return b""


def make_lan(tag: str) -> Iterator[Lan]:
    ns, here, there = f"kfb-{tag}", f"kfb{tag}a", f"kfb{tag}b"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", here], capture_output=True, check=False)
    ip("netns", "add", ns)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there, "netns", ns)
        ip("-n", ns, "addr", "add", "198.51.100.1/24", "dev", there)
        ip("-n", ns, "link", "set", there, "up")
        ip("link", "set", here, "up")
        mac = Path(f"/sys/class/net/{here}/address").read_text().strip()
        yield Lan(here, mac, "198.51.100.10/24", "198.51.100.1", ns)
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


# --- a serial line to the wizard -----------------------------------------------------


class SerialLine:
    """The wizard's terminal: it reads our lines from a pipe and writes to a
    pipe we read, so a test waits for a tag and answers, like the QEMU tests."""

    def __init__(self) -> None:
        self.infd, self._to_wizard = os.pipe()
        from_wizard, out_fd = os.pipe()
        self.out = os.fdopen(out_fd, "w", encoding="utf-8")
        self._reader = os.fdopen(from_wizard, "r", encoding="utf-8")
        self.text = ""
        self._pos = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while chunk := self._reader.read(1):
            with self._cond:
                self.text += chunk
                self._cond.notify_all()

    def expect(self, tag: str, timeout: float = 30) -> str:
        """Wait for ``[tag]``; return the line it starts (the prompt or message)."""
        marker = f"[{tag}]"
        deadline = time.monotonic() + timeout
        with self._cond:
            while (at := self.text.find(marker, self._pos)) < 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {marker} within {timeout}s; got:\n"
                                         f"{self.text[self._pos:][-3000:]}")
                self._cond.wait(left)
            end = self.text.find("\n", at)
            if end < 0 and not self.text.endswith(": "):
                # A message not finished yet: wait for the rest of the line.
                while (end := self.text.find("\n", at)) < 0 and not self.text.endswith(": "):
                    self._cond.wait(0.1)
            self._pos = end + 1 if end >= 0 else len(self.text)
            return self.text[at: end if end >= 0 else len(self.text)]

    def send(self, line: str) -> None:
        os.write(self._to_wizard, (line + "\n").encode())

    def hang_up(self) -> None:
        os.close(self._to_wizard)

    def tags(self) -> list[str]:
        return re.findall(r"^\[([a-z_.]+)\]", self.text, re.M)


def run_in_thread(target: Callable[[], int]) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []

    def body() -> None:
        result.append(target())

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, result


# --- a real kura-vault on the fake root's socket and keys -----------------------------


@dataclass
class VaultProcess:
    """Stands in for `systemctl start kura-vault.service`: the real vault,
    reading the seal the wizard made, on the socket the wizard talks to."""

    root: Path
    vault_dsn: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, argv: list[str], input: bytes | None) -> bytes:
        if self.proc is not None and self.proc.poll() is None and argv[1] == "start":
            return b""
        self.stop(argv, input)
        self.starts += 1
        config = self.root.parent / "vault-test.toml"
        socket = self.root / "run/kura/vault.sock"
        socket.parent.mkdir(parents=True, exist_ok=True)
        socket.unlink(missing_ok=True)
        config.write_text(
            'appliance = "kura-test"\n'
            f'[database]\ndsn = "{self.vault_dsn}"\n'
            f'[vault]\nsocket = "{socket}"\nkeys_dir = "{self.root / "var/lib/kura-keys"}"\n'
            "allowed_uids = [0]\nadmin_uids = [0]\n"
        )
        log = open(self.root.parent / "vault.log", "ab")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kura.vault.main", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((self.root.parent / "vault.log").read_text()[-2000:])
            time.sleep(0.05)
        return b""

    def stop(self, argv: list[str] | None = None, input: bytes | None = None) -> bytes:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None
        return b""


def reset_database(cluster: object) -> None:
    """An empty, migrated kura database in the test cluster (a new seal needs
    a keyring of its own)."""
    from kura.pgcluster import SCHEMA_PRIVILEGES_SQL, Cluster, roles_and_database_sql
    from kura.vault import schema

    assert isinstance(cluster, Cluster)
    cluster.psql("postgres", "DROP DATABASE IF EXISTS kura WITH (FORCE);", dbname="postgres")
    cluster.psql("postgres", roles_and_database_sql(), dbname="postgres")
    cluster.psql("postgres", SCHEMA_PRIVILEGES_SQL, dbname="kura")
    schema.migrate(cluster.dsn("kura_owner"))


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root with its mode and content (to prove nothing changed)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(root))] = (path.stat().st_mode, path.read_bytes())
        elif path.is_symlink():
            found[str(path.relative_to(root))] = (0, str(path.readlink()).encode())
    return found

