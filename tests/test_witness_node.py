"""A witness and a primary for real, as first boot makes them, with the appliance's own
PostgreSQL 17 and pg_auto_failover 2.2: ``kura witness init`` and ``enrol`` on one
machine, first boot's role and database steps (kura_firstboot.ha) from the enrol code
and the enrolment file on the other, each in its own private mount and network
namespace (the image's root read-only with an overlay) joined by a veth pair. The node
registers with the monitor over TLS verify-full, the monitor's health checks reach it
(its certificate from the witness's CA), and Kura's database and schema are there. The
keeper's unit is stood in for by a background ``pg_autoctl run`` (no systemd). No
named network namespace is made, nothing of the HA lab (kl-*) is touched.

Needs root and out/kura.raw; skipped otherwise. About 30 s."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kura.core import witness as core
from kura_firstboot import ha
from tests.test_witness_monitor import IMAGE, root_partition

TOP = Path(__file__).resolve().parent.parent
PATH = "/usr/lib/postgresql/17/bin:/usr/bin:/bin:/usr/sbin:/sbin"
WITNESS, NODE, STANDBY, VIP = "198.51.100.3", "198.51.100.11", "198.51.100.12", "198.51.100.10/24"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not IMAGE.exists() or shutil.which("nsenter") is None,
    reason="needs root, nsenter and the raw image (./build.sh image)")


@dataclass
class Machine:
    name: str
    holder: subprocess.Popen[str]
    pid: int
    root: str

    def argv(self, command: list[str], user: str = "root") -> list[str]:
        as_user = [] if user == "root" else ["runuser", "-u", user, "--"]
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "chroot", self.root, *as_user,
                "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "HOME=/var/lib/postgresql"
                if user == "postgres" else "HOME=/root", *command]

    def run(self, command: list[str], user: str = "root", timeout: float = 120,
            input: str | None = None, check: bool = True) -> str:
        done = subprocess.run(self.argv(command, user), capture_output=True, text=True,
                              timeout=timeout, input=input, check=False)
        if check and done.returncode:
            raise AssertionError(f"{self.name}: {' '.join(command)}: {done.returncode}\n"
                                 f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done.stdout

    def background(self, command: list[str], user: str, log: Path) -> None:
        with log.open("ab") as out:
            subprocess.Popen(self.argv(command, user), stdout=out, stderr=out,
                             start_new_session=True)

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self.run(["psql", "-X", "-At", "-d", db, "-c", sql], "postgres",
                        check=False).strip()


def _netns_pids(pid: int) -> list[int]:
    inode = os.stat(f"/proc/{pid}/ns/net").st_ino
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    found.append(int(entry))
    return found


@contextlib.contextmanager
def machines(work: Path) -> Iterator[tuple[Machine, Machine, Machine]]:
    offset, size = root_partition(IMAGE)
    made: list[Machine] = []
    try:
        for name in ("witness", "node", "standby"):
            holder = subprocess.Popen(
                ["unshare", "-m", "-n", "--propagation", "private", "--fork", "sh", "-c",
                 "echo $$; exec sleep 900"], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
            assert holder.stdout is not None
            pid = int(holder.stdout.readline())
            top = work / name
            subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "sh",
                            str(TOP / "tests/witness/mount_root.sh"), str(IMAGE), str(offset),
                            str(size), str(top), str(TOP)], check=True, capture_output=True,
                           timeout=60)
            made.append(Machine(name, holder, pid, str(top / "root")))
        witness, node, standby = made
        # a bridge in the witness's namespace; the data nodes on veth pairs to it
        tag = f"kwt{os.getpid() % 100000}"
        in_witness = ["nsenter", "-t", str(witness.pid), "-n"]
        subprocess.run([*in_witness, "ip", "link", "add", "br0", "type", "bridge"], check=True)
        subprocess.run([*in_witness, "ip", "addr", "add", f"{WITNESS}/24", "dev", "br0"],
                       check=True)
        subprocess.run([*in_witness, "ip", "link", "set", "br0", "up"], check=True)
        for machine, end, address in ((node, "a", NODE), (standby, "b", STANDBY)):
            subprocess.run(["ip", "link", "add", f"{tag}{end}", "type", "veth", "peer", "name",
                            f"{tag}{end}w"], check=True)
            subprocess.run(["ip", "link", "set", f"{tag}{end}w", "netns", str(witness.pid)],
                           check=True)
            subprocess.run([*in_witness, "ip", "link", "set", f"{tag}{end}w", "master", "br0",
                            "up"], check=True)
            subprocess.run(["ip", "link", "set", f"{tag}{end}", "netns", str(machine.pid)],
                           check=True)
            for args in (["addr", "add", f"{address}/24", "dev", f"{tag}{end}"],
                         ["link", "set", f"{tag}{end}", "up"]):
                subprocess.run(["nsenter", "-t", str(machine.pid), "-n", "ip", *args],
                               check=True)
        yield witness, node, standby
    finally:
        for machine in made:
            # every process of the machine (the holder's sleep last among them): its
            # namespaces, mounts and loop device go with the last one
            for _ in range(50):
                with contextlib.suppress(FileNotFoundError):
                    pids = _netns_pids(machine.pid)
                    for p in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
                    time.sleep(0.1)
                    continue
                break
            machine.holder.wait(timeout=10)
            if machine.holder.stdout is not None:
                machine.holder.stdout.close()


def wait(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_pair_joins_the_witness_from_first_boots_answers() -> None:
    work = Path(tempfile.mkdtemp(prefix="kura-witness-test-"))
    logs = work / "logs"
    logs.mkdir()
    began = time.monotonic()
    try:
        with machines(work) as (witness, node, standby):
            env = ["env", "PYTHONPATH=/opt/kura/daemons"]
            out = witness.run([*env, "python3", "-m", "kura.cli", "witness", "init",
                               "--address", WITNESS])
            code_text = next(line for line in out.splitlines() if "KW1-" in line).split()[-1]
            witness.background(["env", "PGDATA=/var/lib/kura-witness/pgdata",
                                "PGPASSFILE=/var/lib/kura-witness/pgpass", "pg_autoctl",
                                "run"], "postgres", logs / "monitor.log")
            wait(lambda: witness.psql("select 1", "pg_auto_failover") == "1", 30, "monitor")
            witness.run([*env, "python3", "-m", "kura.cli", "witness", "enrol", "--name",
                         "node-a", "--address", NODE, "-o", "/root/node-a.kura-enrol"])
            enrolment = witness.run(["cat", "/root/node-a.kura-enrol"])
            node.run(["sh", "-c", "umask 077; cat > /root/node-a.kura-enrol"], input=enrolment)
            setup = node.run(["python3", "/opt/kura/tests/witness/node_setup.py", code_text,
                              "/root/node-a.kura-enrol", VIP, "primary"], timeout=240)
            assert setup.startswith("applied")

            def registered() -> bool:
                row = witness.psql("select nodename, reportedstate, health "
                                   "from pgautofailover.node", "pg_auto_failover")
                return row == "node-a|single|1"
            wait(registered, 60, "node-a single and healthy at the monitor")
            joined = time.monotonic() - began
            # Kura's database on the node, and nobody but postgres as superuser
            assert int(node.psql("select count(*) from pg_tables where schemaname = "
                                 "'public'", "kura")) > 0
            hba = node.run(["cat", "/var/lib/postgresql/17/kura-ha/pg_hba.conf"])
            rules = [line.split() for line in hba.splitlines()
                     if line.strip() and not line.startswith("#")]
            assert not any(rule[-1] == "trust" for rule in rules), hba
            assert node.psql("show jit") == "off"
            assert node.psql("show wal_sender_timeout") == "3s"
            # The keeper's monitor URI: verify-full against the pinned CA
            cfg = node.run(["sh", "-c", "cat /var/lib/postgresql/.config/pg_autoctl"
                            "/var/lib/postgresql/17/kura-ha/pg_autoctl.cfg"])
            assert "sslmode=verify-full&sslrootcert=/etc/kura-ha/ca.crt" in cfg
            assert core.decode(code_text).address == WITNESS
            # where first boot looks for an unfinished create (ha.INIT_FILE): pg_autoctl's
            # own state folder, the init file gone once create finished
            state_dir = ha.INIT_FILE.rsplit("/", 1)[0]
            listing = node.run(["ls", state_dir]).split()
            assert "pg_autoctl.state" in listing and "pg_autoctl.init" not in listing
            # kura-hasync's monitor connection as kura.toml's [ha] names it (verify-full,
            # its own password file): the image has no kura-hasync user, so as root here
            hasync = ha.hasync_monitor_uri(WITNESS, 5432)
            assert node.run(["psql", "-X", "-At", "-w", hasync, "-c",
                             "select ssl from pg_stat_ssl where pid = pg_backend_pid()"]
                            ).strip() == "t"
            print(f"witness made and primary joined in {joined:.1f} s")

            # The standby: its own enrolment file, the same code; a base backup of the
            # primary over TLS with the replication password the primary was given.
            witness.run([*env, "python3", "-m", "kura.cli", "witness", "enrol", "--name",
                         "node-b", "--address", STANDBY, "-o", "/root/node-b.kura-enrol"])
            standby.run(["sh", "-c", "umask 077; cat > /root/node-b.kura-enrol"],
                        input=witness.run(["cat", "/root/node-b.kura-enrol"]))
            standby.run(["python3", "/opt/kura/tests/witness/node_setup.py", code_text,
                         "/root/node-b.kura-enrol", VIP, "standby"], timeout=240)

            def in_step() -> bool:
                rows = witness.psql("select nodename, reportedstate from pgautofailover.node "
                                    "order by nodename", "pg_auto_failover")
                return rows == "node-a|primary\nnode-b|secondary"
            wait(in_step, 120, "node-a primary and node-b secondary")
            print(f"standby in step after {time.monotonic() - began:.1f} s")
            assert standby.psql("select pg_is_in_recovery()") == "t"
            # synchronous: pg_auto_failover names the standby in ANY 1 (...), "quorum"
            assert node.psql("select sync_state from pg_stat_replication") == "quorum"
            assert node.psql("show synchronous_standby_names").startswith("ANY 1 (")
            ssl = node.psql("select s.ssl from pg_stat_ssl s join pg_stat_replication r "
                            "using (pid)")
            assert ssl == "t"
            # a write on the primary is on the standby (its schema came by base backup)
            node.psql("create table kura_witness_probe (id int); "
                      "insert into kura_witness_probe values (7)", "kura")
            wait(lambda: standby.psql("select id from kura_witness_probe", "kura") == "7", 20,
                 "the write replicated")
    finally:
        keep = os.environ.get("KURA_WITNESS_KEEP_LOGS")
        if keep:
            for name in ("node", "standby"):
                with contextlib.suppress(OSError):
                    shutil.copy(work / name / "upper/var/log/keeper.log",
                                logs / f"{name}-keeper.log")
            shutil.copytree(logs, keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
