"""The HA test lab: a witness, two data nodes and a client in network namespaces, each
data node and the witness chrooted into the appliance image's own root tree.

The image's root partition is mounted read-only once; every node gets its own overlayfs
on it (its "disk", kept across a power-off) and runs its programs as
`ip netns exec NS chroot ROOT setpriv ...`, so PostgreSQL 17 and pg_auto_failover 2.2 are
trixie's, not the host's. A small supervisor restarts a node's services after 1 s when
they die (like systemd's Restart=on-failure); `Node.services` is a list of commands per
node, so kura-hasync or kura-vault can be added next to pg_autoctl.

Network: a switch namespace holds a bridge; every other namespace is joined to it by a
veth pair, addresses in 192.0.2.0/24 (TEST-NET-1). Network faults are blackhole routes in
the namespaces of the node and its peers (see `Lab.cut`), which drop IP traffic between
the node and the chosen peers only, so the client still reaches a cut-off primary.

Everything the lab makes carries the prefix "kl-" (namespaces) or "kura-halab-"
(directories and mounts); `Lab.start` removes leftovers of a crashed run first, and
`Lab.close` (also run at exit) removes every process, mount and namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kura.core.formation import TIMERS as FORMATION_TIMERS

REPO = Path(__file__).resolve().parents[2]
IMAGE = Path(os.environ.get("KURA_RAW_IMAGE", str(REPO / "out" / "kura.raw")))
NS_PREFIX = "kl-"
DIR_PREFIX = "kura-halab-"
SUBNET = "192.0.2"
ADDRESSES = {"witness": f"{SUBNET}.3", "node-a": f"{SUBNET}.11", "node-b": f"{SUBNET}.12",
             "client": f"{SUBNET}.100"}
VIP = f"{SUBNET}.10"  # the floating address; kura-hasync's, not the lab's
DATA_NODES = ("node-a", "node-b")
PG_BIN = "/usr/lib/postgresql/17/bin"
PGDATA = "/var/lib/postgresql/17/lab"
TLS_DIR = "/etc/kura-lab/tls"
PGPASS = "/var/lib/postgresql/.pgpass"
RESTART_DELAY = 1.0  # like systemd's RestartSec=1

# Every timer changed from pg_auto_failover's default, with the default and the reason:
# the product's own table (first boot applies the same), as (value, default, why).
TIMERS: dict[str, dict[str, tuple[str, str, str]]] = {
    group: {name: (t.value, t.default, t.why) for name, t in timers.items()}
    for group, timers in FORMATION_TIMERS.items()
}


def run(*argv: str, check: bool = True, timeout: float = 120,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout,
                          input=input)


def netns_inode(ns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except FileNotFoundError:
        return None


def pids_in_netns(ns: str) -> list[int]:
    """Every process whose network namespace is `ns` (no pid namespace: host pids)."""
    inode = netns_inode(ns)
    if inode is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode and int(entry) != os.getpid():
                found.append(int(entry))
    return found


def signal_netns(ns: str, sig: int) -> int:
    count = 0
    for pid in pids_in_netns(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            count += 1
    return count


def kill_netns(ns: str, deadline: float = 10) -> None:
    end = time.monotonic() + deadline
    while signal_netns(ns, signal.SIGKILL) and time.monotonic() < end:
        time.sleep(0.05)


def lab_mounts() -> list[str]:
    """Mount points made by a lab (this one or a crashed one), deepest first."""
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4]
            if f"/{DIR_PREFIX}" in point:
                points.append(point)
    return sorted(set(points), key=len, reverse=True)


def lab_namespaces() -> list[str]:
    out = run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(NS_PREFIX)]


def clean_leftovers() -> list[str]:
    """Remove every process, mount, namespace and directory of any lab; say what."""
    removed = []
    for ns in lab_namespaces():
        kill_netns(ns)
    for point in lab_mounts():
        run("umount", "-l", point, check=False)
        removed.append(f"mount {point}")
    for ns in lab_namespaces():
        run("ip", "netns", "del", ns, check=False)
        removed.append(f"netns {ns}")
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"dir {path}")
    return removed


def root_partition(image: Path) -> tuple[int, int]:
    """Byte offset and size of the image's root partition (GPT name "root")."""
    table = json.loads(run("sfdisk", "--json", str(image)).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    for part in table["partitions"]:
        if part.get("name") == "root":
            return int(part["start"]) * sector, int(part["size"]) * sector
    raise RuntimeError(f"no partition named root in {image}")


@dataclass
class Service:
    """A supervised command of a node; restarted RESTART_DELAY after it dies."""
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None
    restarts: int = 0


@dataclass
class Node:
    name: str
    address: str
    root: Path
    lab: Lab
    services: dict[str, Service] = field(default_factory=dict)
    powered: bool = True

    @property
    def ns(self) -> str:
        return NS_PREFIX + self.name

    # --- running things inside the node ---------------------------------------------

    def argv(self, command: list[str], user: str = "postgres",
             env: dict[str, str] | None = None) -> list[str]:
        """`command` inside this node's namespace and root, as `user`, clean environment."""
        environment = {
            "PATH": f"{PG_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": "/var/lib/postgresql" if user == "postgres" else "/root",
            "PGPASSFILE": PGPASS, "PGHOST": "/run/postgresql", "LANG": "C.UTF-8",
            "PYTHONPATH": "/opt/kura/daemons",
            **(env or {}),
        }
        as_user = ([] if user == "root" else
                   ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"])
        return ["ip", "netns", "exec", self.ns, "chroot", str(self.root), *as_user,
                "env", "-i", *(f"{k}={v}" for k, v in environment.items()), *command]

    def run(self, command: list[str], user: str = "postgres", check: bool = True,
            timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(command, user), capture_output=True, text=True,
                                timeout=timeout, input=input)
        if check and result.returncode:
            raise RuntimeError(f"{self.name}: {' '.join(command)} failed "
                               f"({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result

    def psql(self, sql: str, dbname: str = "postgres", timeout: float = 10,
             check: bool = True) -> str:
        """SQL over the node's own Unix socket, as the postgres user (not over the net);
        on stdin, so that a password in it never shows in a process list."""
        result = self.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", dbname],
                          timeout=timeout, check=check, input=sql)
        return result.stdout.strip()

    def autoctl(self, *args: str, timeout: float = 300) -> str:
        return self.run(["pg_autoctl", *args], timeout=timeout).stdout

    # --- services ----------------------------------------------------------------------

    def add_service(self, name: str, command: list[str], user: str = "postgres",
                    env: dict[str, str] | None = None) -> Service:
        """Supervise `command` in this node from now on (started at once if powered)."""
        service = Service(name, self.argv(command, user, env),
                          self.lab.base / "logs" / f"{self.name}-{name}.log")
        self.services[name] = service
        if self.powered:
            self._start(service)
        return service

    def _start(self, service: Service) -> None:
        thread = threading.Thread(target=self._supervise, args=(service,), daemon=True,
                                  name=f"{self.name}/{service.name}")
        service.thread = thread
        thread.start()

    def _supervise(self, service: Service) -> None:
        while self.powered and not self.lab.closing:
            with open(service.log, "ab") as log:
                service.process = subprocess.Popen(service.argv, stdout=log,
                                                   stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)
            code = service.process.wait()
            if code == 0 or not self.powered or self.lab.closing:
                return
            time.sleep(RESTART_DELAY)
            service.restarts += 1

    def service_pid(self, name: str) -> int:
        process = self.services[name].process
        assert process is not None
        return process.pid

    def postmaster_pid(self) -> int:
        return int((self.root / PGDATA.lstrip("/") / "postmaster.pid")
                   .read_text().split()[0])

    # --- faults ----------------------------------------------------------------------------

    def kill_postgres(self) -> None:
        """SIGKILL the postmaster; its keeper restarts it (or asks for a failover)."""
        os.kill(self.postmaster_pid(), signal.SIGKILL)

    def kill_service(self, name: str = "pg_autoctl") -> None:
        """SIGKILL one supervised service; the supervisor restarts it after 1 s."""
        os.kill(self.service_pid(name), signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP every process of the node (a hung machine)."""
        signal_netns(self.ns, signal.SIGSTOP)

    def thaw(self) -> None:
        signal_netns(self.ns, signal.SIGCONT)

    def power_off(self) -> None:
        """SIGKILL every process of the node; its disk (the overlay) stays as it was."""
        self.powered = False
        kill_netns(self.ns)
        # A machine that is off answers nothing, for no address: its link goes down and
        # every address it held (the floating one too) is gone when it comes back.
        run("ip", "-n", self.ns, "link", "set", "eth0", "down")
        run("ip", "-n", self.ns, "addr", "flush", "dev", "eth0")
        for service in self.services.values():
            if service.thread is not None:
                service.thread.join(timeout=10)

    def power_on(self) -> None:
        """Boot again: clear /tmp and /run (tmpfs on a real machine), start the services."""
        for sub in ("tmp", "run"):
            run("umount", "-l", str(self.root / sub), check=False)
        self.lab.mount_tmpfs(self)
        run("ip", "-n", self.ns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        run("ip", "-n", self.ns, "link", "set", "eth0", "up")
        self.powered = True
        for service in self.services.values():
            self._start(service)


class Lab:
    """The whole lab; `with Lab() as lab:` or start()/close()."""

    def __init__(self, image: Path = IMAGE) -> None:
        self.image = image
        self.base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        self.closing = False
        self.nodes: dict[str, Node] = {}
        self.passwords = {name: secrets.token_urlsafe(24) for name in
                          ("autoctl_node", "pgautofailover_replicator",
                           "pgautofailover_monitor", "kura_lab")}
        self.timings: dict[str, float] = {}
        self._cuts: dict[str, tuple[str, ...]] = {}

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- set-up -------------------------------------------------------------------------

    def start(self) -> None:
        leftovers = [line for line in clean_leftovers() if str(self.base) not in line]
        # mkdtemp made our own base; the clean-up above spared nothing of ours but the dir.
        self.base.mkdir(parents=True, exist_ok=True)
        if leftovers:
            print("removed leftovers of an earlier lab:", ", ".join(leftovers))
        atexit.register(self.close)
        (self.base / "logs").mkdir()
        began = time.monotonic()
        self._mount_image()
        self._network()
        self._tls()
        self.timings["machines"] = time.monotonic() - began

    def _mount_image(self) -> None:
        offset, size = root_partition(self.image)
        lower = self.base / "image-root"
        lower.mkdir()
        run("mount", "-o", f"ro,loop,offset={offset},sizelimit={size}", str(self.image),
            str(lower))
        for name in ("witness", *DATA_NODES):
            top = self.base / name
            for sub in ("upper", "work", "root"):
                (top / sub).mkdir(parents=True)
            root = top / "root"
            run("mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={lower},upperdir={top / 'upper'},workdir={top / 'work'}", str(root))
            run("mount", "--bind", "/dev", str(root / "dev"))
            run("mount", "-t", "proc", "proc", str(root / "proc"))
            node = Node(name, ADDRESSES[name], root, self)
            self.mount_tmpfs(node)
            daemons = root / "opt/kura/daemons"
            daemons.mkdir(parents=True, exist_ok=True)
            run("mount", "--bind", str(REPO / "daemons"), str(daemons))
            run("mount", "-o", "remount,bind,ro", str(daemons))
            self.nodes[name] = node

    def mount_tmpfs(self, node: Node) -> None:
        for sub, mode in (("tmp", "1777"), ("run", "755"), ("dev/shm", "1777")):
            run("mount", "-t", "tmpfs", "-o", f"mode={mode},nosuid,nodev",
                f"kl-{node.name}", str(node.root / sub))
        # no namespace needed (nor there yet at first): a plain chroot
        run("chroot", str(node.root), "install", "-d", "-o", "postgres", "-g", "postgres",
            "-m", "2775", "/run/postgresql")

    def _network(self) -> None:
        switch = NS_PREFIX + "switch"
        run("ip", "netns", "add", switch)
        run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", switch, "link", "set", "br0", "up")
        for name, address in ADDRESSES.items():
            ns = NS_PREFIX + name
            run("ip", "netns", "add", ns)
            port = f"p-{name}"[:15]
            run("ip", "link", "add", port, "netns", switch, "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")

    def _tls(self) -> None:
        """A lab CA and one server certificate per node (its address as IP SAN)."""
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kura-halab CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(hours=1))
              .not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
        ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        self.ca_file = self.base / "ca.crt"
        self.ca_file.write_bytes(ca_pem)
        for node in self.nodes.values():
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                node.address)]))
                    .issuer_name(ca_name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(hours=1))
                    .not_valid_after(now + datetime.timedelta(days=2))
                    .add_extension(x509.SubjectAlternativeName(
                        [x509.IPAddress(ipaddress.ip_address(node.address))]), critical=False)
                    .sign(ca_key, hashes.SHA256()))
            tls = node.root / TLS_DIR.lstrip("/")
            tls.mkdir(parents=True)
            (tls / "ca.crt").write_bytes(ca_pem)
            (tls / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (tls / "server.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            (tls / "server.key").chmod(0o600)
            # The password file: every account of the formation, readable by postgres only.
            pgpass = node.root / PGPASS.lstrip("/")
            pgpass.write_text("".join(f"*:*:*:{user}:{password}\n"
                                      for user, password in self.passwords.items()))
            pgpass.chmod(0o600)
            run("chroot", str(node.root), "chown", "-R", "postgres:postgres", TLS_DIR, PGPASS)
        # the client's own password file (the client runs host programs)
        self.client_pgpass = self.base / "client.pgpass"
        self.client_pgpass.write_text(f"*:*:*:kura_lab:{self.passwords['kura_lab']}\n")
        self.client_pgpass.chmod(0o600)

    def _tls_options(self, node: Node) -> list[str]:
        return ["--ssl-ca-file", f"{TLS_DIR}/ca.crt", "--server-cert", f"{TLS_DIR}/server.crt",
                "--server-key", f"{TLS_DIR}/server.key", "--ssl-mode", "verify-full"]

    def create_formation(self) -> None:
        """Monitor on the witness, node-a then node-b; supervised `pg_autoctl run` on each."""
        began = time.monotonic()
        witness = self.nodes["witness"]
        witness.autoctl("create", "monitor", "--pgdata", PGDATA, "--pgport", "5432",
                        "--pgctl", f"{PG_BIN}/pg_ctl", "--hostname", witness.address,
                        "--auth", "scram-sha-256", *self._tls_options(witness))
        witness.add_service("pg_autoctl", ["pg_autoctl", "run", "--pgdata", PGDATA])
        self._wait(lambda: witness.psql("select 1", "pg_auto_failover", check=False) == "1",
                   60, "monitor up")
        witness.psql(f"ALTER ROLE autoctl_node PASSWORD '{self.passwords['autoctl_node']}'",
                     "pg_auto_failover")
        for guc, (value, _default, _why) in TIMERS["monitor"].items():
            witness.psql(f"ALTER SYSTEM SET {guc} = '{value}'", "pg_auto_failover")
        witness.psql("SELECT pg_reload_conf()", "pg_auto_failover")
        monitor = (f"postgres://autoctl_node@{witness.address}:5432/pg_auto_failover"
                   f"?sslmode=verify-full&sslrootcert={TLS_DIR}/ca.crt")
        for name in DATA_NODES:
            node = self.nodes[name]
            node.autoctl("create", "postgres", "--pgdata", PGDATA, "--pgport", "5432",
                         "--pgctl", f"{PG_BIN}/pg_ctl", "--hostname", node.address,
                         "--name", name, "--monitor", monitor, "--auth", "scram-sha-256",
                         "--replication-quorum", "true", *self._tls_options(node))
            for setting, (value, _default, _why) in TIMERS["keeper"].items():
                node.autoctl("config", "set", "--pgdata", PGDATA, setting, value)
            node.add_service("pg_autoctl", ["pg_autoctl", "run", "--pgdata", PGDATA])
            if name == "node-a":
                self._wait(lambda first=node: self.states().get("node-a") == ("single", "single")
                           and first.psql("SELECT 1", check=False) == "1", 90, "node-a single")
                self._prepare_primary(node)
        self.wait_stable(120)
        self.timings["formation"] = time.monotonic() - began

    def _prepare_primary(self, node: Node) -> None:
        """Passwords, the lab's client account and tables, and the PostgreSQL timers; all
        of it reaches the standby with its base backup."""
        for user in ("pgautofailover_replicator", "pgautofailover_monitor"):
            node.psql(f"ALTER ROLE {user} PASSWORD '{self.passwords[user]}'")
        node.psql(f"CREATE ROLE kura_lab LOGIN PASSWORD '{self.passwords['kura_lab']}'")
        node.psql("CREATE TABLE lab_writes (id bigint PRIMARY KEY, node text, "
                  "at timestamptz DEFAULT clock_timestamp());"
                  "CREATE TABLE lab_probe (id bigserial PRIMARY KEY, node text, "
                  "at timestamptz DEFAULT clock_timestamp());"
                  "GRANT INSERT, SELECT ON lab_writes, lab_probe TO kura_lab;"
                  "GRANT USAGE ON SEQUENCE lab_probe_id_seq TO kura_lab")
        for guc, (value, _default, _why) in TIMERS["postgresql"].items():
            node.psql(f"ALTER SYSTEM SET {guc} = '{value}'")
        hba = node.root / PGDATA.lstrip("/") / "pg_hba.conf"
        with hba.open("a") as rules:
            rules.write(f"hostssl postgres kura_lab {SUBNET}.0/24 scram-sha-256\n")
        node.psql("SELECT pg_reload_conf()")

    # --- observing ---------------------------------------------------------------------

    def states(self) -> dict[str, tuple[str, str]]:
        """{node name: (reported state, goal state)} as the monitor sees them."""
        out = self.nodes["witness"].psql(
            "SELECT nodename, reportedstate, goalstate FROM pgautofailover.node",
            "pg_auto_failover", check=False, timeout=5)
        states = {}
        for line in out.splitlines():
            name, reported, goal = line.split("|")
            states[name] = (reported, goal)
        return states

    def primary(self) -> str | None:
        """The node the monitor holds as primary (reported and goal agree), if any."""
        for name, (reported, goal) in self.states().items():
            if reported == goal and reported in ("primary", "wait_primary", "single"):
                return name
        return None

    def other(self, name: str) -> str:
        return next(n for n in DATA_NODES if n != name)

    def stable(self) -> bool:
        states = sorted(self.states().values())
        return states == [("primary", "primary"), ("secondary", "secondary")]

    def wait_stable(self, timeout: float = 90) -> str:
        """Wait for one primary and one secondary in step; return the primary's name."""
        self._wait(self.stable, timeout, "a stable formation (primary + secondary)")
        primary = self.primary()
        assert primary is not None
        return primary

    def wait_primary(self, name: str, timeout: float = 60) -> None:
        self._wait(lambda: self.primary() == name, timeout, f"{name} primary")

    def in_recovery(self, name: str) -> bool | None:
        """pg_is_in_recovery() of a node over its socket; None when it does not answer."""
        out = self.nodes[name].psql("SELECT pg_is_in_recovery()", check=False, timeout=5)
        return {"t": True, "f": False}.get(out)

    def synchronous_standby_names(self, name: str) -> str:
        return self.nodes[name].psql("SHOW synchronous_standby_names")

    def acknowledged_present(self, name: str, ids: set[int]) -> set[int]:
        """The acknowledged ids missing on node `name`."""
        out = self.nodes[name].psql("SELECT id FROM lab_writes", timeout=30)
        present = {int(x) for x in out.split()}
        return ids - present

    @staticmethod
    def _wait(check: object, timeout: float, what: str) -> None:
        assert callable(check)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    # --- network faults ------------------------------------------------------------------

    def cut(self, name: str, peers: tuple[str, ...] | None = None) -> None:
        """Cut node `name` off from `peers` (default: the other two of witness, node-a,
        node-b), both ways, with blackhole routes for the peers' /32 in the node's
        namespace and for the node's /32 in each peer's. The client's path stays open.

        Why routes and not nftables: the lab's kernel has neither nf_tables, tc actions
        nor the prio qdisc, and the image ships no nft. A blackhole route drops a packet
        silently, so a peer's connection attempt or an established stream just goes
        quiet, as on a broken link; only the cut node's own new connection attempts fail
        at once (EINVAL) instead of timing out, which detects nothing sooner on the
        other side."""
        if peers is None:
            peers = tuple(n for n in ("witness", *DATA_NODES) if n != name)
        for peer in peers:
            run("ip", "-n", NS_PREFIX + name, "route", "add", "blackhole",
                f"{ADDRESSES[peer]}/32")
            run("ip", "-n", NS_PREFIX + peer, "route", "add", "blackhole",
                f"{ADDRESSES[name]}/32")
        self._cuts[name] = peers

    def heal(self, name: str) -> None:
        for peer in self._cuts.pop(name, ()):
            run("ip", "-n", NS_PREFIX + name, "route", "del", "blackhole",
                f"{ADDRESSES[peer]}/32", check=False)
            run("ip", "-n", NS_PREFIX + peer, "route", "del", "blackhole",
                f"{ADDRESSES[name]}/32", check=False)

    # --- the client ----------------------------------------------------------------------

    def client(self, mode: str, targets: list[str], start_id: int = 1) -> ClientProcess:
        """Start tests/ha/writer.py in the client namespace (host Python, lab CA)."""
        log = self.base / "logs" / f"client-{mode}-{time.time():.3f}.log"
        env = {**os.environ, "PGPASSFILE": str(self.client_pgpass),
               "PYTHONPATH": f"{REPO / 'daemons'}:{REPO}"}
        argv = ["ip", "netns", "exec", NS_PREFIX + "client",
                os.environ.get("KURA_LAB_PYTHON", sys.executable),
                "-m", "tests.ha.writer", mode, "--ca", str(self.ca_file),
                "--start-id", str(start_id), *targets]
        out = log.open("wb")
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO)
        return ClientProcess(process, log)

    # --- tear-down -------------------------------------------------------------------------

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        for ns in lab_namespaces():
            signal_netns(ns, signal.SIGCONT)
            signal_netns(ns, signal.SIGTERM)
        time.sleep(0.5)
        for ns in lab_namespaces():
            kill_netns(ns)
        for point in lab_mounts():
            if point.startswith(str(self.base)):
                run("umount", "-l", point, check=False)
        for ns in lab_namespaces():
            run("ip", "netns", "del", ns, check=False)
        keep = os.environ.get("KURA_LAB_KEEP_LOGS")
        if keep:
            shutil.copytree(self.base / "logs", keep, dirs_exist_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class ClientProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def acked(self) -> set[int]:
        return {int(line.split()[1]) for line in self.lines() if line.startswith("ack ")}

    def acks(self) -> list[tuple[int, float, float, str]]:
        """(id, start, end, target) of every acknowledged write."""
        result = []
        for line in self.lines():
            parts = line.split()
            if parts and parts[0] == "ack" and len(parts) >= 5:
                result.append((int(parts[1]), float(parts[2]), float(parts[3]), parts[4]))
        return result

    def latencies(self) -> list[tuple[float, float]]:
        """(end, seconds) of every acknowledged write that reported its own latency."""
        return [(float(parts[3]), float(parts[5])) for parts in map(str.split, self.lines())
                if parts and parts[0] == "ack" and len(parts) >= 6]

    def first_ack_after(self, t: float) -> tuple[float, str] | None:
        """End time and target of the first write begun after `t` that was acknowledged."""
        for _id, start, end, target in self.acks():
            if start >= t:
                return end, target
        return None

    def probe_rounds(self) -> list[dict[str, bool]]:
        rounds = []
        for line in self.lines():
            parts = line.split()
            if parts and parts[0] == "probe":
                rounds.append({k: v == "1" for k, v in
                               (p.split("=") for p in parts[2:] if "=" in p)})
        return rounds

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def lab_with_formation(image: Path = IMAGE) -> Iterator[Lab]:
    lab = Lab(image)
    try:
        lab.start()
        lab.create_formation()
        yield lab
    finally:
        lab.close()
