"""What every Kura daemon does the same way: logging set-up, systemd
notifications (READY, WATCHDOG, STOPPING through sdnotify, harmless outside
systemd), and running until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import sdnotify

from kura.core.errors import KuraError

log = logging.getLogger("kura")


def setup_logging(name: str) -> None:
    logging.basicConfig(
        level=os.environ.get("KURA_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


class Notifier:
    def __init__(self) -> None:
        self._n = sdnotify.SystemdNotifier()
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_seconds = int(usec) / 1_000_000 if usec.isdigit() else 0.0

    def send(self, state: str) -> None:
        self._n.notify(state)

    async def watchdog(self) -> None:
        """Ping while the event loop turns. Only a hung loop should make systemd
        restart a daemon: an unreachable database or vault is reported to the
        users instead (and a restarted vault would need its custodians again)."""
        if not self.watchdog_seconds:
            return
        while True:
            await asyncio.sleep(self.watchdog_seconds / 3)
            self.send("WATCHDOG=1")


async def run_until_stopped(status: str, *background: Coroutine[Any, Any, None]) -> None:
    """Tell systemd we are ready, feed the watchdog and run ``background`` tasks
    until SIGTERM or SIGINT; then say STOPPING and cancel the tasks. The caller
    closes its own resources afterwards."""
    notifier = Notifier()
    notifier.send(f"READY=1\nSTATUS={status}")
    tasks = [asyncio.create_task(c) for c in (notifier.watchdog(), *background)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        notifier.send("STOPPING=1")
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def run_main(name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run a daemon's body; a KuraError ends it with one clear log line and exit 1."""
    setup_logging(name)
    try:
        asyncio.run(body())
    except KuraError as exc:
        log.error("%s: %s", name, exc.message_en)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
