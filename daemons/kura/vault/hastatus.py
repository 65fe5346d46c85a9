"""The pair's health for the console (``ha.status``) and the planned
switchover (``ha.switchover``).

What the vault knows of the pair comes from three places, and the answer
keeps them apart so that none is mistaken for another:

- its own role, from its own database (kura.vault.standby): ``single``,
  ``primary`` or ``standby``;
- what kura-hasync last wrote to its status file: the role as pg_auto_failover
  sees it (``primary``, ``primary-degraded``, ``standby``, ``fenced`` …),
  whether a synchronous standby follows, whether the witness answers, and the
  replication figures it reads with its ``pg_monitor`` role (the vault has
  none). kura-hasync rewrites the file every second, so a file older than
  ``STALE_SECONDS`` means it has stopped: that is reported as such, and its
  last words are shown as the last known, never as the present;
- the audit log: the pair's role changes (``ROLE_CHANGES``) and so the last
  failover and why (a promotion that follows a switchover the DA asked for
  was planned; any other was the primary's loss).

The vault also records what kura-hasync only says: each time the primary
starts going on without a synchronous standby (``ha.degraded``) and each
time the standby is back in step (``ha.in_step``), checked every second in
its upkeep, so the loss of redundancy is in the log and on the admins' home
pages, not only in a banner that is gone once it is over.

The switchover asks kura-hasync over its control socket
(kura.hasync.control), which asks the monitor. It is refused here first
(with the same rules kura-hasync applies again) when this node is not the
primary or the pair is degraded, and every request is audited with its
outcome. The ``ha.switchover`` entry is appended in the transaction that is
open while the monitor is asked, and committed only once the monitor has
accepted: a switchover that starts is always in the log (the standby, in
step, holds it too), and a refused one is recorded as denied instead. Other
audited work waits on the chain's head meanwhile: well under a second on a
healthy pair, at most ``CONTROL_SECONDS`` when the witness does not answer;
a rare act of the DA's is worth that. (Should the commit itself fail after
the monitor accepted, the DA gets the error and the new primary's
``ha.promoted`` is the record.)
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kura.core.errors import SwitchoverRefused
from kura.hasync import control
from kura.vault.base import PRIMARY, Caller, VaultBase, operation, record

log = logging.getLogger("kura.vault")

STALE_SECONDS = 5.0  # kura-hasync rewrites its status file every second
# The audit actions that change or set up the pair's roles, shown on the
# health page and on the DA's and SA's home pages.
PAIR_HEALTH = ("ha.degraded", "ha.in_step")
FAILOVERS = ("ha.promoted", "ha.switchover")
ROLE_CHANGES = (*FAILOVERS, "ha.paired", *PAIR_HEALTH)
RECENT = 10
# A promotion this soon after a switchover was started is that switchover.
PLANNED_WITHIN = timedelta(minutes=10)
# How long the vault waits for kura-hasync (which waits up to 10 s for the monitor).
CONTROL_SECONDS = 15.0
WRITABLE_ROLES = ("primary", "primary-degraded", "single")

_REASONS: dict[str, tuple[str, str]] = {
    "single": ("this appliance is not one of an HA pair",
               "この装置は HA ペアではありません。"),
    "hasync": ("kura-hasync is not running on this appliance, so the pair's state is not known",
               "この装置で kura-hasync が動いていないため、ペアの状態がわかりません。"),
    "not_primary": ("only the primary hands over: this appliance is not the primary",
                    "切り替えは稼働系からのみ行えます。この装置は稼働系ではありません。"),
    "degraded": ("the pair is degraded (no synchronous standby): the standby may not hold "
                 "every acknowledged write",
                 "ペアが縮退しています（同期している待機系がありません）。待機系に最新の"
                 "データがない可能性があるため、切り替えできません。"),
    "monitor": ("the witness (pg_auto_failover's monitor) refused or did not answer",
                "監視ノード（pg_auto_failover のモニター）が拒否したか、応答しませんでした。"),
}


def hasync_report(path: Path | None, now: float | None = None) -> dict[str, Any]:
    """kura-hasync's status file as the health page shows it. ``state`` is
    ``live``, ``stale`` (older than STALE_SECONDS: kura-hasync has stopped),
    ``missing`` or ``unreadable``; never an exception."""
    if path is None:
        return {"state": "missing"}
    try:
        written = path.stat().st_mtime
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return {"state": "missing"}
    except (OSError, ValueError):
        return {"state": "unreadable"}
    if not isinstance(body, dict):
        return {"state": "unreadable"}
    age = max(0.0, (now if now is not None else time.time()) - written)
    replication = body.get("replication")
    return {
        "state": "live" if age <= STALE_SECONDS else "stale",
        "age_seconds": round(age, 1),
        "role": str(body.get("role", "unknown")),
        "degraded": bool(body.get("degraded")),
        "sync_standby": bool(body.get("sync_standby")),
        "standby_streaming": bool(body.get("standby_streaming")),
        "witness_reachable": bool(body.get("witness_reachable")),
        "vip_held": bool(body.get("vip_held")),
        "rule": str(body.get("rule", "")),
        "since": body.get("changed_at"),
        "node": body.get("node"),
        "formation": body.get("formation"),
        "vip": body.get("vip"),
        "replication": replication if isinstance(replication, dict) else {},
    }


def degraded_now(report: dict[str, Any]) -> bool:
    """The primary goes on alone: the banner on every page."""
    return report["state"] == "live" and report["degraded"] and report["role"] in (
        "primary", "primary-degraded")


def _change_json(row: Any) -> dict[str, Any]:
    detail = row["detail"] or {}
    shown = {k: detail[k] for k in ("previous_role", "reason", "node", "standby", "group")
             if k in detail}
    return {
        "seq": int(row["seq"]),
        "at": row["at"].isoformat(),
        "action": row["action"],
        "outcome": row["outcome"],
        "actor": row["actor"],
        "target": row["target"],
        "detail": shown,
    }


def last_failover(changes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest promotion and why: planned when the failover entry before
    it is a switchover that was started shortly before, else the primary was
    lost. ``changes`` are the newest first."""
    failovers = [c for c in changes if c["action"] in FAILOVERS]
    for i, change in enumerate(failovers):
        if change["action"] != "ha.promoted":
            continue
        before = failovers[i + 1] if i + 1 < len(failovers) else None
        planned = (before is not None and before["action"] == "ha.switchover"
                   and before["outcome"] == "ok"
                   and _at(change) - _at(before) <= PLANNED_WITHIN)
        return {
            "at": change["at"],
            "why": "switchover" if planned else "failover",
            "asked_by": before["actor"] if planned and before else None,
            "previous_role": change["detail"].get("previous_role"),
        }
    return None


