"""The pair's health page and the planned switchover, as the vault answers
them through the JSON API (``GET /api/v1/ha``, ``POST /api/v1/ha/switchover``).

A real appliance (PostgreSQL, kura-vault, kura-console) with an ``[ha]``
section is the primary. kura-hasync's status file is written by its own
``write_status``; its control socket is served by its own ``ControlServer``
(in a thread), which asks a monitor: a database in the appliance's
PostgreSQL with pg_auto_failover's ``pgautofailover.node`` table and a
``perform_failover(formation, group)`` that does what the monitor's does to
the states (primary to draining, secondary to prepare_promotion) and notes
each call. The real monitor on a real pair is the namespace lab's part."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from kura import config as config_module
from kura.config import HaConfig
from kura.core import ha
from kura.devserver import LocalAppliance
from kura.hasync.control import ControlServer
from kura.hasync.main import write_status
from kura.vault.hastatus import last_failover
from tests.conftest import new_appliance
from tests.support import Api, first_da, provision, signed_in

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
    goalstate pgautofailover.replication_state NOT NULL,
    reportedstate pgautofailover.replication_state NOT NULL,
    UNIQUE (formationid, nodename));
CREATE TABLE pgautofailover.asked (formationid text, groupid int, at timestamptz DEFAULT now());
-- As the monitor's own: refuses a group without a secondary, else starts
-- the orderly failover that pg_autoctl perform switchover asks for.
CREATE FUNCTION pgautofailover.perform_failover(formation_id text DEFAULT 'default',
                                                group_id int DEFAULT 0)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pgautofailover.node WHERE formationid = formation_id
                   AND groupid = group_id AND reportedstate = 'secondary') THEN
        RAISE EXCEPTION 'couldn''t find the secondary node in formation "%", group %',
            formation_id, group_id;
    END IF;
    INSERT INTO pgautofailover.asked VALUES (formation_id, group_id);
    UPDATE pgautofailover.node
       SET goalstate = (CASE reportedstate WHEN 'primary' THEN 'draining'
                        ELSE 'prepare_promotion' END)::pgautofailover.replication_state
     WHERE formationid = formation_id AND groupid = group_id;
END $$;
INSERT INTO pgautofailover.node (nodename, goalstate, reportedstate) VALUES
    ('node_a', 'primary', 'primary'), ('node_b', 'secondary', 'secondary');
GRANT USAGE ON SCHEMA pgautofailover TO kura_owner;
GRANT SELECT ON pgautofailover.node TO kura_owner;
"""

PRIMARY = ha.Status(role=ha.Role.PRIMARY, vip_held=True, degraded=False, witness_reachable=True,
                    standby_streaming=True, sync_standby=True, goal="primary",
                    reported="primary", rule="writable-primary")
DEGRADED = replace(PRIMARY, role=ha.Role.PRIMARY_DEGRADED, degraded=True,
                   standby_streaming=False, sync_standby=False, goal="wait_primary",
                   reported="wait_primary")
STREAMING = {"standbys": [{"name": "pgautofailover_standby_2", "state": "streaming",
                           "sync_state": "sync", "lag_bytes": 4096, "lag_seconds": 0.002}]}


@dataclass
class Hasync:
    """What kura-hasync shows the vault: its status file, its control socket."""

    settings: HaConfig
    status: ha.Status | None = PRIMARY  # the control server's own last decision
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    serving: bool = False

    def close(self) -> None:
        """Stop serving the way the daemon stops: its task cancelled."""
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.serving:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)

    def write(self, status: ha.Status, replication: dict[str, Any] | None = None,
              since: float | None = None) -> None:
        assert self.settings.status_file is not None
        write_status(self.settings.status_file, self.settings, status, since=since,
                     replication=replication)
        self.status = status

    def age(self, seconds: float) -> None:
        """As if kura-hasync had stopped ``seconds`` ago."""
        assert self.settings.status_file is not None
        then = time.time() - seconds
        os.utime(self.settings.status_file, (then, then))

    def serve(self) -> None:
        assert self.settings.control_socket is not None
        if self.serving:
            return
        self.serving = True
        server = ControlServer(self.settings.control_socket, self.settings.monitor,
                               self.settings.formation, self.settings.node, lambda: self.status)
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(server.run(), self.loop)
        deadline = time.monotonic() + 10
        while not self.settings.control_socket.exists():
            assert time.monotonic() < deadline, "the control socket did not appear"
            time.sleep(0.05)


