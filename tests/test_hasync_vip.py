"""kura-hasync in network namespaces: two data nodes (khs-a, khs-b) and a
client (khs-c) on one bridge; the real daemon runs in each node's namespace
and a real PostgreSQL stands in for pg_auto_failover's monitor, sending the
monitor's own notification payloads on its ``state`` channel. The client sees
what a clerk's machine would: the VIP answers ping from the node the monitor
has made primary, moves when the monitor's states change, is announced by
gratuitous ARP (the client's neighbour entry changes to the new MAC before it
sends anything), and is gone when the daemon stops or fences itself.

The lead's lab proves the same against the real pg_auto_failover."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kura.devserver import free_port
from kura.hasync import control
from kura.pgcluster import Cluster, bindir

TOP = Path(__file__).parent.parent
NAMESPACES = ("khs-a", "khs-b", "khs-c")
NODE_ADDRESSES = {"khs-a": "192.0.2.1/24", "khs-b": "192.0.2.2/24"}
CLIENT_ADDRESS = "192.0.2.100/24"
VIP = "192.0.2.50"
FENCE_SECONDS = 3

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(p) for p in ("ip", "arping", "ping")),
    reason="needs root, ip (iproute2), arping (iputils-arping) and ping (iputils-ping)",
)

# The monitor's schema, cut down to what kura-hasync reads, and its
# notification as src/monitor/notifications.c (pg_auto_failover 2.2) builds it.
MONITOR_SQL = """
CREATE SCHEMA pgautofailover;
CREATE TYPE pgautofailover.replication_state AS ENUM (
    'unknown', 'init', 'single', 'wait_primary', 'primary', 'draining', 'demote_timeout',
    'demoted', 'catchingup', 'secondary', 'prepare_promotion', 'stop_replication',
    'wait_standby', 'maintenance', 'join_primary', 'apply_settings', 'prepare_maintenance',
    'wait_maintenance', 'report_lsn', 'fast_forward', 'join_secondary', 'dropped');
CREATE TABLE pgautofailover.node (
    formationid text NOT NULL DEFAULT 'default',
    nodeid bigserial,
    groupid int NOT NULL DEFAULT 0,
    nodename text NOT NULL,
    nodehost text NOT NULL,
    nodeport int NOT NULL DEFAULT 5432,
    goalstate pgautofailover.replication_state NOT NULL DEFAULT 'init',
    reportedstate pgautofailover.replication_state NOT NULL,
    health integer NOT NULL DEFAULT 1,
    UNIQUE (formationid, nodename));
CREATE FUNCTION pgautofailover.set_state(name text, goal text, reported text)
RETURNS void LANGUAGE sql AS $$
    UPDATE pgautofailover.node
       SET goalstate = goal::pgautofailover.replication_state,
           reportedstate = reported::pgautofailover.replication_state
     WHERE nodename = name;
    SELECT pg_notify('state', format(
        '{"type": "state", "formation": %s, "groupId": %s, "nodeId": %s, "name": %s, '
        '"host": %s, "port": %s, "reportedState": %s, "goalState": %s, "health":%s}',
        to_json(formationid), groupid, nodeid, to_json(nodename), to_json(nodehost), nodeport,
        to_json(reportedstate::text), to_json(goalstate::text),
        to_json(CASE health WHEN 1 THEN 'good' WHEN 0 THEN 'bad' ELSE 'unknown' END)))
      FROM pgautofailover.node WHERE nodename = name;
$$;
-- What pg_autoctl perform switchover calls: the monitor drains the primary
-- and prepares the secondary's promotion (noted in "asked" for the test).
CREATE TABLE pgautofailover.asked (formationid text, groupid int);
CREATE FUNCTION pgautofailover.perform_failover(formation_id text DEFAULT 'default',
                                                group_id int DEFAULT 0)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO pgautofailover.asked VALUES (formation_id, group_id);
    PERFORM pgautofailover.set_state(nodename, CASE reportedstate WHEN 'primary'
            THEN 'draining' ELSE 'prepare_promotion' END, reportedstate::text)
       FROM pgautofailover.node WHERE formationid = formation_id AND groupid = group_id;
END $$;
INSERT INTO pgautofailover.node (nodename, nodehost, goalstate, reportedstate) VALUES
    ('node_a', '192.0.2.1', 'primary', 'primary'),
    ('node_b', '192.0.2.2', 'secondary', 'secondary');
