"""The per-profile policy of endpoint agents, its test cases, and the bundle
body made from it (docs/agents.md), pure.

The SA edits one policy per profile:

- ``clerk-pc``: ``allow`` (``[{to, proto, ports}]``: what a clerk's PC may
  reach beyond the appliance), ``dns`` and ``ntp`` servers;
- ``business-server``: ``protect`` (``[{proto, ports, from}]``, ``from`` is
  ``"clerk-pcs"`` or a list of agent ids: only those terminals reach these
  ports);
- both: ``usb_mass_storage`` (``allow`` | ``block``) and the posture
  required (``require_disk_encryption``, ``max_security_updates``).

``validate`` checks a policy and says what is wrong in Japanese and English
(BadRequest naming the field). **Test cases** (``[{from, to, port, proto,
expect}]``) are run by ``run_tests`` against a policy set and the enrolled
agents, with the model of enforcement the agents apply:

- a clerk's PC reaches the appliance on its ports always, and otherwise only
  what ``allow``, ``dns`` (port 53) and ``ntp`` (udp 123) name; it accepts no
  new connection from anyone;
- a business server's outgoing traffic is not filtered; a port it protects
  is reached only from the addresses of the terminals ``from`` names, as
  they presented themselves at their last heartbeat; other ports are not
  filtered;
- the appliance answers on its ports;
- any other host is not ours: reached unless the sender's policy says no.

``build_body`` makes the body a bundle signs: the policy resolved for the
agents (``kura.core.bundle``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kura.core import agents as agent_rules
from kura.core.errors import BadRequest

CLERK_PC, BUSINESS_SERVER = "clerk-pc", "business-server"
PROTOS = ("tcp", "udp")
USB = ("allow", "block")
CLERK_PCS = "clerk-pcs"
MAX_RULES = 200
MAX_PORTS = 64
MAX_SERVERS = 8

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PolicyInvalid(BadRequest):
    code = "agent_policy_invalid"
    ja = "エージェントのポリシーが正しくありません。"
    en = "The agent policy is not valid."


def _bad(field_name: str, en: str, ja: str) -> PolicyInvalid:
    return PolicyInvalid(f"{field_name}: {en}", f"{field_name}: {ja}", field=field_name)


def default_policy(profile: str) -> dict[str, Any]:
    """What holds before the SA saves a policy: nothing beyond the appliance,
    USB mass storage blocked, no posture required."""
    base: dict[str, Any] = {
        "usb_mass_storage": "block",
        "require_disk_encryption": False,
        "max_security_updates": None,
    }
    if profile == CLERK_PC:
        return {"allow": [], "dns": [], "ntp": [], **base}
    return {"protect": [], **base}


# --- validation ---------------------------------------------------------------------


def _ports(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or len(value) > MAX_PORTS:
        raise _bad(where, f"a list of 1 to {MAX_PORTS} ports",
                   f"ポートを 1〜{MAX_PORTS} 個のリストで指定してください。")
    out = []
    for port in value:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise _bad(where, "a port is a whole number from 1 to 65535",
                       "ポートは 1〜65535 の整数です。")
        out.append(port)
    return sorted(set(out))


def _proto(value: Any, where: str) -> str:
    if value not in PROTOS:
        raise _bad(where, "proto is tcp or udp", "プロトコルは tcp か udp です。")
    return str(value)


def _network(value: Any, where: str) -> str:
    if isinstance(value, str) and value:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            pass
    raise _bad(where, "an IP address or a network (CIDR)",
               "IP アドレスかネットワーク（CIDR）を指定してください。")


def _address(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise _bad(where, "an IP address", "IP アドレスを指定してください。") from None


def _list(raw: dict[str, Any], key: str, limit: int) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list) or len(value) > limit:
        raise _bad(key, f"a list of at most {limit}", f"{limit} 件以内のリストです。")
    return value


def validate(profile: str, raw: Any) -> dict[str, Any]:
    """The policy in its normal form, or PolicyInvalid naming the field."""
    if profile not in (CLERK_PC, BUSINESS_SERVER):
        raise _bad("profile", "clerk-pc or business-server",
                   "clerk-pc か business-server です。")
    if not isinstance(raw, dict):
        raise _bad("policy", "an object", "オブジェクトです。")
    known = {"usb_mass_storage", "require_disk_encryption", "max_security_updates", "dns", "ntp"}
    known |= {"allow"} if profile == CLERK_PC else {"protect"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _bad(unknown[0], f"not a field of the {profile} policy",
                   f"{profile} のポリシーにない項目です。")
    out: dict[str, Any] = {}
    usb = raw.get("usb_mass_storage", "block")
    if usb not in USB:
        raise _bad("usb_mass_storage", "allow or block", "allow か block です。")
    out["usb_mass_storage"] = usb
    disk = raw.get("require_disk_encryption", False)
    if not isinstance(disk, bool):
        raise _bad("require_disk_encryption", "true or false", "true か false です。")
    out["require_disk_encryption"] = disk
    updates = raw.get("max_security_updates")
    if updates is not None and (isinstance(updates, bool) or not isinstance(updates, int)
                                or not 0 <= updates <= 10_000):
        raise _bad("max_security_updates", "empty or a whole number from 0",
                   "空欄か 0 以上の整数です。")
    out["max_security_updates"] = updates
    out["dns"] = [_address(a, f"dns.{i}") for i, a in enumerate(_list(raw, "dns", MAX_SERVERS))]
    out["ntp"] = [_address(a, f"ntp.{i}") for i, a in enumerate(_list(raw, "ntp", MAX_SERVERS))]
    if profile == CLERK_PC:
        rules = []
        for i, rule in enumerate(_list(raw, "allow", MAX_RULES)):
            where = f"allow.{i}"
            if not isinstance(rule, dict) or set(rule) - {"to", "proto", "ports"}:
                raise _bad(where, "{to, proto, ports}", "{to, proto, ports} の形です。")
            rules.append({"to": _network(rule.get("to"), f"{where}.to"),
                          "proto": _proto(rule.get("proto"), f"{where}.proto"),
                          "ports": _ports(rule.get("ports"), f"{where}.ports")})
        out["allow"] = rules
    else:
        rules = []
        for i, rule in enumerate(_list(raw, "protect", MAX_RULES)):
            where = f"protect.{i}"
            if not isinstance(rule, dict) or set(rule) - {"from", "proto", "ports"}:
                raise _bad(where, "{proto, ports, from}", "{proto, ports, from} の形です。")
            source = rule.get("from", CLERK_PCS)
            if source != CLERK_PCS and not (
                isinstance(source, list) and source and len(source) <= 1000
                and all(isinstance(a, str) and 0 < len(a) <= 40 for a in source)
            ):
                raise _bad(f"{where}.from", '"clerk-pcs" or a list of agent ids',
                           "\"clerk-pcs\" かエージェント ID のリストです。")
            rules.append({"proto": _proto(rule.get("proto"), f"{where}.proto"),
                          "ports": _ports(rule.get("ports"), f"{where}.ports"),
                          "from": source if source == CLERK_PCS else sorted(set(source))})
        out["protect"] = rules
    return out


def requirements(policy: dict[str, Any]) -> agent_rules.Requirements:
    return agent_rules.Requirements(
        require_disk_encryption=bool(policy.get("require_disk_encryption")),
        max_security_updates=policy.get("max_security_updates"),
    )


# --- the world the policies apply to -----------------------------------------------


@dataclass(frozen=True)
class Agent:
    """An active enrolled agent, as the policies see it."""

    agent_id: str
    profile: str
    address: str | None  # from its last heartbeat (or enrolment)


@dataclass(frozen=True)
class World:
    policies: dict[str, dict[str, Any]]  # profile -> validated policy
    agents: tuple[Agent, ...]
    appliance_addresses: tuple[str, ...]
    appliance_ports: tuple[int, ...]
    by_id: dict[str, Agent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id.update({a.agent_id: a for a in self.agents})

    def policy(self, profile: str) -> dict[str, Any]:
        return self.policies.get(profile) or default_policy(profile)

    def at_address(self, address: str) -> Agent | None:
        return next((a for a in self.agents if a.address == address), None)


def resolve_from(source: Any, world: World) -> list[str]:
    """The addresses a protect rule's ``from`` stands for: the terminals'
    addresses at their last heartbeat (an agent not heard from has none)."""
    if source == CLERK_PCS:
        chosen = [a for a in world.agents if a.profile == CLERK_PC]
    else:
        chosen = [world.by_id[i] for i in source if i in world.by_id]
    return sorted({a.address for a in chosen if a.address}, key=_address_key)


def _address_key(text: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip)


# --- test cases ---------------------------------------------------------------------

REACH, BLOCKED = "reach", "blocked"


@dataclass(frozen=True)
class TestCase:
    source: str  # "agent:<id>" | "outside" | "address:<ip>"
    to: str  # "<ip>" | "agent:<id>"
    port: int
    proto: str
    expect: str

    __test__ = False  # not a pytest class

    def to_json(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.to, "port": self.port, "proto": self.proto,
                "expect": self.expect}


def validate_tests(raw: Any) -> list[TestCase]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > 500:
        raise _bad("tests", "a list of at most 500 cases", "500 件以内のリストです。")
    cases = []
    for i, case in enumerate(raw):
        where = f"tests.{i}"
        if not isinstance(case, dict) or set(case) - {"from", "to", "port", "proto", "expect"}:
            raise _bad(where, "{from, to, port, proto, expect}",
                       "{from, to, port, proto, expect} の形です。")
        source = case.get("from")
        if not isinstance(source, str) or not (
            source == "outside" or (source.startswith("agent:") and len(source) > 6)
            or source.startswith("address:")
        ):
            raise _bad(f"{where}.from", '"agent:<id>", "outside" or "address:<ip>"',
                       "\"agent:<ID>\"、\"outside\"、\"address:<IP>\" のいずれかです。")
        if source.startswith("address:"):
            source = "address:" + _address(source[8:], f"{where}.from")
        to = case.get("to")
        if not isinstance(to, str) or not to:
            raise _bad(f"{where}.to", '"<ip>" or "agent:<id>"', "\"<IP>\" か \"agent:<ID>\" です。")
        if not (to.startswith("agent:") and len(to) > 6):
            to = _address(to, f"{where}.to")
        port = case.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise _bad(f"{where}.port", "a port from 1 to 65535", "ポートは 1〜65535 の整数です。")
        expect = case.get("expect")
        if expect not in (REACH, BLOCKED):
            raise _bad(f"{where}.expect", "reach or blocked", "reach か blocked です。")
        cases.append(TestCase(source, to, port, _proto(case.get("proto", "tcp"),
                                                        f"{where}.proto"), str(expect)))
    return cases


def _in(address: str | None, network: str) -> bool:
    if address is None:
        return False
    return ipaddress.ip_address(address) in ipaddress.ip_network(network)


def outcome(case: TestCase, world: World) -> tuple[str, str]:
    """``(reach | blocked, why)`` for one case in ``world``; ``why`` says
    which rule decided (for the SA reading a failed case)."""
    sender: Agent | None = None
    source_address: str | None = None
    if case.source.startswith("agent:"):
        sender = world.by_id.get(case.source[6:])
        if sender is None:
            return BLOCKED, "unknown sender agent"
        source_address = sender.address
    elif case.source.startswith("address:"):
        # An address an enrolled agent presented is that agent: its own filter
        # applies, as it would on the wire.
        source_address = case.source[8:]
        sender = world.at_address(source_address)
    target: Agent | None
    if case.to.startswith("agent:"):
        target = world.by_id.get(case.to[6:])
        if target is None:
            return BLOCKED, "unknown target agent"
        target_address = target.address
    else:
        target_address = case.to
        target = world.at_address(case.to)
    to_appliance = target_address in world.appliance_addresses
    # The sender's own filter: only a clerk's PC filters what it sends.
    if sender is not None and sender.profile == CLERK_PC:
        policy = world.policy(CLERK_PC)
        if to_appliance:
            if case.port in world.appliance_ports:
                return REACH, "the appliance"
            return BLOCKED, "not an appliance port"
        allowed = any(
            rule["proto"] == case.proto and case.port in rule["ports"]
            and _in(target_address, rule["to"])
            for rule in policy["allow"]
        ) or (case.port == 53 and target_address in policy["dns"]) or (
            case.port == 123 and case.proto == "udp" and target_address in policy["ntp"])
        if not allowed:
            return BLOCKED, "not allowed by the clerk-pc policy"
    if to_appliance:
        return (REACH, "the appliance") if case.port in world.appliance_ports else (
            BLOCKED, "not an appliance port")
    if target is None:
        return REACH, "not an enrolled host"
    if target.profile == CLERK_PC:
        return BLOCKED, "a clerk's PC accepts no connections"
    for rule in world.policy(BUSINESS_SERVER)["protect"]:
        if rule["proto"] == case.proto and case.port in rule["ports"]:
            if source_address is not None and source_address in resolve_from(rule["from"],
                                                                              world):
                return REACH, "allowed by the business-server policy"
            return BLOCKED, "protected by the business-server policy"
    return REACH, "not a protected port"


def run_tests(cases: list[TestCase], world: World) -> list[dict[str, Any]]:
    """The cases that fail, each with what happened and why."""
    failed = []
    for case in cases:
        got, why = outcome(case, world)
        if got != case.expect:
            failed.append({**case.to_json(), "got": got, "why": why})
    return failed


# --- the bundle body ----------------------------------------------------------------


def build_body(
    profile: str,
    policy: dict[str, Any],
    *,
    appliance: str,
    serial: int,
    version: int,
    issued: datetime,
    world: World,
) -> dict[str, Any]:
    """The body of ``profile``'s bundle (docs/agents.md): the policy resolved
    for the agents. A business server's ``allow`` is empty: its outgoing
    traffic is not filtered; a clerk's PC's ``protect`` is empty."""
    return {
        "appliance": appliance,
        "profile": profile,
        "serial": serial,
        "policy_version": version,
        "issued": issued.isoformat(),
        "appliance_addresses": sorted(world.appliance_addresses, key=_address_key),
        "appliance_ports": sorted(world.appliance_ports),
        "dns": list(policy.get("dns", [])),
        "ntp": list(policy.get("ntp", [])),
        "allow": [dict(r) for r in policy.get("allow", [])] if profile == CLERK_PC else [],
        "protect": [
            {"proto": r["proto"], "ports": r["ports"], "from": resolve_from(r["from"], world)}
            for r in policy.get("protect", [])
        ] if profile == BUSINESS_SERVER else [],
        "usb_mass_storage": policy.get("usb_mass_storage", "block"),
        "heartbeat_seconds": agent_rules.HEARTBEAT_SECONDS,
        "pull_seconds": agent_rules.PULL_SECONDS,
    }


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True if two bodies differ only in serial and issue time: no new bundle needed."""
    skip = {"serial", "issued"}
    return {k: v for k, v in a.items() if k not in skip} == {
        k: v for k, v in b.items() if k not in skip}


