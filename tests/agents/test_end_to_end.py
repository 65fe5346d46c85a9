"""The endpoint agents as an SA and a clerk meet them, on a LAN in network
namespaces: the appliance (kura-policy in front of a real vault), a clerk's
PC and a business server each running the real kura-agent with nftables, an
allowed web host and an outside host.

Every check is a real TCP connection: what the clerk's PC reaches, what the
business server accepts, how fast a policy saved in the console is enforced,
what stays enforced while the appliance is away, and what an insider's
tampering with the stored bundles achieves (nothing, and it is audited)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kura.devserver import LocalAppliance
from tests.agents.topology import Lan
from tests.conftest import new_appliance
from tests.support import Api, first_da, provision

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

HOSTS = {"appl": "192.0.2.1", "clerk": "192.0.2.21", "srv": "192.0.2.31",
         "web": "192.0.2.41", "out": "192.0.2.99"}
DB_PORT, SSH_PORT = 5432, 22  # what the business server offers (listeners, not daemons)
PUSH_WITHIN = 5.0  # the bound: a saved policy changes the traffic within 5 s


def clerk_policy(*extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "allow": [{"to": HOSTS["web"], "proto": "tcp", "ports": [443]},
                  {"to": HOSTS["srv"], "proto": "tcp", "ports": [DB_PORT]}, *extra],
        "dns": [], "ntp": [], "usb_mass_storage": "block",
        "require_disk_encryption": False, "max_security_updates": None,
    }


SERVER_POLICY = {
    "protect": [{"proto": "tcp", "ports": [DB_PORT], "from": "clerk-pcs"}],
    "usb_mass_storage": "block", "require_disk_encryption": False,
    "max_security_updates": None,
}


@dataclass
class Site:
    lan: Lan
    app: LocalAppliance
    sa: Api
    folder: Path
    policy: subprocess.Popen[str] | None = None
    agents: dict[str, subprocess.Popen[str]] | None = None

    # --- the appliance's kura-policy, inside the appliance's namespace ---------------

    def start_policy(self) -> None:
        log = open(self.folder / "policy.log", "a")  # noqa: SIM115 (the child owns it)
        self.policy = self.lan.spawn("appl", [sys.executable, "-m", "kura.policy.main",
                                              "--config", str(self.app.config_path)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while not self.lan.reaches("clerk", "appl", self.app.policy_port, timeout=0.5):
            assert self.policy.poll() is None, (self.folder / "policy.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "kura-policy did not start"
            time.sleep(0.2)

    def stop_policy(self) -> None:
        assert self.policy is not None
        self.policy.terminate()
        self.policy.wait(10)  # open streams are closed at once, not waited for

    # --- the agents --------------------------------------------------------------------

    def state(self, host: str) -> Path:
        return self.folder / host

    def agent(self, host: str, *args: str, check: bool = True, stdin: str | None = None
              ) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.lan.ns(host), sys.executable, "-m", "kura.agent.cli",
                *args[:1], "--state", str(self.state(host)),
                "--usbguard-rules", str(self.state(host) / "usbguard.conf"), *args[1:]]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                              input=stdin)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def enroll(self, host: str, profile: str) -> str:
        token = self.sa.post("/agents/tokens", {"profile": profile, "label": host})
        assert token.status in (200, 201), token.body
        t = token.json
        assert t["server"] == f"https://{HOSTS['appl']}:{self.app.policy_port}"
        # The token on stdin, as a careful SA types it: never in the process list.
        self.agent(host, "enroll", "--server", t["server"], "--token", "-",
                   "--fingerprint", t["fingerprint"], "--hostname", host,
                   stdin=t["token"] + "\n")
        return str(t["token"])

    def run(self, host: str) -> None:
        assert self.agents is not None
        log = open(self.folder / f"{host}.log", "a")  # noqa: SIM115 (the child owns it)
        self.agents[host] = self.lan.spawn(
            host, [sys.executable, "-m", "kura.agent.cli", "run", "--state",
                   str(self.state(host)), "--usbguard-rules",
                   str(self.state(host) / "usbguard.conf")],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KURA_LOG_LEVEL": "INFO"})
        log.close()

    def stop_agent(self, host: str) -> None:
        assert self.agents is not None
        self.agents[host].terminate()
        self.agents[host].wait(20)

    def enforced(self, host: str) -> int:
        """The serial of the bundle ``host``'s agent enforces (from its status)."""
        out = self.agent(host, "status").stdout
        for line in out.splitlines():
            if line.startswith("enforced bundle: serial "):
                return int(line.split()[3])
        return 0

    # --- the SA ---------------------------------------------------------------------------

    def save(self, profile: str, policy: dict[str, Any], tests: list[dict[str, Any]]
             ) -> Any:
        current = self.sa.get(f"/agents/policy/{profile}")
        assert current.status == 200, current.body
        return self.sa.put(f"/agents/policy/{profile}", {
            "policy": policy, "tests": tests, "version": current.json["version"]})

    def audit(self, action: str) -> list[dict[str, Any]]:
        r = self.sa.get("/audit", query={"action": action, "limit": 200})
        assert r.status == 200, r.body
        return [e for e in r.json["entries"] if e["action"] == action]

    def wait_audited(self, action: str, reason: str, within: float = 40) -> None:
        """Until an ``action`` entry with ``detail.reason == reason`` is in the audit."""
        deadline = time.monotonic() + within
        while not any(e["detail"].get("reason") == reason for e in self.audit(action)):
            assert time.monotonic() < deadline, f"no {action} ({reason}) within {within:.0f} s"
            time.sleep(0.5)

    def agents_list(self) -> dict[str, dict[str, Any]]:
        r = self.sa.get("/agents")
        assert r.status == 200, r.body
        return {a["hostname"]: a for a in r.json["agents"]}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("agents-e2e")
    os.chmod(folder, 0o755)  # noqa: S103
    app = new_appliance("agents-e2e")
    # kura-policy serves the LAN from the appliance's namespace (the devserver's
    # own, on loopback, is stopped below); the vault is reached by its socket.
    app.extra_config = {"policy": {"listen": "0.0.0.0"}}  # noqa: S104 (its own namespace)
    with Lan("ka-e2e") as lan:
        for host, address in HOSTS.items():
            lan.add(host, address)
        lan.listen("web", 443, 80)
        lan.listen("out", 443, 80)
        lan.listen("srv", DB_PORT, SSH_PORT)
        app.start()
        app.stop_daemon("policy")
        s: Site | None = None  # a failure before it exists must not hide behind a NameError
        try:
            admin = first_da(app)
            sa = provision(admin, "sa-agents", "SA")
            s = Site(lan, app, sa, folder, agents={})
            s.start_policy()
            yield s
        finally:
            if s is not None:
                for proc in (s.agents or {}).values():
                    proc.terminate()
                if s.policy is not None:
                    s.policy.terminate()
            app.stop()
            shutil.rmtree(app.state.parent, ignore_errors=True)


