"""A bundle's body as nftables commands: the pure core of enforcement.

The agent owns one table, ``inet kura_agent``, and nothing else of the
host's ruleset. Every bundle replaces the whole table in ONE transaction
(``add table`` so that ``delete`` cannot fail, ``delete table``, then the
table, its chains and rules afresh), so the kernel holds either the old
bundle's rules or the new one's, never a mix, and a rule that the kernel
rejects leaves the old bundle enforced.

- **clerk-pc**: an ``output`` chain with policy drop. Allowed: loopback,
  established/related traffic, what the network itself needs (DHCP, IPv6
  neighbour discovery), the appliance's addresses on its ports, the DNS and
  NTP servers, and the bundle's ``allow`` list. The last rule counts and drops
  the rest. Input is not touched.
- **business-server**: an ``input`` chain with policy accept. Established
  traffic first; then for each protected port set, the listed addresses are
  accepted and everyone else is counted and dropped on those ports. Every
  other port is left to the host's own firewall.

Every drop rule carries a counter (``kura-agent status`` shows them).
"""

from __future__ import annotations

import ipaddress
from typing import Any

TABLE = "kura_agent"
FAMILY = "inet"
PROTOCOLS = ("tcp", "udp", "any")
# ICMPv6 that IPv6 needs to work at all (neighbour and router discovery,
# multicast listeners): without them the appliance is unreachable over IPv6.
ICMPV6_NEEDED = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit",
                 "nd-router-advert", "mld-listener-report", "mld2-listener-report")

Expr = dict[str, Any]


class RuleError(ValueError):
    """The bundle's body cannot be turned into rules (a bad address, protocol or
    port): the bundle is refused as malformed and the old one stays."""


def _network(text: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise RuleError(f"not an address: {text!r}")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise RuleError(f"not an address or network: {text[:60]!r}") from exc


def _ports(value: Any) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in value):
        raise RuleError(f"ports must be a list of 1..65535: {value!r}"[:100])
    return sorted(set(value))


def _proto(value: Any) -> str:
    proto = "any" if value is None else value
    if proto not in PROTOCOLS:
        raise RuleError(f"protocol must be tcp, udp or any: {value!r}"[:80])
    return str(proto)


def _match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _address(net: ipaddress.IPv4Network | ipaddress.IPv6Network, field: str) -> Expr:
    family = "ip" if net.version == 4 else "ip6"
    value: Any = (str(net.network_address) if net.prefixlen == net.max_prefixlen
                  else {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}})
    return _match({"payload": {"protocol": family, "field": field}}, value)


def _port_match(proto: str, ports: list[int]) -> list[Expr]:
    """Matches on the transport protocol and, if any are listed, its ports."""
    if proto == "any":
        if ports:
            raise RuleError("ports need a protocol (tcp or udp)")
        return []
    if not ports:
        return [_match({"meta": {"key": "l4proto"}}, proto)]
    right: Any = ports[0] if len(ports) == 1 else {"set": ports}
    return [_match({"payload": {"protocol": proto, "field": "dport"}}, right)]


ACCEPT: Expr = {"accept": None}
COUNT_DROP: list[Expr] = [{"counter": None}, {"drop": None}]
ESTABLISHED: list[Expr] = [_match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                           ACCEPT]


def _rule(chain: str, expr: list[Expr], comment: str) -> dict[str, Any]:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain,
                             "expr": expr, "comment": comment[:120]}}}


def _chain(name: str, hook: str, policy: str) -> dict[str, Any]:
    return {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name, "type": "filter",
                              "hook": hook, "prio": 0, "policy": policy}}}


def _clerk_pc(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = "output"
    commands = [_chain(out, "output", "drop"),
                _rule(out, [_match({"meta": {"key": "oifname"}}, "lo"), ACCEPT], "loopback"),
                _rule(out, ESTABLISHED, "established"),
                _rule(out, [_match({"payload": {"protocol": "udp", "field": "dport"}},
                                   {"set": [67, 547]}), ACCEPT], "dhcp"),
                _rule(out, [_match({"payload": {"protocol": "icmpv6", "field": "type"}},
                                   {"set": list(ICMPV6_NEEDED)}), ACCEPT], "ipv6 neighbours")]
    appliance_ports = _ports(body.get("appliance_ports"))
    for text in body.get("appliance_addresses") or []:
        net = _network(text)
        commands.append(_rule(out, [_address(net, "daddr"),
                                    *_port_match("tcp", appliance_ports), ACCEPT],
                              f"appliance {net}"))
    for kind, proto_ports in (("dns", (("udp", [53]), ("tcp", [53]))),
                              ("ntp", (("udp", [123]),))):
        for text in body.get(kind) or []:
            net = _network(text)
            for proto, ports in proto_ports:
                commands.append(_rule(out, [_address(net, "daddr"),
                                            *_port_match(proto, ports), ACCEPT],
                                      f"{kind} {net} {proto}"))
    for entry in body.get("allow") or []:
        if not isinstance(entry, dict):
            raise RuleError("an allow entry is not an object")
        net, proto = _network(entry.get("to")), _proto(entry.get("proto"))
        ports = _ports(entry.get("ports"))
        commands.append(_rule(out, [_address(net, "daddr"), *_port_match(proto, ports), ACCEPT],
                              f"allow {net} {proto} {','.join(map(str, ports))}"))
    commands.append(_rule(out, COUNT_DROP, "drop the rest"))
    return commands


def _business_server(body: dict[str, Any]) -> list[dict[str, Any]]:
    inp = "input"
    commands = [_chain(inp, "input", "accept"),
                _rule(inp, [_match({"meta": {"key": "iifname"}}, "lo"), ACCEPT], "loopback"),
                _rule(inp, ESTABLISHED, "established")]
    for entry in body.get("protect") or []:
        if not isinstance(entry, dict):
            raise RuleError("a protect entry is not an object")
        proto, ports = _proto(entry.get("proto", "tcp")), _ports(entry.get("ports"))
        if proto == "any" or not ports:
            raise RuleError("a protected entry needs tcp or udp and its ports")
        label = f"{proto} {','.join(map(str, ports))}"
        for text in entry.get("from") or []:
            net = _network(text)
            commands.append(_rule(inp, [_address(net, "saddr"), *_port_match(proto, ports),
                                        ACCEPT], f"protect {label} from {net}"))
        commands.append(_rule(inp, [*_port_match(proto, ports), *COUNT_DROP],
                              f"protect {label} drop others"))
    return commands


def ruleset(body: dict[str, Any]) -> dict[str, Any]:
    """The one transaction that makes ``inet kura_agent`` enforce ``body``
    (a verified bundle's body), for ``nftables.Nftables().json_cmd``."""
    table = {"family": FAMILY, "name": TABLE}
    commands: list[dict[str, Any]] = [{"add": {"table": dict(table)}},
                                      {"delete": {"table": dict(table)}},
                                      {"add": {"table": dict(table)}}]
    profile = body.get("profile")
    if profile == "clerk-pc":
        commands += _clerk_pc(body)
    elif profile == "business-server":
        commands += _business_server(body)
    else:
        raise RuleError(f"unknown profile {str(profile)[:40]!r}")
    return {"nftables": commands}
