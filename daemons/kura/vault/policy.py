"""The security policy: reading it, and changing it with two people where a
change weakens it.

An SA's edit is divided by kura.core.policychange: the fields that make the
policy stronger apply at once (kept as an 'applied' change and audited as
``policy.set``); those that make it weaker wait as one proposed change
(``policy.propose``) until a second person approves it — another SA, or an
MA where the appliance has exactly one active SA — or rejects it, or the
proposer cancels it. A newer weakening proposal replaces the older one
('superseded'): an approver approves a change by its id, so what they
approve is exactly what they were shown. On approval the asked-for values
are laid over the policy as it is then and checked again.

Every step works on the policy stored in the database, under one
transaction-scoped lock, so that two admins' edits cannot both start from
the same policy; the vault's copy in memory is replaced after commit.
Audit entries name the fields, never more (a policy holds no secret, but
the entry need not repeat it)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from kura.core import accounts, policychange
from kura.core.errors import NotFound, PermissionDenied
from kura.core.policychange import NotEligibleApprover, PolicyChangeNotPending
from kura.vault.base import Caller, VaultBase, decision_json, operation, record
from kura.vault.store import Row, Tx


class PolicyOperations(VaultBase):
    async def _stored_policy(self, tx: Tx) -> accounts.SecurityPolicy:
        stored = await tx.setting("policy")
        return accounts.SecurityPolicy.from_json(stored) if stored else accounts.SecurityPolicy()

    def _change_json(self, row: Row, current: accounts.SecurityPolicy) -> dict[str, Any]:
        """A change for the pages: a proposed one's fields against the policy as
        it is now; a decided one's against the policy it started from."""
        if row["state"] == "proposed":
            fields = policychange.describe(current, row["changes"])
        else:
            base = accounts.SecurityPolicy.from_json(row["base"])
            fields = policychange.describe(base, row["changes"])
        return {**decision_json(row), "fields": [f.to_json() for f in fields]}

    # --- reading ------------------------------------------------------------------

    @operation("policy.get")
    async def policy_get(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            await record(tx, caller, "policy.get")
        return {"policy": self.policy.to_json()}

    @operation("policy.pending")
    async def policy_pending(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        since = self.clock() - timedelta(days=policychange.RECENT_DAYS)
        async with self.store.transaction() as tx:
            current = await self._stored_policy(tx)
            rows = await tx.policy_changes(since)
            active_sas = await tx.count_active("SA")
        pending = next((r for r in rows if r["state"] == "proposed"), None)
        may_decide = pending is not None and policychange.may_decide(
            caller.role, caller.actor, pending["proposed_by"], active_sas
        )
        return {
            "pending": self._change_json(pending, current) if pending else None,
            "may_decide": may_decide,
            "may_cancel": pending is not None and pending["proposed_by"] == caller.actor,
            "active_sas": active_sas,
            "recent": [self._change_json(r, current) for r in rows if r["state"] != "proposed"],
            "recent_days": policychange.RECENT_DAYS,
        }

    # --- changing -------------------------------------------------------------------

    @operation("policy.set")
    async def policy_set(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        pending: dict[str, Any] | None = None
        async with self.store.transaction() as tx:
            await tx.lock_policy()
            current = await self._stored_policy(tx)
            parts = policychange.split(current, args["policy"])
            applied = [c.name for c in parts.stronger]
            if parts.stronger or not parts.weaker:
                if parts.stronger:
                    await tx.set_setting("policy", parts.now.to_json())
                    await tx.insert_policy_change(
                        str(uuid.uuid4()),
                        "applied",
                        caller.actor,
                        now,
                        {c.name: c.new for c in parts.stronger},
                        current.to_json(),
                    )
                await record(tx, caller, "policy.set", detail={"changed": applied})
            if parts.weaker:
                detail: dict[str, Any] = {"fields": [c.name for c in parts.weaker]}
                older = next(
                    (r for r in await tx.policy_changes(now) if r["state"] == "proposed"), None
                )
                if older is not None:
                    await tx.finish_policy_change(older["id"], "superseded", caller.actor, now)
                    detail["superseded"] = str(older["id"])
                change_id = str(uuid.uuid4())
                await tx.insert_policy_change(
                    change_id, "proposed", caller.actor, now, parts.pending, parts.now.to_json()
                )
                await record(tx, caller, "policy.propose", target=change_id, detail=detail)
                row = await tx.policy_change(change_id)
                assert row is not None
                pending = self._change_json(row, parts.now)
        self.policy = parts.now
        return {"policy": parts.now.to_json(), "applied": applied, "pending": pending}

    async def _open_change(self, tx: Tx, change_id: str) -> Row:
        row = await tx.policy_change(change_id, lock=True)
        if row is None:
            raise NotFound()
        if row["state"] != "proposed":
            raise PolicyChangeNotPending(state=row["state"])
        return row

    async def _refused(self, caller: Caller, action: str, change_id: str, why: str) -> None:
        # Its own transaction: the refused operation's is rolled back.
        async with self.store.transaction() as tx:
            await record(
                tx, caller, action, outcome="denied", target=change_id, detail={"reason": why}
            )

    async def _decide(self, caller: Caller, args: dict[str, Any], approve: bool) -> dict[str, Any]:
        action = "policy.approve" if approve else "policy.reject"
        now = self.clock()
        refusal: str | None = None
        new: accounts.SecurityPolicy | None = None
        async with self.store.transaction() as tx:
            await tx.lock_policy()
            row = await self._open_change(tx, args["id"])
            active_sas = await tx.count_active("SA")
            if not policychange.may_decide(
                caller.role, caller.actor, row["proposed_by"], active_sas
            ):
                refusal = "proposer" if row["proposed_by"] == caller.actor else "second_sa"
            else:
                current = await self._stored_policy(tx)
                fields = sorted(row["changes"])
                if approve:
                    new = policychange.apply_pending(current, row["changes"])
                    await tx.set_setting("policy", new.to_json())
                await tx.finish_policy_change(
                    row["id"],
                    "approved" if approve else "rejected",
                    caller.actor,
                    now,
                    args.get("reason", ""),
                )
                await record(
                    tx,
                    caller,
                    action,
                    target=str(row["id"]),
                    detail={"fields": fields, "proposed_by": row["proposed_by"]},
                )
                done = await tx.policy_change(args["id"])
                assert done is not None
                result = self._change_json(done, new or current)
        if refusal is not None:
            await self._refused(caller, action, args["id"], refusal)
            raise NotEligibleApprover(reason=refusal)
        if new is not None:
            self.policy = new
        return {"change": result, "policy": self.policy.to_json()}

    @operation("policy.approve")
    async def policy_approve(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return await self._decide(caller, args, approve=True)

    @operation("policy.reject")
    async def policy_reject(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return await self._decide(caller, args, approve=False)

    @operation("policy.cancel")
    async def policy_cancel(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        async with self.store.transaction() as tx:
            await tx.lock_policy()
            row = await self._open_change(tx, args["id"])
            mine = row["proposed_by"] == caller.actor
            if mine:
                await tx.finish_policy_change(row["id"], "cancelled", caller.actor, now)
                await record(
                    tx,
                    caller,
                    "policy.cancel",
                    target=str(row["id"]),
                    detail={"fields": sorted(row["changes"])},
                )
                done = await tx.policy_change(args["id"])
                assert done is not None
                result = self._change_json(done, await self._stored_policy(tx))
        if not mine:
            await self._refused(caller, "policy.cancel", args["id"], "not_proposer")
            raise PermissionDenied(
                "only the proposer may cancel a policy change",
                "ポリシー変更を取り消せるのは申請者だけです。",
            )
        return {"change": result}