@dataclass
class Pair:
    app: LocalAppliance
    hasync: Hasync
    da: Api
    sa: Api
    mu: Api

    def monitor(self, sql: str) -> str:
        return self.app.cluster.psql("postgres", sql, dbname="monitor").strip()

    def reset_monitor(self) -> None:
        self.monitor("DELETE FROM pgautofailover.asked;"
                     "UPDATE pgautofailover.node SET goalstate = reportedstate;")

    def audit(self, action: str) -> list[dict[str, Any]]:
        r = signed_in(self.sa).get("/audit", query={"action": action, "limit": 50})
        assert r.status == 200, r.body[:300]
        return [e for e in r.json["entries"] if e["action"] == action]


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    app = new_appliance("hapair")
    run = app.state / "hasync"
    app.extra_config["ha"] = {
        "node": "node_a",
        "monitor": "",  # filled in below, once the cluster exists
        "local_dsn": "dbname=unused",
        "vip": "192.0.2.10/24",
        "interface": "eth0",
        "status_file": str(run / "status.json"),
        "control_socket": str(run / "control.sock"),
    }
    app.prepare()
    run.mkdir(exist_ok=True)
    app.cluster.psql("postgres", "CREATE DATABASE monitor", dbname="postgres")
    app.cluster.psql("postgres", MONITOR_SQL, dbname="monitor")
    app.extra_config["ha"]["monitor"] = app.cluster.dsn("kura_owner", dbname="monitor")
    app.start()  # writes the configuration again, with the monitor
    settings = config_module.load(app.config_path).ha
    assert settings is not None
    hasync = Hasync(settings)
    da = first_da(app)
    try:
        yield Pair(app, hasync, da, provision(da, "sa-ha", "SA"), provision(da, "mu-ha", "MU"))
    finally:
        hasync.close()
        app.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)


def health(api: Api) -> dict[str, Any]:
    r = signed_in(api).get("/ha")
    assert r.status == 200, (r.status, r.body[:300])
    return dict(r.json)


def switchover(api: Api) -> tuple[int, dict[str, Any]]:
    r = signed_in(api).post("/ha/switchover")
    return r.status, dict(r.json)


def test_a_single_appliance_says_single_and_has_nothing_to_switch(
    users: dict[str, Api]
) -> None:
    shown = health(users["SA"])
    assert (shown["mode"], shown["role"], shown["hasync"], shown["degraded"]) == (
        "single", "single", None, False)
    status, body = switchover(users["DA"])
    assert status == 409
    assert (body["error"]["code"], body["error"]["detail"]["reason"]) == (
        "switchover_refused", "single")
    assert "not one of an HA pair" in body["error"]["message_en"]


def test_only_the_da_switches_over_and_clerks_see_no_health_page(pair: Pair) -> None:
    assert signed_in(pair.mu).get("/ha").status == 403
    assert switchover(pair.sa)[0] == 403
    assert pair.monitor("SELECT count(*) FROM pgautofailover.asked") == "0"


def test_a_missing_or_stale_status_file_is_said_never_a_traceback(pair: Pair) -> None:
    path = pair.hasync.settings.status_file
    assert path is not None
    path.unlink(missing_ok=True)
    shown = health(pair.da)
    assert shown["mode"] == "pair" and shown["role"] == "primary"
    assert shown["hasync"] == {"state": "missing"}
    assert shown["switchover"] == {"possible": False, "refusal": "hasync"}

    pair.hasync.write(DEGRADED)
    pair.hasync.age(60)  # kura-hasync stopped a minute ago
    shown = health(pair.sa)
    assert shown["hasync"]["state"] == "stale" and shown["hasync"]["age_seconds"] >= 59
    assert shown["hasync"]["role"] == "primary-degraded"  # its last words, marked stale
    assert shown["degraded"] is False  # not claimed as the present
    status, body = switchover(pair.da)
    assert (status, body["error"]["detail"]["reason"]) == (409, "hasync")
    assert "kura-hasync is not running" in body["error"]["message_en"]

    path.write_text("{not json")
    assert health(pair.da)["hasync"] == {"state": "unreadable"}


