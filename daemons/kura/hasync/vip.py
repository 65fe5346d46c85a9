"""The floating address: added and removed with netlink (pyroute2), announced
with gratuitous ARP (iputils-arping, ``arping -U``) so the clerks' machines and
the switch forget the old primary's MAC at once instead of after their ARP
cache times out.

Both operations are idempotent: the daemon calls them on every tick to hold
the address in the state the core decided, whatever happened to it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kura.core.errors import KuraError

log = logging.getLogger("kura.hasync")

EEXIST, ENODEV, EADDRNOTAVAIL = 17, 19, 99


class VipError(KuraError):
    """The floating address could not be set (no such interface, no CAP_NET_ADMIN)."""

    code = "vip"
    ja = "仮想 IP アドレスを設定できません。"
    en = "The virtual IP address cannot be set."


class VipController:
    def __init__(self, vip: ipaddress.IPv4Interface, interface: str, arping: str) -> None:
        self.vip = vip
        self.interface = interface
        found = shutil.which(arping)
        if found is None:
            raise VipError(f"{arping} not found (Debian package iputils-arping)",
                           f"{arping} がありません（Debian パッケージ iputils-arping）。")
        self.arping = found
        self._ipr: Any = IPRoute()
        self._announce: asyncio.Task[None] | None = None

    def close(self) -> None:
        self._ipr.close()

    def _index(self) -> int:
        found = self._ipr.link_lookup(ifname=self.interface)
        if not found:
            raise VipError(f"no interface {self.interface}",
                           f"インターフェース {self.interface} がありません。")
        return int(found[0])

    def present(self) -> bool:
        addr = str(self.vip.ip)
        try:
            index = self._index()
        except VipError:
            return False
        return any(a.get_attr("IFA_ADDRESS") == addr
                   for a in self._ipr.get_addr(index=index, family=2))

    def drop(self) -> bool:
        """Remove the address if it is there; True if it was. Any announcement
        still being sent is stopped first: the address is no longer ours."""
        if self._announce is not None and not self._announce.done():
            self._announce.cancel()
        try:
            index = self._index()
        except VipError:
            return False
        try:
            self._ipr.addr("del", index=index, address=str(self.vip.ip),
                           prefixlen=self.vip.network.prefixlen)
        except NetlinkError as exc:
            if exc.code == EADDRNOTAVAIL:
                return False
            raise VipError(f"cannot remove {self.vip} from {self.interface}: {exc}",
                           f"{self.interface} から {self.vip} を外せません: {exc}") from exc
        log.warning("VIP %s removed from %s", self.vip, self.interface)
        return True

    def hold(self) -> bool:
        """Add the address if it is missing and announce it; True if it was added."""
        index = self._index()
        try:
            self._ipr.addr("add", index=index, address=str(self.vip.ip),
                           prefixlen=self.vip.network.prefixlen,
                           broadcast=str(self.vip.network.broadcast_address))
        except NetlinkError as exc:
            if exc.code == EEXIST:
                return False
            raise VipError(f"cannot add {self.vip} to {self.interface}: {exc}",
                           f"{self.interface} に {self.vip} を付けられません: {exc}") from exc
        log.warning("VIP %s added to %s", self.vip, self.interface)
        self._announce = asyncio.get_running_loop().create_task(self.announce())
        return True

    async def announce(self) -> None:
        """Two unsolicited ARP requests (arping -U), one second apart."""
        proc = await asyncio.create_subprocess_exec(
            self.arping, "-U", "-c", "2", "-I", self.interface, str(self.vip.ip),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await proc.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        # arping -U exits 1 when no reply came, which is what unsolicited means.
        if proc.returncode not in (0, 1):
            log.error("gratuitous ARP for %s failed: %s", self.vip.ip,
                      err.decode(errors="replace").strip())
