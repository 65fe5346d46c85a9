"""The network step: list the links, write systemd-networkd files, verify
with netlink, and put the old files back if the new setting does not work.

Theory of operation. The wizard owns the files ``10-kura-*.network`` in
/etc/systemd/network (each matches one link by MACAddress=, so a renamed
link keeps its setting; the 10- prefix puts them before any default the
image ships). Applying a plan takes a snapshot of the files it owns, writes
the new one, removes the others and restarts systemd-networkd; verifying
reads the kernel's view through pyroute2 until the address is on the link
and (static) the gateway answers ARP/NDP or (DHCP) a leased address and a
default route through the link appear. If verification fails, or the person
at the console does not confirm in time, :func:`revert` writes the snapshot
back and restarts networkd again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kura_firstboot.system import System

NETWORK_DIR = "/etc/systemd/network"
PREFIX = "10-kura-"

# Neighbour states (linux/neighbour.h) that mean the gateway answered.
_NUD_REACHABLE, _NUD_NOARP, _NUD_PERMANENT = 0x02, 0x40, 0x80
_IFF_LOOPBACK = 0x8
_MAIN_TABLE = 254


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    mac: str
    carrier: bool
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class NetworkPlan:
    interface: str
    mac: str
    mode: str  # dhcp | static
    address: str | None = None  # 192.0.2.10/24
    gateway: str | None = None
    dns: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        return f"{PREFIX}{self.interface}.network"

    def to_json(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "mac": self.mac,
            "mode": self.mode,
            "address": self.address,
            "gateway": self.gateway,
            "dns": list(self.dns),
        }


@dataclass(frozen=True)
class Verdict:
    ok: bool
    address: str | None = None  # the address found on the link
    problem_en: str = ""
    problem_ja: str = ""


def render(plan: NetworkPlan) -> str:
    """The systemd-networkd file for ``plan``."""
    lines = [
        "# Written by kura-firstboot. Change it with the first-boot wizard or the console.",
        "[Match]",
        f"MACAddress={plan.mac}",
        "",
        "[Network]",
    ]
    if plan.mode == "dhcp":
        lines.append("DHCP=yes")
    else:
        lines.append(f"Address={plan.address}")
        lines.append(f"Gateway={plan.gateway}")
        lines += [f"DNS={server}" for server in plan.dns]
    return "\n".join(lines) + "\n"


# --- reading the links --------------------------------------------------------------


@contextlib.contextmanager
def _netlink() -> Iterator[Any]:
    from pyroute2 import IPRoute

    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def interfaces() -> list[Interface]:
    """Every link but loopback, with its MAC, carrier and addresses."""
    found = []
    with _netlink() as ipr:
        for link in ipr.get_links():
            if link["flags"] & _IFF_LOOPBACK:
                continue
            index = int(link["index"])
            addresses = tuple(
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)
            )
            found.append(
                Interface(
                    name=str(link.get_attr("IFLA_IFNAME")),
                    index=index,
                    mac=str(link.get_attr("IFLA_ADDRESS") or ""),
                    carrier=bool(link.get_attr("IFLA_CARRIER")),
                    addresses=addresses,
                )
            )
    return sorted(found, key=lambda i: i.index)


def link_addresses(name: str) -> list[str]:
    """Global addresses (no prefix) on the link ``name``, IPv4 first."""
    with _netlink() as ipr:
        index = _index(ipr, name)
        if index is None:
            return []
        found = [
            str(a.get_attr("IFA_ADDRESS"))
            for a in ipr.get_addr(index=index)
            if a["scope"] == 0
        ]
    return sorted(found, key=lambda a: ipaddress.ip_address(a).version)


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


# --- applying and reverting ----------------------------------------------------------


Snapshot = dict[str, bytes]


def snapshot(system: System) -> Snapshot:
    folder = system.path(NETWORK_DIR)
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.glob(f"{PREFIX}*.network"))}


def write_files(system: System, files: Snapshot) -> bool:
    """Make the set of wizard-owned files exactly ``files``; True if anything changed."""
    changed = False
    for name in snapshot(system):
        if name not in files:
            changed |= system.remove(f"{NETWORK_DIR}/{name}")
    for name, body in files.items():
        changed |= system.write_file(f"{NETWORK_DIR}/{name}", body, mode=0o644)
    return changed


def apply(system: System, plan: NetworkPlan) -> Snapshot:
    """Write ``plan`` and restart networkd; returns what to revert to."""
    before = snapshot(system)
    write_files(system, {plan.file_name: render(plan).encode()})
    system.systemctl("restart", "systemd-networkd.service")
    return before


def revert(system: System, before: Snapshot) -> None:
    write_files(system, before)
    system.systemctl("restart", "systemd-networkd.service")


# --- verifying -------------------------------------------------------------------


def verify(system: System, plan: NetworkPlan, timeout: float) -> Verdict:
    """Wait up to ``timeout`` seconds for the plan to work on the link."""
    deadline = system.clock() + timeout
    with _netlink() as ipr:
        while True:
            verdict = _check(ipr, plan)
            if verdict.ok or system.clock() >= deadline:
                return verdict
            system.sleep(0.25)


def _check(ipr: Any, plan: NetworkPlan) -> Verdict:
    index = _index(ipr, plan.interface)
    if index is None:
        return Verdict(False, None, f"the link {plan.interface} is gone",
                       f"リンク {plan.interface} が見つかりません")
    present = [
        (str(a.get_attr("IFA_ADDRESS")), int(a["prefixlen"]))
        for a in ipr.get_addr(index=index)
        if a["scope"] == 0
    ]
    if plan.mode == "static":
        assert plan.address is not None and plan.gateway is not None
        want = ipaddress.ip_interface(plan.address)
        if (str(want.ip), want.network.prefixlen) not in present:
            return Verdict(False, None, f"{plan.address} is not on {plan.interface}",
                           f"{plan.address} が {plan.interface} に設定されていません")
        if not _gateway_answers(ipr, index, plan.interface, plan.gateway):
            return Verdict(False, str(want.ip), f"the gateway {plan.gateway} does not answer",
                           f"ゲートウェイ {plan.gateway} から応答がありません")
        return Verdict(True, str(want.ip))
    v4 = [a for a, _ in present if ipaddress.ip_address(a).version == 4]
    if not v4:
        return Verdict(False, None, f"no DHCP lease on {plan.interface}",
                       f"{plan.interface} に DHCP でアドレスが割り当てられていません")
    routes = ipr.get_routes(family=socket.AF_INET, table=_MAIN_TABLE)
    if not any(r["dst_len"] == 0 and r.get_attr("RTA_OIF") == index for r in routes):
        return Verdict(False, v4[0], f"no default route through {plan.interface}",
                       f"{plan.interface} 経由のデフォルトルートがありません")
    return Verdict(True, v4[0])


def _gateway_answers(ipr: Any, index: int, name: str, gateway: str) -> bool:
    """Ask the kernel to resolve the gateway (a datagram to the discard port,
    bound to the link) and see whether ARP/NDP got an answer. A stale entry
    from before is dropped first, so an old answer cannot pass for a new one."""
    gw = ipaddress.ip_address(gateway)
    family = socket.AF_INET if gw.version == 4 else socket.AF_INET6
    with contextlib.suppress(Exception):
        ipr.neigh("del", dst=gateway, ifindex=index, family=family)
    for _ in range(8):
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())
                s.sendto(b"", (gateway, 9) if gw.version == 4 else (gateway, 9, 0, index))
        for _ in range(5):
            for entry in ipr.get_neighbours(dst=gateway, ifindex=index, family=family):
                if entry["state"] & (_NUD_REACHABLE | _NUD_PERMANENT | _NUD_NOARP):
                    return True
            _pause(0.05)
    return False


def _pause(seconds: float) -> None:
    import time

    time.sleep(seconds)
