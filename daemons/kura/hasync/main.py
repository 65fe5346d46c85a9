"""kura-hasync: the daemon's entry point and its loop.

Every second, and at once when the monitor notifies a change, the loop feeds
kura.core.ha with what it sees and carries out the actions it returns. It asks
the core twice per turn: first with what it already knows, so that dropping
the VIP never waits for the local PostgreSQL to answer, then with fresh local
facts. After the actions it re-applies the decided VIP state (idempotent), so
an address removed or added behind its back is put right within a second.
The VIP is dropped when the daemon stops, whatever stops it; ``--release``
(the unit's ExecStopPost=) drops it after a crash too.

The status file is rewritten every turn, not only when the role changes: its
age is how the vault tells a live kura-hasync from a stopped one (kura.vault.
hastatus). The control socket (kura.hasync.control) takes the vault's planned
switchover.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kura import config as config_module
from kura.config import ConfigError, HaConfig
from kura.core import ha
from kura.core.errors import KuraError
from kura.daemon import Notifier, run_main, run_until_stopped, setup_logging
from kura.hasync.control import ControlServer
from kura.hasync.local import DOWN, LocalCheck, LocalFacts
from kura.hasync.monitor import MonitorWatcher
from kura.hasync.vip import VipController

log = logging.getLogger("kura.hasync")

TICK_SECONDS = 1.0


class Node:
    """One data node: the monitor's view, the local PostgreSQL, the VIP."""

    def __init__(self, settings: HaConfig, vip: VipController) -> None:
        self.settings = settings
        self.vip = vip
        self.wake = asyncio.Event()
        self.monitor = MonitorWatcher(settings.monitor, settings.formation, settings.node,
                                      settings.poll_seconds, self.wake)
        self.local = LocalCheck(settings.local_dsn)
        self.local_facts: LocalFacts = DOWN
        self.decision: ha.Decision | None = None
        self.since = time.time()  # when the role or its health last changed
        self.notifier = Notifier()

    def observe(self) -> ha.Observation:
        now = asyncio.get_running_loop().time()
        own = self.monitor.own
        reachable = self.monitor.reachable(now)
        return ha.Observation(
            goal=own.goal if own else None,
            reported=own.reported if own else None,
            monitor_reachable=reachable,
            monitor_silent_seconds=0.0 if reachable else self.monitor.silent_seconds(now),
            local=self.local_facts.pg,
            standby_streaming=self.local_facts.streaming,
            sync_standby=self.local_facts.sync,
        )

    def decide(self) -> None:
        self.decision, actions = ha.step(self.decision, self.observe(),
                                         self.settings.fence_seconds)
        for action in actions:
            if isinstance(action, ha.DropVip):
                self.vip.drop()
            elif isinstance(action, ha.HoldVip):
                self.vip.hold()
            else:
                self.tell(action.status)
        # Hold the address in the decided state, whatever happened to it.
        if self.decision.vip is ha.Vip.HOLD:
            self.vip.hold()
        else:
            self.vip.drop()

    def tell(self, status: ha.Status) -> None:
        """The TellVault action: log it (loudly when degraded or fenced), show
        it in systemd's status line and write it for the vault to read."""
        level = logging.WARNING if status.degraded or status.role is ha.Role.FENCED else (
            logging.INFO)
        log.log(level, "role %s (vip %s, sync standby %s, witness %s, rule %s)", status.role,
                "held" if status.vip_held else "not held",
                "yes" if status.sync_standby else "no",
                "reachable" if status.witness_reachable else "unreachable", status.rule)
        self.notifier.send(f"STATUS=role {status.role}"
                           f"{' (degraded)' if status.degraded else ''}")
        self.since = time.time()
        self.publish()

    def publish(self) -> None:
        """Write the status file (also every turn: its age says we are alive)."""
        if self.settings.status_file is not None and self.decision is not None:
            write_status(self.settings.status_file, self.settings, self.decision.status,
                         since=self.since, replication=self.local_facts.replication)

    def status(self) -> ha.Status | None:
        return self.decision.status if self.decision is not None else None

    async def run(self) -> None:
        try:
            while True:
                self.decide()  # with what we know: a drop must not wait for PostgreSQL
                self.local_facts = await self.local.check()
                self.decide()
                self.publish()
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=TICK_SECONDS)
        finally:
            self.vip.drop()  # first thing on the way out

    async def close(self) -> None:
        await self.local.close()


def _utc(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def write_status(path: Path, settings: HaConfig, status: ha.Status, since: float | None = None,
                 replication: dict[str, Any] | None = None) -> None:
    """Written to a temporary name and renamed, so a reader never sees half.
    ``changed_at`` is when the role or its health last changed (``since``),
    ``written_at`` now; ``replication`` is what the local PostgreSQL says of
    its standby or of its own replay (kura.hasync.local)."""
    now = time.time()
    body = {
        **asdict(status),
        "node": settings.node,
        "formation": settings.formation,
        "vip": str(settings.vip),
        "changed_at": _utc(since if since is not None else now),
        "written_at": _utc(now),
        "replication": replication or {},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640), "w") as f:
            json.dump(body, f)
        tmp.replace(path)
    except OSError as exc:
        log.error("cannot write %s: %s", path, exc.strerror)


def ha_settings(config_path: str | None) -> HaConfig:
    config = config_module.load(config_path)
    if config.ha is None:
        raise ConfigError("no [ha] section: this appliance is not one of an HA pair",
                          "[ha] がありません: この装置は HA ペアの一台ではありません。")
    return config.ha


async def serve(config_path: str | None) -> None:
    settings = ha_settings(config_path)
    vip = VipController(settings.vip, settings.interface, settings.arping)
    node = Node(settings, vip)
    log.info("node %s of formation %s, VIP %s on %s, fence after %gs", settings.node,
             settings.formation, settings.vip, settings.interface, settings.fence_seconds)
    tasks = [node.monitor.run(), node.run()]
    if settings.control_socket is not None:
        control = ControlServer(settings.control_socket, settings.monitor, settings.formation,
                                settings.node, node.status)
        tasks.append(control.run())
    try:
        await run_until_stopped(f"following node {settings.node}", *tasks)
    finally:
        vip.drop()
        await node.close()
        vip.close()


def release(config_path: str | None) -> int:
    """Drop the VIP and exit: ExecStopPost=, after any end of the daemon."""
    setup_logging("kura-hasync")
    try:
        settings = ha_settings(config_path)

        async def drop() -> bool:
            vip = VipController(settings.vip, settings.interface, settings.arping)
            try:
                return vip.drop()
            finally:
                vip.close()

        dropped = asyncio.run(drop())
    except KuraError as exc:
        log.error("kura-hasync: %s", exc.message_en)
        return 1
    log.info("VIP %s %s", settings.vip, "released" if dropped else "was not held")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kura-hasync",
        description="Kura's HA follower: holds the floating address on the primary "
                    "pg_auto_failover has chosen.",
    )
    parser.add_argument("--config", help="configuration file (default: $KURA_CONFIG)")
    parser.add_argument("--release", action="store_true",
                        help="remove the floating address if this node holds it, and exit")
    args = parser.parse_args(argv)
    if args.release:
        return release(args.config)
    return run_main("kura-hasync", lambda: serve(args.config))


if __name__ == "__main__":
    sys.exit(main())