-- The daemons log in to the "monitor" as kura_owner and to "their own
-- PostgreSQL" as kura_vault, so each can be cut off alone.
GRANT USAGE ON SCHEMA pgautofailover TO kura_owner;
GRANT SELECT ON pgautofailover.node TO kura_owner;
GRANT pg_monitor TO kura_vault;
"""


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll until true; the bound is generous, it is not what the test measures."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.2)


def remove_namespaces() -> None:
    for ns in NAMESPACES:
        sh("ip", "netns", "del", ns, check=False)


@dataclass
class Lab:
    base: Path
    cluster: Cluster

    def mac(self, ns: str) -> str:
        return str(json.loads(sh("ip", "-n", ns, "-j", "link", "show", "eth0"))[0]["address"])

    def has_vip(self, ns: str) -> bool:
        addrs = json.loads(sh("ip", "-n", ns, "-j", "addr", "show", "eth0"))[0]["addr_info"]
        return any(a.get("local") == VIP for a in addrs)

    def holders(self) -> list[str]:
        return [ns for ns in NODE_ADDRESSES if self.has_vip(ns)]

    def client_pings_vip(self) -> bool:
        done = subprocess.run(["ip", "netns", "exec", "khs-c", "ping", "-c", "1", "-W", "1",
                               VIP], capture_output=True, timeout=10, check=False)
        return done.returncode == 0

    def client_neighbour_mac(self) -> str | None:
        """The client's ARP entry for the VIP, as it is now (no probe sent)."""
        entries = json.loads(sh("ip", "-n", "khs-c", "-j", "neigh", "show", VIP) or "[]")
        return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None

    def set_state(self, node: str, goal: str, reported: str) -> None:
        """What the monitor does: change a node's states and NOTIFY on 'state'."""
        self.cluster.psql("postgres", f"SELECT pgautofailover.set_state('{node}', '{goal}', "
                                      f"'{reported}');")

    def config(self, ns: str, node: str) -> Path:
        path = self.base / f"{ns}.toml"
        path.write_text(
            f'appliance = "{ns}"\n'
            "[database]\n"
            f'dsn = "{self.cluster.dsn("kura_vault")}"\n'
            "[vault]\n"
            f'socket = "{self.base}/unused.sock"\n'
            f'keys_dir = "{self.base}/unused-keys"\n'
            "[ha]\n"
            f'node = "{node}"\n'
            f'monitor = "{self.cluster.dsn("kura_owner")}"\n'
            f'local_dsn = "{self.cluster.dsn("kura_vault", dbname="postgres")}"\n'
            f'vip = "{VIP}/24"\n'
            'interface = "eth0"\n'
            f"fence_seconds = {FENCE_SECONDS}\n"
            "poll_seconds = 0.5\n"
            f'status_file = "{self.base}/{ns}.status.json"\n'
            f'control_socket = "{self.base}/{ns}.control.sock"\n'
        )
        path.chmod(0o600)  # it holds the database passwords
        return path

    def status(self, ns: str) -> dict[str, object]:
        try:
            return dict(json.loads((self.base / f"{ns}.status.json").read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def start(self, ns: str, node: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=f"{TOP / 'daemons'}:{TOP}")
        log = (self.base / f"{ns}.log").open("ab")
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "kura.hasync.main",
             "--config", str(self.config(ns, node))],
            stdout=log, stderr=log, env=env,
        )

    def log(self, ns: str) -> str:
        path = self.base / f"{ns}.log"
        return path.read_text() if path.exists() else ""


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=20)


