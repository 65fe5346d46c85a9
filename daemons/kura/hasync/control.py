"""kura-hasync's control socket: the vault asks it for a planned switchover.

Why a socket to kura-hasync rather than the vault calling the monitor itself:
kura-hasync already holds the monitor's address and credentials (the keeper's
``pg_autoctl.cfg``) and knows this node's role as the monitor sees it; the
vault has neither, and keeps no network access at all (PrivateNetwork=).

The protocol is one JSON line each way per connection:
``{"op": "switchover"}`` is answered ``{"ok": true, "group": 0}`` once the
monitor has accepted it, or ``{"ok": false, "error": CODE, "message": ...}``
with CODE one of ``not_primary``, ``degraded``, ``monitor``, ``bad_request``.
kura-hasync refuses by its own last decision before it asks the monitor: only
a primary with a synchronous standby hands over, since only then does the
standby hold every acknowledged write (the monitor would refuse too, but
later and in its own words). The monitor's call is what ``pg_autoctl perform
switchover`` makes: ``pgautofailover.perform_failover(formation, group)``
(pg_auto_failover has no SQL function of its own for a switchover; on a
healthy pair its failover is the orderly one: drain, promote, rejoin).

The socket lives in kura-hasync's runtime folder (/run/kura-hasync, 0750) with
mode 0660 and the group ``kura``: only the vault's group may connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from kura.core import ha
from kura.hasync.monitor import TCP_SETTINGS

log = logging.getLogger("kura.hasync")

GROUP_SQL = "SELECT groupid FROM pgautofailover.node WHERE formationid = %s AND nodename = %s"
SWITCHOVER_SQL = "SELECT pgautofailover.perform_failover(%s, %s)"
MAX_REQUEST = 4096  # bytes in one request line
REQUEST_SECONDS = 5.0  # for the request line to arrive
MONITOR_SECONDS = 10.0  # for the monitor to accept the switchover
WRITABLE = (ha.Role.PRIMARY, ha.Role.PRIMARY_DEGRADED, ha.Role.SINGLE)


class Refused(Exception):
    """The switchover is not asked of the monitor (or the monitor refused it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def refusal(status: ha.Status | None) -> Refused | None:
    """Why this node may not hand over now, or None when it may."""
    if status is None or status.role not in WRITABLE:
        role = status.role if status is not None else "unknown"
        return Refused("not_primary", f"this node is not the primary (its role: {role})")
    if status.degraded or not status.sync_standby:
        return Refused("degraded", "no synchronous standby: the pair is degraded, so a "
                                   "switchover could lose acknowledged writes")
    return None


async def perform_switchover(dsn: str, formation: str, node: str) -> int:
    """Ask the monitor to switch this node's group over; returns the group."""
    try:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(make_conninfo(dsn, **TCP_SETTINGS),
                                            autocommit=True),
            timeout=TCP_SETTINGS["connect_timeout"] + 2)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        raise Refused("monitor", f"the monitor cannot be reached: {_first_line(exc)}") from exc
    try:
        async with conn:
            cur = await conn.execute(GROUP_SQL, (formation, node))
            row = await cur.fetchone()
            if row is None:
                raise Refused("not_primary", f"the monitor does not know node {node} in "
                                             f"formation {formation}")
            group = int(row[0])
            await asyncio.wait_for(conn.execute(SWITCHOVER_SQL, (formation, group)),
                                   timeout=MONITOR_SECONDS)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        raise Refused("monitor", f"the monitor refused the switchover: {_first_line(exc)}") \
            from exc
    return group


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ControlServer:
    """Serves the control socket at ``path`` while ``run`` runs."""

    def __init__(self, path: Path, monitor: str, formation: str, node: str,
                 status: Callable[[], ha.Status | None]) -> None:
        self.path = path
        self.monitor = monitor
        self.formation = formation
        self.node = node
        self.status = status
        self._busy = asyncio.Lock()  # one switchover at a time

    async def run(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left over from a crashed run
        try:
            server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                     limit=MAX_REQUEST)
            os.chmod(self.path, 0o660)
        except OSError as exc:
            # Without it the pair still fails over; only the planned switchover
            # from the console is missing, and the console says so.
            log.error("control socket %s: %s; planned switchover unavailable", self.path,
                      exc.strerror)
            return
        log.info("control socket %s", self.path)
        try:
            async with server:
                await server.serve_forever()
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=REQUEST_SECONDS)
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except (ValueError, TimeoutError, asyncio.LimitOverrunError):
                answer: dict[str, Any] = {"ok": False, "error": "bad_request",
                                          "message": "one JSON object on one line, please"}
            else:
                answer = await self.answer(request)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the asker went away
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") != "switchover":
            return {"ok": False, "error": "bad_request", "message": "unknown operation"}
        async with self._busy:
            refused = refusal(self.status())
            try:
                if refused is not None:
                    raise refused
                group = await perform_switchover(self.monitor, self.formation, self.node)
            except Refused as exc:
                log.warning("switchover refused: %s", exc.message)
                return {"ok": False, "error": exc.code, "message": exc.message}
        log.warning("switchover of formation %s group %d asked of the monitor", self.formation,
                    group)
        return {"ok": True, "group": group}


async def ask(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The client side (the vault): one request, one answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)),
                                            timeout=timeout)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout=timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ValueError("the answer is not an object")
    return answer
