"""Endpoint agents' rules, pure (kura.core.agents, kura.core.agentpolicy):
which tokens enrol, when an agent is compliant, which policies are valid,
what a test case says about reachability, and the bundle body."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kura.core import agentpolicy as ap
from kura.core import agents as rules

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _token(used: bool = False, withdrawn: bool = False, expires: timedelta = timedelta(
        minutes=10)) -> dict[str, Any]:
    return {"used_at": NOW if used else None, "withdrawn_at": NOW if withdrawn else None,
            "expires": NOW + expires}


@pytest.mark.parametrize(("row", "reason"), [
    (None, "unknown"),
    (_token(), None),
    (_token(used=True), "used"),
    (_token(used=True, expires=-timedelta(minutes=1)), "used"),
    (_token(withdrawn=True), "withdrawn"),
    (_token(withdrawn=True, expires=-timedelta(minutes=1)), "withdrawn"),
    (_token(expires=timedelta(0)), "expired"),
])
def test_which_token_enrols(row: dict[str, Any] | None, reason: str | None) -> None:
    assert rules.token_refusal(row, NOW) == reason


def test_a_token_is_typed_back_as_shown() -> None:
    token = rules.new_token()
    assert len(token) == 24 and token.count("-") == 4
    assert rules.same_token(token.lower().replace("-", " "), rules.token_digest(token))
    assert not rules.same_token(rules.new_token(), rules.token_digest(token))
    assert rules.lifetime(None) == timedelta(minutes=15)
    assert rules.lifetime(10_000) == timedelta(hours=24)
    assert rules.new_agent_id() != rules.new_agent_id()


def _standing(seen: timedelta = timedelta(0), serial: int | None = 7,
              **posture: Any) -> rules.Standing:
    return rules.Standing(NOW - seen, serial, posture)


NO_NEEDS = rules.Requirements()


def _problems(standing: rules.Standing, needs: rules.Requirements = NO_NEEDS,
              newest: int = 7, issued: timedelta = timedelta(minutes=10)) -> list[str]:
    return [p.code for p in rules.evaluate(standing, newest, NOW - issued, needs, NOW)]


def test_compliance() -> None:
    assert _problems(_standing()) == []
    assert _problems(_standing(seen=timedelta(seconds=89))) == []
    assert _problems(_standing(seen=timedelta(seconds=91))) == ["silent"]
    # A newer bundle: two heartbeats to take it.
    assert _problems(_standing(serial=6), newest=7, issued=timedelta(seconds=59)) == []
    assert _problems(_standing(serial=6), newest=7, issued=timedelta(seconds=61)) == [
        "stale_policy"]
    strict = rules.Requirements(require_disk_encryption=True, max_security_updates=2)
    assert _problems(_standing(disk_encrypted=True, security_updates=2), strict) == []
    assert _problems(_standing(disk_encrypted=False, security_updates=3), strict) == [
        "disk_not_encrypted", "updates_pending"]
    assert _problems(_standing(), strict) == ["disk_not_encrypted", "updates_pending"]
    [problem] = rules.evaluate(_standing(security_updates=5), 7, NOW,
                               rules.Requirements(max_security_updates=1), NOW)
    text = problem.to_json()
    assert "5" in text["ja"] and "5 security updates" in text["en"]


def test_posture_takes_only_what_it_knows() -> None:
    assert rules.posture_of({"security_updates": True, "disk_encrypted": "yes",
                             "os_release": "Debian 12", "other": 1}) == {
        "os_release": "Debian 12"}


# --- validation -------------------------------------------------------------------------


def test_a_valid_policy_comes_back_in_normal_form() -> None:
    clerk = ap.validate("clerk-pc", {"allow": [{"to": "198.51.100.7/24", "proto": "tcp",
                                                "ports": [443, 80, 443]}],
                                     "dns": ["192.0.2.53"], "max_security_updates": 3})
    assert clerk["allow"] == [{"to": "198.51.100.0/24", "proto": "tcp", "ports": [80, 443]}]
    assert clerk["usb_mass_storage"] == "block" and clerk["max_security_updates"] == 3
    server = ap.validate("business-server", {"protect": [{"proto": "tcp", "ports": [5432]}]})
    assert server["protect"][0]["from"] == "clerk-pcs"


_WEB = {"to": "198.51.100.0/24", "proto": "tcp", "ports": [443]}
_DB = {"proto": "tcp", "ports": [5432], "from": ["a1"]}


@pytest.mark.parametrize(("profile", "old", "new", "opened"), [
    ("clerk-pc", {}, {"usb_mass_storage": "allow"}, ["usb_mass_storage"]),
    ("clerk-pc", {"usb_mass_storage": "allow"}, {}, []),
    ("clerk-pc", {}, {"allow": [_WEB]}, ["allow"]),
    ("clerk-pc", {"allow": [_WEB]}, {"allow": [{**_WEB, "to": "198.51.100.8/29"}]}, []),
    ("clerk-pc", {"allow": [_WEB]}, {"allow": [{**_WEB, "to": "198.51.0.0/16"}]}, ["allow"]),
    ("clerk-pc", {"allow": [_WEB]}, {"allow": [{**_WEB, "ports": [443, 22]}]}, ["allow"]),
    ("clerk-pc", {"allow": [_WEB]}, {"allow": [{**_WEB, "proto": "udp"}]}, ["allow"]),
    ("clerk-pc", {"allow": [_WEB]}, {"allow": [{**_WEB, "to": "2001:db8::/32"}]}, ["allow"]),
    ("clerk-pc", {}, {"dns": ["192.0.2.53"], "ntp": ["192.0.2.123"]}, ["dns", "ntp"]),
    ("clerk-pc", {"require_disk_encryption": True, "max_security_updates": 3},
     {"max_security_updates": 5}, ["require_disk_encryption", "max_security_updates"]),
    ("clerk-pc", {"max_security_updates": 5}, {"max_security_updates": 3}, []),
    ("business-server", {"protect": [_DB]}, {}, ["protect"]),
    ("business-server", {"protect": [_DB]}, {"protect": [{**_DB, "from": "clerk-pcs"}]},
     ["protect"]),
    ("business-server", {"protect": [_DB]}, {"protect": [{**_DB, "from": ["a1", "a2"]}]},
     ["protect"]),
    ("business-server", {"protect": [{**_DB, "from": "clerk-pcs"}]}, {"protect": [_DB]}, []),
])
def test_what_a_save_opens_is_named(profile: str, old: dict[str, Any], new: dict[str, Any],
                                     opened: list[str]) -> None:
    assert ap.widened(ap.validate(profile, old), ap.validate(profile, new)) == opened


@pytest.mark.parametrize(("profile", "policy", "field"), [
    ("clerk-pc", {"allow": [{"to": "not-an-address", "proto": "tcp", "ports": [1]}]},
     "allow.0.to"),
    ("clerk-pc", {"allow": [{"to": "192.0.2.1", "proto": "icmp", "ports": [1]}]},
     "allow.0.proto"),
    ("clerk-pc", {"allow": [{"to": "192.0.2.1", "proto": "tcp", "ports": [70000]}]},
     "allow.0.ports"),
    ("clerk-pc", {"allow": [{"to": "192.0.2.1", "proto": "tcp", "ports": []}]},
     "allow.0.ports"),
    ("clerk-pc", {"protect": []}, "protect"),
    ("clerk-pc", {"usb_mass_storage": "maybe"}, "usb_mass_storage"),
    ("clerk-pc", {"max_security_updates": -1}, "max_security_updates"),
    ("clerk-pc", {"dns": ["dns.example"]}, "dns.0"),
    ("business-server", {"protect": [{"proto": "tcp", "ports": [22], "from": "everyone"}]},
     "protect.0.from"),
])
def test_an_invalid_policy_names_the_field(profile: str, policy: dict[str, Any],
                                           field: str) -> None:
    with pytest.raises(ap.PolicyInvalid) as caught:
        ap.validate(profile, policy)
    assert caught.value.detail["field"] == field
    assert caught.value.message_ja.startswith(field) and caught.value.message_en


# --- test cases ---------------------------------------------------------------------------

CLERK = ap.Agent("agent-clerk00001", "clerk-pc", "192.0.2.31")
OTHER_CLERK = ap.Agent("agent-clerk00002", "clerk-pc", "192.0.2.32")
SERVER = ap.Agent("agent-server0001", "business-server", "192.0.2.40")


def _world(clerk: dict[str, Any] | None = None, server: dict[str, Any] | None = None
           ) -> ap.World:
    return ap.World(
        policies={"clerk-pc": ap.validate("clerk-pc", clerk or {}),
                  "business-server": ap.validate("business-server", server or {})},
        agents=(CLERK, OTHER_CLERK, SERVER),
        appliance_addresses=("192.0.2.10",),
        appliance_ports=(443, 8445),
    )


def _case(source: str, to: str, port: int, proto: str = "tcp") -> str:
    [case] = ap.validate_tests([{"from": source, "to": to, "port": port, "proto": proto,
                                 "expect": "reach"}])
    return ap.outcome(case, WORLD)[0]


WORLD = _world(
    clerk={"allow": [{"to": "198.51.100.0/24", "proto": "tcp", "ports": [443]},
                     {"to": "192.0.2.40/32", "proto": "tcp", "ports": [5432, 22]}],
           "dns": ["192.0.2.53"], "ntp": ["192.0.2.123"]},
    server={"protect": [{"proto": "tcp", "ports": [5432], "from": [CLERK.agent_id]},
                        {"proto": "tcp", "ports": [22], "from": "clerk-pcs"}]},
)


@pytest.mark.parametrize(("source", "to", "port", "proto", "expect"), [
    # A clerk's PC: the appliance always, else only what the policy allows.
    ("agent:agent-clerk00001", "192.0.2.10", 443, "tcp", "reach"),
    ("agent:agent-clerk00001", "192.0.2.10", 22, "tcp", "blocked"),
    ("agent:agent-clerk00001", "198.51.100.9", 443, "tcp", "reach"),
    ("agent:agent-clerk00001", "198.51.100.9", 443, "udp", "blocked"),
    ("agent:agent-clerk00001", "203.0.113.1", 443, "tcp", "blocked"),
    ("agent:agent-clerk00001", "192.0.2.53", 53, "udp", "reach"),
    ("agent:agent-clerk00001", "192.0.2.123", 123, "udp", "reach"),
    ("agent:agent-clerk00001", "192.0.2.123", 123, "tcp", "blocked"),
    # A business server's protected ports: only the terminals named.
    ("agent:agent-clerk00001", "agent:agent-server0001", 5432, "tcp", "reach"),
    ("agent:agent-clerk00002", "192.0.2.40", 5432, "tcp", "blocked"),
    ("agent:agent-clerk00002", "192.0.2.40", 22, "tcp", "reach"),
    ("outside", "192.0.2.40", 5432, "tcp", "blocked"),
    ("address:192.0.2.31", "192.0.2.40", 5432, "tcp", "reach"),
    # An enrolled PC's address is that PC: its own filter applies too.
    ("address:192.0.2.31", "203.0.113.1", 443, "tcp", "blocked"),
    ("address:192.0.2.77", "203.0.113.1", 443, "tcp", "reach"),
    ("outside", "192.0.2.40", 8080, "tcp", "reach"),
    # Nobody opens a connection to a clerk's PC.
    ("agent:agent-server0001", "agent:agent-clerk00001", 445, "tcp", "blocked"),
    ("outside", "198.51.100.9", 443, "tcp", "reach"),
    ("agent:agent-gone000000", "192.0.2.10", 443, "tcp", "blocked"),
])
def test_what_a_test_case_finds(source: str, to: str, port: int, proto: str,
                                expect: str) -> None:
    assert _case(source, to, port, proto) == expect


def test_failing_cases_are_named_with_why() -> None:
    cases = ap.validate_tests([
        {"from": "outside", "to": "192.0.2.40", "port": 5432, "proto": "tcp",
         "expect": "blocked"},
        {"from": "agent:agent-clerk00002", "to": "192.0.2.40", "port": 5432, "proto": "tcp",
         "expect": "reach"},
    ])
    [failed] = ap.run_tests(cases, WORLD)
    assert failed["from"] == "agent:agent-clerk00002" and failed["got"] == "blocked"
    assert "business-server" in failed["why"]
    with pytest.raises(ap.PolicyInvalid) as caught:
        ap.validate_tests([{"from": "somewhere", "to": "x", "port": 1, "expect": "reach"}])
    assert caught.value.detail["field"] == "tests.0.from"


def test_the_bundle_body_resolves_terminals_to_their_addresses() -> None:
    body = ap.build_body("business-server", WORLD.policy("business-server"), appliance="ab" * 32,
                         serial=9, version=3, issued=NOW, world=WORLD)
    assert body["protect"] == [
        {"proto": "tcp", "ports": [5432], "from": ["192.0.2.31"]},
        {"proto": "tcp", "ports": [22], "from": ["192.0.2.31", "192.0.2.32"]},
    ]
    assert body["allow"] == [] and body["appliance_addresses"] == ["192.0.2.10"]
    assert (body["serial"], body["policy_version"], body["appliance_ports"]) == (9, 3,
                                                                                 [443, 8445])
    moved = ap.World(policies=WORLD.policies,
                     agents=(ap.Agent(CLERK.agent_id, "clerk-pc", "192.0.2.39"), SERVER),
                     appliance_addresses=WORLD.appliance_addresses,
                     appliance_ports=WORLD.appliance_ports)
    again = ap.build_body("business-server", WORLD.policy("business-server"),
                          appliance="ab" * 32, serial=10, version=3, issued=NOW, world=WORLD)
    assert ap.same_content(body, again)
    after = ap.build_body("business-server", moved.policy("business-server"),
                          appliance="ab" * 32, serial=10, version=3, issued=NOW, world=moved)
    assert not ap.same_content(body, after)
    clerk = ap.build_body("clerk-pc", WORLD.policy("clerk-pc"), appliance="ab" * 32, serial=11,
                          version=1, issued=NOW, world=WORLD)
    assert clerk["protect"] == [] and clerk["dns"] == ["192.0.2.53"]
    assert set(clerk) == set(body)


def test_only_kura_policy_calls_the_service_operations() -> None:
    from kura import config as config_module
    from kura.core.roles import OPERATIONS, SERVICE, Role, may

    assert {"agents.enrol", "agents.check", "agents.heartbeat", "agents.bundle",
            "agents.watch", "agents.server_cert"} == SERVICE <= OPERATIONS
    assert not any(may(role, op) for role in Role for op in SERVICE)
    assert may(Role.SA, "agents.revoke") and not may(Role.DA, "agents.revoke")
    raw = {"database": {"dsn": "dbname=x"}, "vault": {"socket": "/run/v", "keys_dir": "/k"}}
    assert config_module.parse(raw).vault.policy_uids == frozenset()
    raw["vault"]["policy_uids"] = [995]  # type: ignore[index]
    assert config_module.parse(raw).vault.policy_uids == frozenset({995})