def _at(change: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(change["at"])


class HaStatusOperations(VaultBase):
    """ha.status (DA, SA) and ha.switchover (DA)."""

    def hasync_report(self) -> dict[str, Any] | None:
        """None on a single appliance (no [ha] in the configuration)."""
        if self.config.ha is None:
            return None
        return hasync_report(self.config.ha.status_file)

    def pair_degraded(self) -> bool:
        report = self.hasync_report()
        return report is not None and degraded_now(report)

    async def follow_pair(self) -> None:
        """Every second on an unsealed primary: record the pair's loss of its
        synchronous standby, and its return, as kura-hasync reports them
        (nothing while kura-hasync is silent: that is not news of the pair)."""
        report = self.hasync_report()
        if report is None or report["state"] != "live" or not self.writable:
            return
        if degraded_now(report):
            found = "ha.degraded"
        elif report["role"] == "primary" and report["sync_standby"]:
            found = "ha.in_step"
        else:
            return  # fenced, demoted, unknown: the role changes say it
        if found == self._pair_recorded:
            return
        async with self.store.transaction() as tx:
            if self._pair_recorded is None:  # since the start: what the log last said
                last = await tx.latest_entries(PAIR_HEALTH, 1)
                # A pair starts in step: nothing to say until it degrades.
                self._pair_recorded = str(last[0]["action"]) if last else "ha.in_step"
            if found != self._pair_recorded:
                await tx.append_audit(
                    actor="-", role="", action=found, client="local",
                    target=str(report.get("node") or ""),
                    detail={"node": report.get("node"), "hasync_role": report["role"],
                            "since": report.get("since")},
                )
                log.warning("the pair is %s", "degraded: no synchronous standby"
                            if found == "ha.degraded" else "back in step")
        self._pair_recorded = found

    @operation("ha.status")
    async def ha_status(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            rows = await tx.latest_entries(ROLE_CHANGES, RECENT)
            # Apart: many ups and downs of the standby must not hide the last failover.
            failovers = await tx.latest_entries(FAILOVERS, RECENT)
        changes = [_change_json(r) for r in rows]
        report = self.hasync_report()
        result: dict[str, Any] = {
            "mode": "single" if report is None else "pair",
            "role": self.role,
            "hasync": report,
            "degraded": report is not None and degraded_now(report),
            "role_changes": changes,
            "last_failover": last_failover([_change_json(r) for r in failovers]),
        }
        if report is not None:
            refusal = self._refusal(report)
            result["switchover"] = {"possible": refusal is None, "refusal": refusal}
        return result

    def _refusal(self, report: dict[str, Any] | None) -> str | None:
        if report is None:
            return "single"
        if report["state"] != "live":
            return "hasync"
        if self.role != PRIMARY or report["role"] not in WRITABLE_ROLES:
            return "not_primary"
        if report["degraded"] or not report["sync_standby"]:
            return "degraded"
        return None

    @operation("ha.switchover")
    async def ha_switchover(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        report = self.hasync_report()
        reason = self._refusal(report)
        detail: dict[str, Any] = {}
        if report is not None:
            detail = {"node": report.get("node"), "formation": report.get("formation")}
        said = ""
        if reason is None:
            assert self.config.ha is not None and self.config.ha.control_socket is not None
            socket = self.config.ha.control_socket
            try:
                async with self.store.transaction() as tx:
                    # Held open while the monitor is asked: committed only if it accepts.
                    await record(tx, caller, "ha.switchover",
                                 target=str(detail.get("node") or ""), detail=detail)
                    answer = await self._ask(socket)
                    if not answer.get("ok"):
                        raise _Rollback(str(answer.get("error") or "monitor"),
                                        str(answer.get("message") or ""))
            except _Rollback as exc:
                reason = exc.reason if exc.reason in _REASONS else "monitor"
                said = exc.said
            else:
                log.warning("switchover asked by %s accepted by the monitor", caller.actor)
                return {"started": True, **detail, "group": answer.get("group")}
        raise await self._refuse(caller, reason, detail, said)

    async def _ask(self, socket: Path) -> dict[str, Any]:
        try:
            return await control.ask(socket, {"op": "switchover"}, CONTROL_SECONDS)
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("kura-hasync's control socket: %s", exc)
            return {"ok": False, "error": "hasync"}

    async def _refuse(self, caller: Caller, reason: str, detail: dict[str, Any],
                      said: str) -> SwitchoverRefused:
        async with self.store.transaction() as tx:
            await record(tx, caller, "ha.switchover", outcome="denied",
                         target=str(detail.get("node") or ""),
                         detail={**detail, "reason": reason})
        en, ja = _REASONS[reason]
        log.warning("switchover refused (%s)%s", reason, f": {said}" if said else "")
        return SwitchoverRefused(f"The switchover was not started: {en}.",
                                 f"切り替えを開始できませんでした。{ja}", reason=reason)


class _Rollback(Exception):
    """Leaves the switchover's transaction without committing its entry."""

    def __init__(self, reason: str, said: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.said = said
