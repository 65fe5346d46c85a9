"""Reports and the appliance's state: the access report and the
handling-status ledger (rows from the store, folded by kura.core.reports),
the verification of the whole audit chain inside the vault, and the status a
DA watches (seal, keyring, database, storage, accounts, sessions).

Every report is itself recorded in the audit log; none carries a number."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from kura import __version__
from kura.core import audit, reports
from kura.core.disposal import RetentionRule
from kura.core.errors import BadRequest
from kura.vault.base import (
    Caller,
    jsonable,
    operation,
    parse_time,
    record,
    safe_actor_name,
)
from kura.vault.integrity import IntegrityOperations


def _space(name: str, path: Path | str | None) -> dict[str, Any]:
    """Free and total bytes of the filesystem holding ``path``."""
    found: dict[str, Any] = {
        "name": name,
        "path": str(path) if path else None,
        "free": None,
        "total": None,
    }
    if path is None:
        return found
    try:
        st = os.statvfs(path)
    except OSError:
        return found
    found["free"] = st.f_bavail * st.f_frsize
    found["total"] = st.f_blocks * st.f_frsize
    return found


class ReportOperations(IntegrityOperations):
    def _period(self, args: dict[str, Any]) -> tuple[Any, Any]:
        return reports.resolve_period(
            parse_time(args.get("since"), "since"),
            parse_time(args.get("until"), "until"),
            self.clock(),
        )

    @operation("report.access")
    async def report_access(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        since, until = self._period(args)
        user = args.get("user")
        if user and audit.looks_like_my_number(user):
            # Nobody's name is a number; echoing one back would put it in a report.
            raise BadRequest(
                "user: not a user name", "user: ユーザー名ではありません。", field="user"
            )
        offset, limit = args.get("offset", 0), args.get("limit", 100)
        async with self.store.transaction() as tx:
            counts = await tx.audit_counts(since, until)
            entries = await tx.search_audit(user, None, since, until, offset, limit) if user else []
            await record(
                tx,
                caller,
                "report.access",
                detail={
                    "since": since.isoformat(),
                    "until": until.isoformat(),
                    "user": safe_actor_name(user) if user else None,
                },
            )
        summary = reports.summarise_access(counts)
        result: dict[str, Any] = {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "categories": list(reports.CATEGORIES),
            **summary,
        }
        if user:
            result.update(
                user=user,
                user_summary=next((u for u in summary["users"] if u["user"] == user), None),
                entries=[jsonable(e) for e in entries],
                offset=offset,
                limit=limit,
            )
        return result

    @operation("report.ledger")
    async def report_ledger(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        since, until = self._period(args)
        now = self.clock()
        async with self.store.transaction() as tx:
            held = await tx.subjects_held()
            purposes = await tx.purposes_in_use()
            retention = await tx.retention_groups()
            rules = await tx.retention_rules()
            reveals = await tx.reveals_by_kind(since, until)
            disposed = await tx.disposed_by_kind(since, until)
            documents = await tx.documents_held()
            exports = await tx.take_outs(since, until, reports.CATEGORY_ACTIONS["export"])
            accounts = await tx.accounts_with_access()
            changes = await tx.approved_proposals_for([a["username"] for a in accounts])
            ring = await tx.keyring()
            await record(
                tx,
                caller,
                "report.ledger",
                detail={"since": since.isoformat(), "until": until.isoformat()},
            )
        ledger = reports.build_ledger(
            held=held,
            purposes=purposes,
            retention=[
                reports.RetentionGroup(
                    r["kind"],
                    r["basis"],
                    r["event"],
                    r["employee_basis"],
                    r["employee_event"],
                    int(r["n"]),
                )
                for r in retention
            ],
            rules={r["basis"]: RetentionRule.from_row(r) for r in rules},
            reveals=reveals,
            disposed=disposed,
            documents=documents,
            exports=exports,
            accounts=[jsonable(a) for a in accounts],
            account_changes=[jsonable(c) for c in changes],
            today=now.astimezone(reports.TOKYO).date(),
        )
        ledger["storage"].update(
            seal_mode=self.seal.mode if self.seal else None,
            keyring_versions=sorted(ring),
        )
        return {
            "appliance": self.config.appliance,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "generated_at": now.isoformat(),
            **ledger,
        }

    @operation("audit.verify")
    async def audit_verify(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        # Checkpoints first: each covers an entry already committed, so the
        # entries read after them reach at least as far.
        async with self.store.transaction() as tx:
            checkpoints = await tx.checkpoints()
        async with self.store.transaction() as tx:
            entries = await tx.audit_entries()
        public_key = audit.raw_public_key(keys.audit_public_key)
        if entries:
            head = entries[-1]
            final = audit.sign_checkpoint(
                keys.audit_signing_key, head.seq, head.hash, self.clock(), final=True
            )
            result = await asyncio.to_thread(
                audit.verify_chain, entries, checkpoints, final, trusted_public_key=public_key
            )
            outcome: dict[str, Any] = {
                "ok": result.ok,
                "entries": result.entries,
                "checkpoints": result.checkpoints,
                "last_seq": result.last_seq,
                "first_bad_seq": result.first_bad_seq,
                "problem": result.problem,
                "problem_ja": result.problem_ja,
                "problem_en": result.problem_en,
                "faults": [_fault_json(f) for f in result.faults],
                "recorded": [
                    {
                        **_fault_json(f),
                        "incident": i.seq,
                        "acknowledged_by": list(i.acknowledged_by),
                    }
                    for f, i in result.recorded
                ],
            }
        else:
            outcome = {
                "ok": True,
                "entries": 0,
                "checkpoints": len(checkpoints),
                "last_seq": 0,
                "first_bad_seq": None,
                "problem": "ok",
                "problem_ja": "",
                "problem_en": "",
                "faults": [],
                "recorded": [],
            }
        outcome["last_checkpoint_at"] = checkpoints[-1].at.isoformat() if checkpoints else None
        outcome["public_key_fingerprint"] = audit.public_key_fingerprint(public_key)
        async with self.store.transaction() as tx:
            await record(
                tx,
                caller,
                "audit.verify",
                outcome="ok",
                detail={
                    "ok": outcome["ok"],
                    "entries": outcome["entries"],
                    "problem": outcome["problem"],
                },
            )
        if outcome["faults"]:
            # A fault the SA found is one the vault must act on at once.
            await self.sweep()
        return outcome

    @operation("appliance.status")
    async def appliance_status(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        policy = self.policy
        async with self.store.transaction() as tx:
            ring = await tx.keyring()
            size = await tx.database_size()
            data_dir = await tx.data_directory()
            users = await tx.user_counts()
            sessions = await tx.open_sessions(
                now - timedelta(minutes=policy.session_idle_minutes),
                now - timedelta(hours=policy.session_absolute_hours),
            )
            checkpoint = await tx.last_checkpoint()
            head = await tx.audit_head()
            await record(tx, caller, "appliance.status")
        keys = self._keys()
        storage = await asyncio.to_thread(
            lambda: [_space("keys", self.config.vault.keys_dir), _space("data", data_dir)]
        )
        return {
            "version": __version__,
            "appliance": self.config.appliance,
            "sealed": self.sealed,
            "seal_mode": self.seal.mode if self.seal else None,
            "keyring_versions": sorted(ring),
            "active_key_version": keys.active_version,
            "database_size": size,
            "storage": storage,
            "users": [
                {"role": r["role"], "enabled": int(r["enabled"]), "total": int(r["n"])}
                for r in users
            ],
            "users_total": sum(int(r["n"]) for r in users),
            "sessions_open": sessions,
            "audit_entries": int(head["seq"]) if head else 0,
            "last_checkpoint_at": checkpoint["at"].isoformat() if checkpoint else None,
            "audit_key_fingerprint": audit.public_key_fingerprint(
                audit.raw_public_key(keys.audit_public_key)
            ),
            "time": now.isoformat(),
        }


def _fault_json(f: audit.Fault) -> dict[str, Any]:
    return {**f.to_json(), "ja": f.ja, "en": f.en}