def test_enrolled_agents_enforce_the_pushed_policy(site: Site) -> None:
    lan = site.lan
    tests = [{"from": "outside", "to": HOSTS["srv"], "port": DB_PORT, "expect": "blocked"}]
    assert site.save("clerk-pc", clerk_policy(), []).status == 200
    # The server is not enrolled yet: the case cannot hold, and saving says so.
    early = site.save("business-server", SERVER_POLICY, tests)
    assert early.status == 422 and early.json["error"]["detail"]["failed"][0]["got"] == "reach"
    assert site.save("business-server", SERVER_POLICY, []).status == 200
    # Before any agent: everyone reaches everything.
    assert lan.reaches("clerk", "out", 443) and lan.reaches("out", "srv", DB_PORT)

    site.enroll("clerk", "clerk-pc")
    reused = site.enroll("srv", "business-server")
    site.run("clerk")
    site.run("srv")

    # The clerk's PC: the appliance and the allowed host, nothing else.
    lan.wait_reaches("clerk", "out", 443, want=False, within=15)
    assert lan.reaches("clerk", "appl", site.app.policy_port)
    assert lan.reaches("clerk", "web", 443)
    assert not lan.reaches("clerk", "web", 80, timeout=0.5)
    # The business server: its database port only from the enrolled clerk PC.
    lan.wait_reaches("out", "srv", DB_PORT, want=False, within=15)
    lan.wait_reaches("clerk", "srv", DB_PORT, want=True, within=15)
    assert lan.reaches("out", "srv", SSH_PORT), "an unprotected port stays open"
    assert lan.reaches("out", "web", 80), "the outside host itself is not restricted"

    # A token works once (here given the old way, on the command line).
    again = site.agent("out", "enroll", "--server",
                       f"https://{HOSTS['appl']}:{site.app.policy_port}", "--token", reused,
                       "--fingerprint", site.sa.get("/agents/ca").json["fingerprint"],
                       check=False)
    assert again.returncode != 0 and "used" in (again.stderr + again.stdout)
    assert any(e["detail"].get("reason") == "used" for e in site.audit("agent.enrol_refused"))

    # Now the case holds and the policy saves with it.
    assert site.save("business-server", SERVER_POLICY, tests).status == 200
    listed = site.agents_list()
    assert {"clerk", "srv"} <= set(listed)
    assert listed["clerk"]["address"] == HOSTS["clerk"]