def test_the_health_page_shows_roles_replication_and_the_witness(pair: Pair) -> None:
    since = time.time() - 3600
    pair.hasync.write(PRIMARY, STREAMING, since=since)
    shown = health(pair.da)
    report = shown["hasync"]
    assert report["state"] == "live"
    assert (report["role"], report["sync_standby"], report["witness_reachable"],
            report["rule"], report["node"]) == ("primary", True, True, "writable-primary",
                                                "node_a")
    assert report["since"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    standby = report["replication"]["standbys"][0]
    assert (standby["name"], standby["sync_state"], standby["lag_bytes"]) == (
        "pgautofailover_standby_2", "sync", 4096)
    assert shown["degraded"] is False
    assert shown["switchover"] == {"possible": True, "refusal": None}
    me = signed_in(pair.mu).get("/session").json
    assert me["ha_degraded"] is False


def test_a_degraded_pair_is_flagged_and_refuses_the_switchover(pair: Pair) -> None:
    pair.reset_monitor()
    pair.hasync.write(DEGRADED)
    shown = health(pair.sa)
    assert shown["degraded"] is True
    assert shown["switchover"] == {"possible": False, "refusal": "degraded"}
    # Every signed-in user's pages carry the banner (whoami says so).
    assert signed_in(pair.mu).get("/session").json["ha_degraded"] is True
    denied_before = len(pair.audit("ha.switchover"))
    status, body = switchover(pair.da)
    assert (status, body["error"]["detail"]["reason"]) == (409, "degraded")
    assert "degraded" in body["error"]["message_en"]
    assert "縮退" in body["error"]["message"]
    entries = pair.audit("ha.switchover")
    assert len(entries) == denied_before + 1
    assert entries[0]["outcome"] == "denied" and entries[0]["detail"]["reason"] == "degraded"
    assert pair.monitor("SELECT count(*) FROM pgautofailover.asked") == "0"


def test_the_da_switches_over_through_kura_hasync_and_the_monitor(pair: Pair) -> None:
    pair.reset_monitor()
    pair.hasync.write(PRIMARY, STREAMING)
    pair.hasync.serve()
    status, body = switchover(pair.da)
    assert status == 200, body
    assert (body["started"], body["node"], body["group"]) == (True, "node_a", 0)
    assert pair.monitor("SELECT formationid || '/' || groupid FROM pgautofailover.asked") == (
        "default/0")
    assert pair.monitor("SELECT string_agg(nodename || '=' || goalstate, ' ' ORDER BY nodename)"
                        " FROM pgautofailover.node") == "node_a=draining node_b=prepare_promotion"
    entry = pair.audit("ha.switchover")[0]
    assert (entry["outcome"], entry["actor"], entry["target"]) == ("ok", "admin", "node_a")
    changes = [c for c in health(pair.sa)["role_changes"] if c["action"] == "ha.switchover"]
    assert changes[0]["outcome"] == "ok" and changes[0]["actor"] == "admin"


def test_kura_hasync_and_the_monitor_refuse_too_and_nothing_is_recorded_as_done(
    pair: Pair
) -> None:
    pair.reset_monitor()
    pair.hasync.write(PRIMARY, STREAMING)
    pair.hasync.serve()
    # kura-hasync has just seen the monitor demote this node: its own view wins.
    pair.hasync.status = replace(PRIMARY, role=ha.Role.DEMOTED, vip_held=False)
    status, body = switchover(pair.da)
    assert (status, body["error"]["detail"]["reason"]) == (409, "not_primary")
    # The monitor has no secondary to promote (the standby is rejoining).
    pair.hasync.status = PRIMARY
    pair.monitor("UPDATE pgautofailover.node SET reportedstate = 'catchingup'"
                 " WHERE nodename = 'node_b'")
    try:
        status, body = switchover(pair.da)
    finally:
        pair.monitor("UPDATE pgautofailover.node SET reportedstate = 'secondary'"
                     " WHERE nodename = 'node_b'")
    assert (status, body["error"]["detail"]["reason"]) == (409, "monitor")
    assert "witness" in body["error"]["message_en"]
    entries = pair.audit("ha.switchover")[:2]
    assert [(e["outcome"], e["detail"]["reason"]) for e in entries] == [
        ("denied", "monitor"), ("denied", "not_primary")]
    assert pair.monitor("SELECT count(*) FROM pgautofailover.asked") == "0"


def test_the_vault_records_when_the_pair_degrades_and_when_it_is_back_in_step(
    pair: Pair
) -> None:
    def newest(action: str) -> dict[str, Any] | None:
        found = [c for c in health(pair.sa)["role_changes"] if c["action"] == action]
        return found[0] if found else None

    def wait_for(action: str, after: int) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while True:
            change = newest(action)
            if change is not None and change["seq"] > after:
                return change
            assert time.monotonic() < deadline, f"no new {action} in the log"
            pair.hasync.age(0)  # kura-hasync's heartbeat
            time.sleep(0.3)

    def in_step_in_the_log() -> bool:
        degraded, back = newest("ha.degraded"), newest("ha.in_step")
        return degraded is None or (back is not None and back["seq"] > degraded["seq"])

    # Start in step, as the log says it (an earlier test may have left it degraded).
    pair.hasync.write(PRIMARY, STREAMING)
    deadline = time.monotonic() + 15
    while not in_step_in_the_log():
        assert time.monotonic() < deadline, "the log does not say the pair is in step"
        pair.hasync.age(0)
        time.sleep(0.3)
    start = max([c["seq"] for c in health(pair.sa)["role_changes"]] + [0])
    pair.hasync.write(DEGRADED)
    degraded = wait_for("ha.degraded", start)
    assert (degraded["actor"], degraded["target"]) == ("-", "node_a")
    assert degraded["detail"]["node"] == "node_a"
    pair.hasync.write(PRIMARY, STREAMING)
    back = wait_for("ha.in_step", degraded["seq"])
    time.sleep(2)  # the upkeep runs every second: it says it once, not every second
    assert [c["seq"] for c in health(pair.sa)["role_changes"]
            if c["action"] in ("ha.degraded", "ha.in_step") and c["seq"] >= degraded["seq"]
            ] == [back["seq"], degraded["seq"]]
    assert [e["action"] for e in pair.audit("ha.in_step")][:1] == ["ha.in_step"]


def test_the_last_failover_says_whether_it_was_planned() -> None:
    def change(action: str, minute: int, outcome: str = "ok",
               actor: str = "-") -> dict[str, Any]:
        return {"action": action, "outcome": outcome, "actor": actor,
                "at": f"2026-12-05T07:{minute:02d}:00+00:00",
                "detail": {"previous_role": "standby"} if action == "ha.promoted" else {}}

    planned = [change("ha.promoted", 31), change("ha.degraded", 30),
               change("ha.switchover", 30, actor="admin")]
    assert last_failover(planned) == {"at": "2026-12-05T07:31:00+00:00", "why": "switchover",
                                      "asked_by": "admin", "previous_role": "standby"}
    refused_then_lost = [change("ha.promoted", 31), change("ha.switchover", 30, "denied")]
    assert last_failover(refused_then_lost)["why"] == "failover"
    # A switchover that never led to a promotion explains no later failover.
    long_before = [change("ha.promoted", 59), change("ha.switchover", 1, actor="admin")]
    assert last_failover(long_before)["why"] == "failover"
    assert last_failover([change("ha.paired", 1)]) is None