@pytest.fixture
def lab() -> Iterator[Lab]:
    remove_namespaces()
    base = Path(tempfile.mkdtemp(prefix="kura-khs-"))
    os.chmod(base, 0o755)  # noqa: S103 (the postgres user must reach its cluster)
    cluster = Cluster(base / "db", free_port())
    try:
        for ns in NAMESPACES:
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", "khs-c", "link", "add", "br0", "type", "bridge")
        for ns, address in NODE_ADDRESSES.items():
            port = f"p{ns[-1]}"
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth",
               "peer", "name", port, "netns", "khs-c")
            sh("ip", "-n", "khs-c", "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", address, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", "khs-c", "addr", "add", CLIENT_ADDRESS, "dev", "br0")
        sh("ip", "-n", "khs-c", "link", "set", "br0", "up")
        cluster.create()
        cluster.psql("postgres", MONITOR_SQL)
        yield Lab(base, cluster)
    finally:
        remove_namespaces()
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_vip_follows_the_monitor_and_leaves_on_stop(lab: Lab) -> None:
    a, b = lab.start("khs-a", "node_a"), lab.start("khs-b", "node_b")
    try:
        wait_until("node_a holds the VIP", lambda: lab.holders() == ["khs-a"])
        wait_until("the client reaches the VIP", lab.client_pings_vip)
        assert lab.client_neighbour_mac() == lab.mac("khs-a")
        assert lab.status("khs-a")["role"] == "primary"
        wait_until("node_b says standby", lambda: lab.status("khs-b").get("role") == "standby")
        # The status file is rewritten every second, changed or not: its age
        # is how the vault tells a live kura-hasync from a stopped one.
        first = lab.status("khs-a")["written_at"]
        wait_until("node_a rewrites its status", lambda: lab.status("khs-a")["written_at"]
                   != first, timeout=5)
        assert lab.status("khs-a")["changed_at"] <= first
        assert (lab.base / "khs-a.control.sock").is_socket()

        # Failover as the monitor runs it: the old primary is told to drain
        # first, the standby is promoted and reports wait_primary.
        lab.set_state("node_a", "draining", "primary")
        wait_until("node_a drops the VIP", lambda: lab.holders() == [])
        # The address goes first, then the status file says why.
        wait_until("node_a says demoted", lambda: lab.status("khs-a").get("role") == "demoted",
                   timeout=5)
        lab.set_state("node_b", "wait_primary", "stop_replication")
        lab.set_state("node_b", "wait_primary", "wait_primary")
        wait_until("node_b holds the VIP", lambda: lab.holders() == ["khs-b"])
        # The gratuitous ARP reached the client: its entry moved to B's MAC
        # before it sent anything to the VIP again.
        wait_until("the client's ARP entry names node_b",
                   lambda: lab.client_neighbour_mac() == lab.mac("khs-b"), timeout=10)
        assert lab.client_pings_vip()
        assert lab.status("khs-b")["role"] == "primary-degraded"
        assert lab.status("khs-b")["degraded"] is True

        # A change the notification of which is lost: the safety poll finds it.
        lab.cluster.psql("postgres", "UPDATE pgautofailover.node SET goalstate = 'demote_timeout'"
                                     " WHERE nodename = 'node_b';")
        wait_until("node_b drops the VIP without a notification", lambda: lab.holders() == [])
        lab.set_state("node_b", "wait_primary", "wait_primary")
        wait_until("node_b holds the VIP again", lambda: lab.holders() == ["khs-b"])

        assert stop(b) == 0
        assert lab.holders() == []
        assert not lab.client_pings_vip()
        assert not (lab.base / "khs-b.control.sock").exists()
    finally:
        for proc in (a, b):
            stop(proc)
    assert "Traceback" not in lab.log("khs-a") + lab.log("khs-b")


def test_isolated_primary_fences_but_not_for_the_witness_alone(lab: Lab) -> None:
    a = lab.start("khs-a", "node_a")
    receiver: subprocess.Popen[bytes] | None = None
    try:
        wait_until("node_a holds the VIP", lambda: lab.holders() == ["khs-a"])
        # A standby streams from node_a: pg_receivewal is a real walsender client.
        wal = lab.base / "wal"
        wal.mkdir()
        shutil.chown(wal, "postgres", "postgres")
        receiver = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(bindir() / "pg_receivewal"),
             "-D", str(wal), "-h", str(lab.cluster.socket_dir), "-p", str(lab.cluster.port),
             "-U", "postgres", "--no-loop"],
            env=dict(os.environ, PGPASSWORD=lab.cluster.password("postgres")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until("node_a sees its standby streaming",
                   lambda: lab.status("khs-a").get("standby_streaming") is True)

        # The witness goes away: node_a can no longer log in to the monitor.
        lab.cluster.psql("postgres", "ALTER ROLE kura_owner NOLOGIN; SELECT pg_terminate_backend"
                                     "(pid) FROM pg_stat_activity WHERE usename = 'kura_owner';")
        wait_until("node_a notices the witness is gone",
                   lambda: lab.status("khs-a").get("witness_reachable") is False)
        time.sleep(FENCE_SECONDS + 2)  # past the fence time: the standby still streams
        assert lab.holders() == ["khs-a"]
        assert lab.status("khs-a")["role"] == "primary"

        # Now the standby goes too: node_a is cut off from both and fences.
        receiver.terminate()
        receiver.wait(timeout=10)
        wait_until("node_a fences itself", lambda: lab.status("khs-a").get("role") == "fenced")
        assert lab.holders() == []
        assert not lab.client_pings_vip()
    finally:
        if receiver is not None and receiver.poll() is None:
            receiver.kill()
        stop(a)
    assert "Traceback" not in lab.log("khs-a")


def switchover(lab: Lab, ns: str) -> dict[str, object]:
    """What the vault asks kura-hasync over its control socket."""
    return asyncio.run(control.ask(lab.base / f"{ns}.control.sock", {"op": "switchover"}, 15))


def test_a_switchover_is_asked_of_the_monitor_only_with_a_synchronous_standby(
    lab: Lab,
) -> None:
    a = lab.start("khs-a", "node_a")
    receiver: subprocess.Popen[bytes] | None = None
    try:
        wait_until("node_a holds the VIP", lambda: lab.holders() == ["khs-a"])
        wait_until("the control socket", (lab.base / "khs-a.control.sock").exists)
        assert switchover(lab, "khs-a")["error"] == "degraded"  # no standby at all
        # A synchronous standby: pg_receivewal, named in synchronous_standby_names.
        lab.cluster.psql("postgres", "ALTER SYSTEM SET synchronous_standby_names ="
                                     " 'pg_receivewal'; SELECT pg_reload_conf();")
        wal = lab.base / "wal"
        wal.mkdir()
        shutil.chown(wal, "postgres", "postgres")
        receiver = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(bindir() / "pg_receivewal"),
             "-D", str(wal), "-h", str(lab.cluster.socket_dir), "-p", str(lab.cluster.port),
             "-U", "postgres", "--no-loop", "--synchronous"],
            env=dict(os.environ, PGPASSWORD=lab.cluster.password("postgres")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until("node_a sees a synchronous standby",
                   lambda: lab.status("khs-a").get("sync_standby") is True)
        standby = lab.status("khs-a")["replication"]["standbys"][0]  # type: ignore[index]
        assert (standby["name"], standby["sync_state"]) == ("pg_receivewal", "sync")
        assert lab.cluster.psql("postgres", "SELECT count(*) FROM pgautofailover.asked"
                                ).strip() == "0"

        assert switchover(lab, "khs-a") == {"ok": True, "group": 0}
        assert lab.cluster.psql("postgres", "SELECT formationid || '/' || groupid"
                                            " FROM pgautofailover.asked").strip() == "default/0"
        # The monitor drains node_a: it gives the address up like in any failover.
        wait_until("node_a drops the VIP", lambda: lab.holders() == [])
        wait_until("node_a says demoted", lambda: lab.status("khs-a").get("role") == "demoted")
        assert switchover(lab, "khs-a")["error"] == "not_primary"
        assert lab.cluster.psql("postgres", "SELECT count(*) FROM pgautofailover.asked"
                                ).strip() == "1"
    finally:
        if receiver is not None and receiver.poll() is None:
            receiver.kill()
        lab.cluster.psql("postgres", "ALTER SYSTEM RESET synchronous_standby_names;"
                                     " SELECT pg_reload_conf();")
        stop(a)
    assert "Traceback" not in lab.log("khs-a")


def test_release_removes_a_vip_left_by_a_killed_daemon(lab: Lab) -> None:
    """The unit's ExecStopPost=: after SIGKILL the address would stay behind."""
    a = lab.start("khs-a", "node_a")
    try:
        wait_until("node_a holds the VIP", lambda: lab.holders() == ["khs-a"])
    finally:
        a.kill()
        a.wait(timeout=10)
    assert lab.holders() == ["khs-a"]
    env = dict(os.environ, PYTHONPATH=f"{TOP / 'daemons'}:{TOP}")
    done = subprocess.run(["ip", "netns", "exec", "khs-a", sys.executable, "-m",
                           "kura.hasync.main", "--config", str(lab.config("khs-a", "node_a")),
                           "--release"], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert lab.holders() == []