def test_a_policy_saved_in_the_console_changes_the_traffic_within_seconds(site: Site) -> None:
    lan = site.lan
    saved = site.save("clerk-pc", clerk_policy({"to": HOSTS["out"], "proto": "tcp",
                                                "ports": [443]}), [])
    assert saved.status == 200, saved.body
    opened = lan.wait_reaches("clerk", "out", 443, want=True, within=PUSH_WITHIN)
    saved = site.save("clerk-pc", clerk_policy(), [])
    closed = lan.wait_reaches("clerk", "out", 443, want=False, within=PUSH_WITHIN)
    print(f"\npolicy saved → traffic changed: opened {opened:.2f} s, closed {closed:.2f} s")


def test_a_policy_that_fails_its_own_tests_changes_nothing(site: Site) -> None:
    before = site.enforced("clerk")
    case = {"from": f"address:{HOSTS['clerk']}", "to": HOSTS["out"], "port": 443,
            "expect": "reach"}
    refused = site.save("clerk-pc", clerk_policy(), [case])
    assert refused.status == 422 and refused.error_code == "policy_tests_failed"
    time.sleep(2)
    assert site.enforced("clerk") == before
    assert not site.lan.reaches("clerk", "out", 443, timeout=0.5)
    assert site.audit("agent.policy_refused")


def _tamper(site: Site, sql: str) -> None:
    with psycopg.connect(site.app.cluster.dsn("kura_owner"), autocommit=True) as db:
        db.execute(sql)


def test_tampered_and_replayed_bundles_are_refused_and_audited(site: Site) -> None:
    """An insider with the database owner's password rewrites the newest
    clerk-pc bundle (USB allowed, the outside host open), then replays an
    older one under a new serial. Neither is enforced; both are reported."""
    lan = site.lan
    enforced = site.enforced("clerk")
    site.stop_policy()
    _tamper(site, "UPDATE agent_bundles SET body = convert_to(replace(convert_from(body, "
                  "'UTF8'), '\"block\"', '\"allow\"'), 'UTF8') WHERE serial = (SELECT max(serial) "
                  "FROM agent_bundles WHERE profile = 'clerk-pc')")
    site.start_policy()
    site.wait_audited("agent.bundle_refused", "bad_signature")  # the tampered bundle
    assert site.enforced("clerk") == enforced

    site.stop_policy()
    _tamper(site, "INSERT INTO agent_bundles (serial, profile, version, issued, body, signature) "
                  "SELECT nextval('agent_bundles_serial_seq'), profile, version, issued, body, "
                  "signature FROM agent_bundles WHERE profile = 'clerk-pc' ORDER BY serial "
                  "LIMIT 1")
    site.start_policy()
    site.wait_audited("agent.bundle_refused", "older")  # the replayed bundle
    assert site.enforced("clerk") == enforced
    assert not lan.reaches("clerk", "out", 443, timeout=0.5)


def test_enforcement_outlasts_the_appliance_and_an_agent_restart(site: Site) -> None:
    lan = site.lan
    site.stop_policy()
    site.stop_agent("clerk")
    site.run("clerk")
    time.sleep(3)  # the restarted agent finds no appliance
    assert not lan.reaches("clerk", "out", 443, timeout=0.5)
    assert lan.reaches("clerk", "web", 443)
    # Saved while the agents cannot hear it; taken when the appliance is back.
    opened = site.save("clerk-pc", clerk_policy({"to": HOSTS["out"], "proto": "tcp",
                                                 "ports": [443]}), [])
    assert opened.status == 200
    time.sleep(1)
    assert not lan.reaches("clerk", "out", 443, timeout=0.5)
    site.start_policy()
    took = lan.wait_reaches("clerk", "out", 443, want=True, within=45)
    print(f"\nappliance back → newer bundle enforced after {took:.1f} s")
    assert site.save("clerk-pc", clerk_policy(), []).status == 200
    lan.wait_reaches("clerk", "out", 443, want=False, within=PUSH_WITHIN)


def test_a_revoked_terminal_loses_the_business_server_at_once(site: Site) -> None:
    clerk = site.agents_list()["clerk"]
    r = site.sa.post(f"/agents/{clerk['agent_id']}/revoke", {"reason": "lost laptop"})
    assert r.status == 200, r.body
    lan = site.lan
    lost = lan.wait_reaches("clerk", "srv", DB_PORT, want=False, within=PUSH_WITHIN)
    print(f"\nrevoked → business server closed to the terminal after {lost:.2f} s")
    assert site.audit("agent.revoke")
    assert site.agents_list()["clerk"]["state"] == "revoked"
    # The revoked agent keeps its last bundle (it cannot be told to stop).
    assert not lan.reaches("clerk", "out", 443, timeout=0.5)
