"""The DA's account proposals, their approval by a second person, and the
holder's activation with the code's two halves (kura.core.account_approvals
holds the rules; this module stores and audits them). No audit entry, answer
to anyone but the one it is shown to, or log carries a half."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from kura.core import account_approvals as approvals
from kura.core import accounts
from kura.core.errors import AccountLocked, Conflict, LoginFailed, NotFound
from kura.core.roles import Role
from kura.vault.base import Caller, VaultBase, jsonable, operation, record, safe_actor_name
from kura.vault.store import Row, Tx

# A password hash no password matches (verify_password treats it as a
# mismatch): the account's password while it waits for its holder.
UNUSABLE_HASH = "!activation-pending"
SA_EXISTED = "security_admin_existed"
PENDING_STATES = ("pending",)
LISTED_STATES = ("pending", "approved", "rejected", "cancelled", "expired")


def _hash_pair(half_a: str, half_b: str) -> tuple[str, str]:
    return accounts.hash_password(half_a), accounts.hash_password(half_b)


class AccountApprovalOperations(VaultBase):
    # --- helpers the DA's operations (kura.vault.accounts) call ------------------

    async def _expire_proposals(self, tx: Tx) -> None:
        for row in await tx.expire_account_proposals(self.clock()):
            await tx.append_audit(
                actor="-",
                role="",
                action="user.proposal_expire",
                target=row["username"],
                client="local",
                detail={"proposal": str(row["id"]), "kind": row["kind"],
                        "proposer": row["proposer"]},
            )

    async def _propose(
        self,
        caller: Caller,
        change: approvals.Change,
        username: str,
        display_name: str = "",
        reset_totp: bool = False,
    ) -> dict[str, Any]:
        """Record a DA's proposal; return what the DA is shown (half A where
        approval will issue a code)."""
        assert caller.session
        new_code = approvals.gives_new_credentials(change)
        half_a = approvals.new_half() if new_code else None
        hash_a = await asyncio.to_thread(accounts.hash_password, half_a) if half_a else None
        proposal_id = str(uuid.uuid4())
        now = self.clock()
        async with self.store.transaction() as tx:
            await self._expire_proposals(tx)
            if await tx.pending_proposal_for(username):
                raise Conflict(
                    "a change to that account is already waiting for approval",
                    "そのアカウントには承認待ちの変更が既にあります。",
                )
            if change.kind == "create" and await tx.user_by_name(username):
                raise Conflict("that user name is taken", "そのユーザー名は使われています。")
            await tx.insert_account_proposal(
                {
                    "id": proposal_id,
                    "kind": change.kind,
                    "username": username,
                    "role": str(change.new_role),
                    "old_role": str(change.old_role) if change.old_role else None,
                    "display_name": display_name,
                    "reset_totp": reset_totp or (new_code and change.kind == "role"),
                    "new_code": new_code,
                    "half_a_hash": hash_a,
                    "proposer": caller.session.username,
                    "expires_at": now + approvals.PROPOSAL_LIFETIME,
                }
            )
            await record(
                tx,
                caller,
                "user.propose",
                target=username,
                detail={
                    "proposal": proposal_id,
                    "kind": change.kind,
                    "role": str(change.new_role),
                    "reset_totp": reset_totp,
                    "new_code": new_code,
                },
            )
        return {
            "username": username,
            "role": str(change.new_role),
            "kind": change.kind,
            "state": "pending",
            "proposal": proposal_id,
            "half_a": half_a,
            "expires_at": (now + approvals.PROPOSAL_LIFETIME).isoformat(),
        }

    async def _create_first_sa(
        self, caller: Caller, username: str, display_name: str
    ) -> dict[str, Any]:
        """The appliance's first SA, by the DA alone: the DA gets both halves."""
        half_a, half_b = approvals.new_half(), approvals.new_half()
        hash_a, hash_b = await asyncio.to_thread(_hash_pair, half_a, half_b)
        async with self.store.transaction() as tx:
            await tx.run("LOCK TABLE account_proposals IN EXCLUSIVE MODE")
            if await tx.setting(SA_EXISTED):
                return {}  # lost a race with another first SA: the caller proposes instead
            if await tx.user_by_name(username) or await tx.pending_proposal_for(username):
                raise Conflict("that user name is taken", "そのユーザー名は使われています。")
            user_id = await tx.insert_user(username, "SA", display_name, UNUSABLE_HASH)
            await tx.start_activation(
                user_id, UNUSABLE_HASH, hash_a, hash_b,
                self.clock() + approvals.ACTIVATION_LIFETIME,
            )
            await tx.set_setting(SA_EXISTED, True)
            await record(
                tx, caller, "user.create", target=username,
                detail={"role": "SA", "first_sa": True},
            )
        return {
            "username": username,
            "role": "SA",
            "kind": "create",
            "state": "approved",
            "first_sa": True,
            "half_a": half_a,
            "half_b": half_b,
        }

    async def _first_login(self, tx: Tx, caller: Caller, user: Row) -> None:
        """The first sign-in after an approved account change, for the SA to see."""
        await tx.update_user(user["id"], {"first_login_pending": False})
        approved = await tx.approved_proposals_for([user["username"]])
        detail: dict[str, Any] = {"role": user["role"]}
        if approved:
            last = approved[-1]
            detail.update(kind=last["kind"], proposer=last["proposer"], approver=last["approver"])
        await tx.append_audit(
            actor=user["username"], role=str(user["role"]), action="user.first_login",
            target=user["username"], client=caller.client, detail=detail,
        )

    async def _security_admin_existed(self) -> bool:
        async with self.store.transaction() as tx:
            return bool(await tx.setting(SA_EXISTED))

    # --- operations ----------------------------------------------------------------

    @operation("user.proposals")
    async def user_proposals(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        states = PENDING_STATES if args.get("state", "pending") == "pending" else LISTED_STATES
        async with self.store.transaction() as tx:
            await self._expire_proposals(tx)
            rows = await tx.account_proposals(states, int(args.get("limit", 100)))
        return {"proposals": [jsonable(r) for r in rows]}

    @operation("user.first_logins")
    async def user_first_logins(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """The latest first sign-ins of number handlers (MU, MA), newest first."""
        since = self.clock() - approvals.FIRST_LOGIN_WINDOW
        async with self.store.transaction() as tx:
            rows = await tx.search_audit(None, "user.first_login", since, None, 0, 200)
        found = [
            {
                "username": r["actor"],
                "role": r["role"],
                "at": r["at"].isoformat(),
                "proposer": r["detail"].get("proposer"),
                "approver": r["detail"].get("approver"),
            }
            for r in rows
            if r["role"] in ("MU", "MA") and r["action"] == "user.first_login"
        ]
        return {"first_logins": found[: int(args.get("limit", 20))]}

    @operation("user.approve")
    async def user_approve(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        assert caller.session
        s = caller.session
        half_b = approvals.new_half()
        hash_b = await asyncio.to_thread(accounts.hash_password, half_b)
        now = self.clock()
        async with self.store.transaction() as tx:
            await self._expire_proposals(tx)
        async with self.store.transaction() as tx:
            p = await _pending_proposal(tx, args["id"])
            approvals.check_approver(s.username, s.role, p["proposer"], p["username"])
            user = await tx.user_by_name(p["username"], lock=True)
            role = Role(p["role"])
            if p["kind"] == "create":
                if user is not None:
                    raise Conflict("that user name is taken", "そのユーザー名は使われています。")
                user_id = await tx.insert_user(p["username"], str(role), p["display_name"],
                                               UNUSABLE_HASH)
            else:
                if user is None:
                    raise NotFound()
                user_id = int(user["id"])
                if p["kind"] == "role" and user["role"] != p["old_role"]:
                    raise Conflict(
                        "the account's role changed since the proposal",
                        "申請後にアカウントのロールが変更されています。",
                    )
            if p["kind"] == "role":
                await tx.update_user(user_id, {"role": str(role)})
            if p["kind"] == "enable":
                await tx.update_user(user_id, {"disabled": False})
            if p["new_code"]:
                await tx.start_activation(
                    user_id, UNUSABLE_HASH, p["half_a_hash"], hash_b,
                    now + approvals.ACTIVATION_LIFETIME,
                )
            if p["reset_totp"]:
                await tx.clear_totp(user_id)
            if p["kind"] != "create" and (p["new_code"] or p["reset_totp"] or p["kind"] == "role"):
                await tx.delete_user_sessions(user_id)
            if role == Role.SA:
                await tx.set_setting(SA_EXISTED, True)
            await tx.decide_account_proposal(p["id"], "approved", s.username, now)
            await record(
                tx,
                caller,
                "user.approve",
                target=p["username"],
                detail={
                    "proposal": str(p["id"]),
                    "kind": p["kind"],
                    "role": str(role),
                    "proposer": p["proposer"],
                    "approver": s.username,
                    "reset_totp": bool(p["reset_totp"]),
                    "new_code": bool(p["new_code"]),
                },
            )
        self._forget_user_sessions(user_id)
        return {
            "username": p["username"],
            "role": str(role),
            "kind": p["kind"],
            "state": "approved",
            "proposal": str(p["id"]),
            "half_b": half_b if p["new_code"] else None,
        }

    async def _close(self, caller: Caller, proposal_id: str, state: str) -> dict[str, Any]:
        assert caller.session
        s = caller.session
        async with self.store.transaction() as tx:
            await self._expire_proposals(tx)
        async with self.store.transaction() as tx:
            p = await _pending_proposal(tx, proposal_id)
            if state == "rejected":
                approvals.check_approver(s.username, s.role, p["proposer"], p["username"])
            elif p["proposer"] != s.username:
                raise Conflict(
                    "only the DA who proposed it may cancel a proposal",
                    "申請を取り消せるのは申請した本人だけです。",
                )
            await tx.decide_account_proposal(p["id"], state, s.username, self.clock())
            await record(
                tx,
                caller,
                "user.reject" if state == "rejected" else "user.cancel",
                target=p["username"],
                detail={"proposal": str(p["id"]), "kind": p["kind"], "proposer": p["proposer"]},
            )
        return {"proposal": str(p["id"]), "username": p["username"], "state": state}

    @operation("user.reject")
    async def user_reject(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return await self._close(caller, args["id"], "rejected")

    @operation("user.cancel")
    async def user_cancel(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return await self._close(caller, args["id"], "cancelled")

    @operation("user.activate")
    async def user_activate(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """The holder joins the two halves and sets a password of their own.
        A wrong attempt counts towards the account's lockout like a wrong
        password, and every attempt is audited (never the halves)."""
        username, now = args["username"], self.clock()
        half_a = approvals.normalise_half(args["half_a"])
        half_b = approvals.normalise_half(args["half_b"])
        async with self.store.transaction() as tx:
            user = await tx.user_by_name(username)
        pending = (
            user is not None
            and not user["disabled"]
            and user["activation_a"] is not None
            and user["activation_b"] is not None
        )
        if user is not None and user["locked_until"] and user["locked_until"] > now:
            await self._audit_activation(caller, username, user["role"], "denied", "locked")
            raise AccountLocked(until=user["locked_until"].isoformat())
        hashes = (
            (user["activation_a"], user["activation_b"])
            if pending and user is not None
            else (accounts.DUMMY_HASH, accounts.DUMMY_HASH)
        )
        # Both hashes are always checked, so the time taken does not tell
        # which half was wrong.
        ok_a = await asyncio.to_thread(accounts.verify_password, half_a or "-", hashes[0])
        ok_b = await asyncio.to_thread(accounts.verify_password, half_b or "-", hashes[1])
        good = pending and ok_a and ok_b
        if good and user is not None and user["activation_expires"] <= now:
            await self._audit_activation(caller, username, user["role"], "denied", "expired")
            raise LoginFailed(
                "the activation code has expired; ask the appliance admin for a new one",
                "有効化コードの期限が切れています。アプライアンス管理者に再発行を依頼してください。",
            )
        if not good or user is None:
            if user is None or not pending:
                await self._audit_activation(
                    caller, safe_actor_name(username), user["role"] if user else "", "denied",
                    "not_pending" if user else "unknown_user",
                )
                raise self._activation_failed()
            async with self.store.transaction() as tx:
                locked = await tx.user_by_name(username, lock=True)
                assert locked is not None
                failures = int(locked["failed_logins"]) + 1
                until = accounts.lockout_until(self.policy, failures, now)
                await tx.record_login_failure(locked["id"], failures, until)
                await tx.append_audit(
                    actor=username, role=str(locked["role"]), action="user.activate",
                    outcome="denied", client=caller.client,
                    detail={"reason": "wrong_code", "failures": failures, "locked": bool(until)},
                )
            if until:
                raise AccountLocked(until=until.isoformat())
            raise self._activation_failed()
        new = args["new_password"]
        async with self.store.transaction() as tx:
            history = await tx.password_history(int(user["id"]), self.policy.history)
        await asyncio.to_thread(accounts.check_new_password, self.policy, new, username, history)
        hashed = await asyncio.to_thread(accounts.hash_password, new)
        async with self.store.transaction() as tx:
            locked = await tx.user_by_name(username, lock=True)
            assert locked is not None
            if locked["activation_a"] != user["activation_a"]:
                raise self._activation_failed()  # activated or reset meanwhile
            await tx.finish_activation(int(locked["id"]), hashed)
            await tx.append_audit(
                actor=username, role=str(locked["role"]), action="user.activate",
                target=username, client=caller.client, detail={},
            )
        return {"username": username, "activated": True}

    @staticmethod
    def _activation_failed() -> LoginFailed:
        return LoginFailed(
            "the user name or the activation code is wrong",
            "ユーザー名または有効化コードが正しくありません。",
        )

    async def _audit_activation(
        self, caller: Caller, actor: str, role: str, outcome: str, reason: str
    ) -> None:
        async with self.store.transaction() as tx:
            await tx.append_audit(
                actor=actor, role=str(role), action="user.activate", outcome=outcome,
                client=caller.client, detail={"reason": reason},
            )


async def _pending_proposal(tx: Tx, proposal_id: str) -> Row:
    """The proposal, locked, if it still waits for a decision."""
    p = await tx.account_proposal(proposal_id, lock=True)
    if p is None:
        raise NotFound()
    if p["state"] != "pending":
        raise Conflict(
            f"the proposal is {p['state']}, no longer waiting",
            "この申請は既に処理済みか期限切れです。",
            state=p["state"],
        )
    return p