# --- what a save opens ----------------------------------------------------------------


def _reaches(policy: dict[str, Any]) -> set[tuple[IpNetwork, str, int]]:
    return {(ipaddress.ip_network(rule["to"]), rule["proto"], port)
            for rule in policy.get("allow", []) for port in rule["ports"]}


def _guarded(policy: dict[str, Any]) -> dict[tuple[str, int], set[str] | None]:
    """Each protected (proto, port) and who may reach it; None: every clerk PC."""
    out: dict[tuple[str, int], set[str] | None] = {}
    for rule in policy.get("protect", []):
        for port in rule["ports"]:
            key = (rule["proto"], port)
            if rule["from"] == CLERK_PCS or out.get(key, set()) is None:
                out[key] = None
            else:
                out[key] = (out.get(key) or set()) | set(rule["from"])
    return out


def widened(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields in which the validated policy ``new`` lets through more
    than ``old``: what an SA opened alone (no second person is asked; the
    vault names these fields in the ``agent.policy_set`` audit entry, so an
    auditor sees who opened USB sticks or a destination, and when).

    ``allow`` is wider when a (destination, proto, port) is reached that no
    old rule covered; ``protect`` when a port is no longer protected or more
    terminals may reach it; ``dns``/``ntp`` when a server was added; the
    posture when less is required."""
    out = []
    if old.get("usb_mass_storage") == "block" and new.get("usb_mass_storage") == "allow":
        out.append("usb_mass_storage")
    if old.get("require_disk_encryption") and not new.get("require_disk_encryption"):
        out.append("require_disk_encryption")
    before, after = old.get("max_security_updates"), new.get("max_security_updates")
    if before is not None and (after is None or after > before):
        out.append("max_security_updates")
    out += [key for key in ("dns", "ntp") if set(new.get(key, [])) - set(old.get(key, []))]
    covered = _reaches(old)
    if any(not any(_within(net, wide) and (proto, port) == (p, q) for wide, p, q in covered)
           for net, proto, port in _reaches(new)):
        out.append("allow")
    guarding = _guarded(new)
    if any(key not in guarding or _more(guarding[key], who)
           for key, who in _guarded(old).items()):
        out.append("protect")
    return out


def _within(net: IpNetwork, wide: IpNetwork) -> bool:
    if isinstance(net, ipaddress.IPv4Network):
        return isinstance(wide, ipaddress.IPv4Network) and net.subnet_of(wide)
    return isinstance(wide, ipaddress.IPv6Network) and net.subnet_of(wide)


def _more(now: set[str] | None, before: set[str] | None) -> bool:
    """Do more terminals reach a protected port ``now`` than ``before``?"""
    if before is None:
        return False
    return now is None or not now <= before
