"""Accounts and sign-in: the operations of sessions (log in and out, change a
password, enrol TOTP) and of the DA (users; what needs a second person is in
``account_approvals``). The security policy's operations are in ``policy``."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from kura.core import account_approvals as approvals
from kura.core import accounts
from kura.core.errors import (
    AccountLocked,
    Conflict,
    LoginFailed,
    NotFound,
)
from kura.core.purposes import CATALOGUE
from kura.core.roles import Role
from kura.vault.account_approvals import AccountApprovalOperations
from kura.vault.base import (
    Caller,
    Session,
    jsonable,
    one_time_password,
    operation,
    record,
    safe_actor_name,
)
from kura.vault.store import Row
from kura.vault.terminals import TerminalRule


class AccountOperations(AccountApprovalOperations, TerminalRule):
    @operation("bootstrap_da")
    async def bootstrap_da(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        password = args.get("password") or one_time_password()
        accounts.check_new_password(self.policy, password, args["username"], [])
        hashed = await asyncio.to_thread(accounts.hash_password, password)
        async with self.store.transaction() as tx:
            if await tx.count_users(lock=True):
                raise Conflict("accounts already exist", "アカウントは既に存在します。")
            await tx.insert_user(args["username"], "DA", "Appliance Admin", hashed)
            await tx.append_audit(
                actor="-",
                role="",
                action="user.create",
                target=args["username"],
                client=caller.client,
                detail={"role": "DA", "first": True},
            )
        return {"username": args["username"], "password": password, "must_change_password": True}

    @operation("login")
    async def login(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        username, now = args["username"], self.clock()
        async with self.store.transaction() as tx:
            user = await tx.user_by_name(username)
        if user is None or user["disabled"]:
            await asyncio.to_thread(accounts.verify_password, args["password"], accounts.DUMMY_HASH)
            await self._audit_login(caller, safe_actor_name(username), "", "denied", "unknown_user")
            raise LoginFailed()
        if user["activation_a"] is not None:
            # Waiting for its holder (kura.vault.account_approvals): no password works yet.
            await asyncio.to_thread(accounts.verify_password, args["password"], accounts.DUMMY_HASH)
            await self._audit_login(caller, username, user["role"], "denied", "not_activated")
            raise LoginFailed()
        if user["locked_until"] and user["locked_until"] > now:
            await self._audit_login(caller, username, user["role"], "denied", "locked")
            raise AccountLocked(until=user["locked_until"].isoformat())
        good = await asyncio.to_thread(
            accounts.verify_password, args["password"], user["password_hash"]
        )
        role = Role(user["role"])
        totp_step: int | None = None
        if good and user["totp_secret_ct"] is not None and accounts.mfa_required(self.policy, role):
            code = args.get("totp", "")
            if not code:
                await self._audit_login(caller, username, role, "denied", "totp_missing")
                raise LoginFailed(
                    "enter the code from your authenticator app",
                    "認証アプリの確認コードを入力してください。",
                    totp_required=True,
                )
            secret = self._open_totp(user, "totp_secret_ct")
            totp_step = accounts.totp_verify(secret, code, now, user["totp_last_step"])
            good = totp_step is not None
        if good:
            # The enrolled-terminal rule (kura.core.terminals), judged once the
            # credentials are right: a refusal tells nothing about an account
            # to someone who does not know its password.
            await self.refuse_terminal(caller, username, role, None)
        async with self.store.transaction() as tx:
            locked = await tx.user_by_name(username, lock=True)
            assert locked is not None
            if not good:
                failures = int(locked["failed_logins"]) + 1
                until = accounts.lockout_until(self.policy, failures, now)
                await tx.record_login_failure(locked["id"], failures, until)
                await tx.append_audit(
                    actor=username,
                    role=str(role),
                    action="login",
                    outcome="denied",
                    client=caller.client,
                    detail={
                        "reason": "bad_credentials",
                        "failures": failures,
                        "locked": bool(until),
                    },
                )
            else:
                await tx.record_login_success(locked["id"])
                if totp_step is not None:
                    await tx.set_totp_last_step(locked["id"], totp_step)
                token, digest = accounts.new_session_token()
                mfa_done = totp_step is not None
                row = await tx.insert_session(
                    digest, locked["id"], caller.client, mfa_done, now, caller.terminal
                )
                await tx.append_audit(
                    actor=username,
                    role=str(role),
                    action="login",
                    client=caller.client,
                    detail={"mfa": mfa_done},
                )
                if locked["first_login_pending"]:
                    await self._first_login(tx, caller, locked)
        if not good:
            if until:
                raise AccountLocked(until=until.isoformat())
            raise LoginFailed()
        restriction = self._restriction(locked, mfa_done)
        session = Session(
            digest=digest,
            user_id=int(locked["id"]),
            username=username,
            role=role,
            created=row["created_at"],
            last_seen=now,
            stored_seen=row["last_seen"],
            restriction=restriction,
            language=locked["language"],
            display_name=locked["display_name"],
            terminal=caller.terminal,
        )
        self.sessions[digest] = session
        return {
            "token": token,
            "username": username,
            "role": str(role),
            "must_change_password": restriction == "password",
            "mfa_setup_required": restriction == "mfa",
            "idle_minutes": self.policy.session_idle_minutes,
        }

    async def _audit_login(
        self, caller: Caller, actor: str, role: str, outcome: str, reason: str
    ) -> None:
        async with self.store.transaction() as tx:
            await tx.append_audit(
                actor=actor,
                role=str(role),
                action="login",
                outcome=outcome,
                client=caller.client,
                detail={"reason": reason},
            )

    @operation("logout")
    async def logout(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        assert caller.session
        self.sessions.pop(caller.session.digest, None)
        async with self.store.transaction() as tx:
            await tx.delete_session(caller.session.digest)
            await record(tx, caller, "logout")
        return {"signed_out": True}

    @operation("whoami")
    async def whoami(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        assert caller.session
        s = caller.session
        return {
            "username": s.username,
            "role": str(s.role),
            "must_change_password": s.restriction == "password",
            "mfa_setup_required": s.restriction == "mfa",
            "language": s.language,
            "display_name": s.display_name,
            "idle_minutes": self.policy.session_idle_minutes,
            "ha_degraded": self.pair_degraded(),
        }

    @operation("preferences.set")
    async def preferences_set(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """The user's own settings: the console's language."""
        assert caller.session
        async with self.store.transaction() as tx:
            await tx.update_user(caller.session.user_id, {"language": args["language"]})
            await record(tx, caller, "preferences.set", detail={"language": args["language"]})
        self._forget_user_sessions(caller.session.user_id)  # reloaded with the new language
        return {"language": args["language"]}

    @operation("change_password")
    async def change_password(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        assert caller.session
        s = caller.session
        async with self.store.transaction() as tx:
            user = await tx.user_by_id(s.user_id)
            history = await tx.password_history(s.user_id, self.policy.history)
        assert user is not None
        if not await asyncio.to_thread(
            accounts.verify_password, args["current_password"], user["password_hash"]
        ):
            await self._audit_login(caller, s.username, str(s.role), "denied", "wrong_password")
            raise LoginFailed(
                "the current password is wrong", "現在のパスワードが正しくありません。"
            )
        new = args["new_password"]
        await asyncio.to_thread(accounts.check_new_password, self.policy, new, s.username, history)
        hashed = await asyncio.to_thread(accounts.hash_password, new)
        async with self.store.transaction() as tx:
            await tx.set_password(s.user_id, hashed, must_change=False)
            await record(tx, caller, "user.password", target=s.username)
            user = await tx.user_by_id(s.user_id)
            session_row = await tx.session(s.digest)
        assert user is not None and session_row is not None
        self.sessions[s.digest] = replace(
            s, restriction=self._restriction(user, bool(session_row["mfa_done"]))
        )
        return await self.whoami(replace(caller, session=self.sessions[s.digest]), {})

    def _open_totp(self, user: Row, column: str) -> str:
        keys = self._keys()
        dk = keys.open_data_key(
            f"user:{user['id']}", user["totp_kek_version"], bytes(user["totp_wrapped_key"])
        )
        return dk.decrypt(column, bytes(user[column])).decode()

    @operation("totp_begin")
    async def totp_begin(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        assert caller.session
        s, keys = caller.session, self._keys()
        secret = accounts.new_totp_secret()
        dk, version, wrapped = keys.new_data_key(f"user:{s.user_id}")
        async with self.store.transaction() as tx:
            user = await tx.user_by_id(s.user_id, lock=True)
            assert user is not None
            if user["totp_secret_ct"] is not None:
                raise Conflict(
                    "a second factor is already set up; ask a DA to reset it",
                    "二要素認証は設定済みです。リセットはアプライアンス管理者に依頼してください。",
                )
            await tx.begin_totp(
                s.user_id, version, wrapped, dk.encrypt("totp_pending_ct", secret.encode())
            )
            await record(tx, caller, "user.totp_begin", target=s.username)
        return {"secret": secret, "uri": accounts.totp_uri(secret, s.username)}

    @operation("totp_confirm")
    async def totp_confirm(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        assert caller.session
        s = caller.session
        async with self.store.transaction() as tx:
            user = await tx.user_by_id(s.user_id)
            assert user is not None
            if user["totp_pending_ct"] is None:
                raise Conflict("start the set-up first", "先に設定を開始してください。")
            secret = self._open_totp(user, "totp_pending_ct")
            step = accounts.totp_verify(secret, args["code"], self.clock(), None)
            if step is None:
                raise LoginFailed("the code does not match", "確認コードが一致しません。")
            keys = self._keys()
            dk = keys.open_data_key(
                f"user:{s.user_id}", user["totp_kek_version"], bytes(user["totp_wrapped_key"])
            )
            await tx.confirm_totp(
                s.user_id, dk.encrypt("totp_secret_ct", secret.encode()), step, s.digest
            )
            await record(tx, caller, "user.totp_enrol", target=s.username)
            user = await tx.user_by_id(s.user_id)
        assert user is not None
        self.sessions[s.digest] = replace(s, restriction=self._restriction(user, True))
        return await self.whoami(replace(caller, session=self.sessions[s.digest]), {})

    @operation("purposes")
    async def purposes(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return {"purposes": [{"code": p.code, "ja": p.ja, "en": p.en} for p in CATALOGUE]}

    @operation("user.create")
    async def user_create(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """A DA account at once, with a one-time password; an account that sees
        numbers or approves as a proposal (kura.core.account_approvals)."""
        role, username = Role(args["role"]), args["username"]
        display_name = args.get("display_name", "")
        if approvals.needs_two_people(approvals.Change("create", role)):
            if role == Role.SA and not await self._security_admin_existed():
                first = await self._create_first_sa(caller, username, display_name)
                if first:
                    return first
            return await self._propose(
                caller, approvals.Change("create", role), username, display_name
            )
        password = one_time_password()
        hashed = await asyncio.to_thread(accounts.hash_password, password)
        async with self.store.transaction() as tx:
            if await tx.user_by_name(username) or await tx.pending_proposal_for(username):
                raise Conflict("that user name is taken", "そのユーザー名は使われています。")
            await tx.insert_user(username, str(role), display_name, hashed)
            await record(tx, caller, "user.create", target=username, detail={"role": str(role)})
        return {
            "username": username,
            "role": str(role),
            "kind": "create",
            "state": "approved",
            "password": password,
            "must_change_password": True,
        }

    @operation("user.list")
    async def user_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            rows = await tx.list_users()
            await record(tx, caller, "user.list", detail={"count": len(rows)})
        return {"users": [jsonable(r) for r in rows]}

    @operation("user.update")
    async def user_update(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """Disabling, demoting and renaming apply at once; re-enabling an
        account that sees numbers or approves, or changing a role into one,
        becomes a proposal (the rest of the changes still apply)."""
        changes = {k: args[k] for k in ("role", "disabled", "display_name") if k in args}
        async with self.store.transaction() as tx:
            found = await tx.user_by_name(args["username"])
        if found is None:
            raise NotFound()
        old_role = Role(found["role"])
        new_role = Role(changes.get("role", old_role))
        guarded: list[approvals.Change] = []
        if new_role != old_role and approvals.needs_two_people(
            approvals.Change("role", new_role, old_role)
        ):
            guarded.append(approvals.Change("role", new_role, old_role))
            changes.pop("role")
        enabling = changes.get("disabled") is False and found["disabled"]
        if enabling and approvals.needs_two_people(approvals.Change("enable", new_role)):
            guarded.append(approvals.Change("enable", new_role))
            changes.pop("disabled")
        if len(guarded) > 1:
            raise Conflict(
                "change the role and enable the account one at a time",
                "ロールの変更と有効化は一つずつ行ってください。",
            )
        async with self.store.transaction() as tx:
            user = await tx.user_by_name(args["username"], lock=True)
            if user is None:
                raise NotFound()
            if user["id"] == (caller.session.user_id if caller.session else None) and (
                changes.get("disabled") or changes.get("role", "DA") != "DA" or guarded
            ):
                raise Conflict(
                    "you cannot disable or demote yourself",
                    "自分自身を無効化・降格することはできません。",
                )
            if changes:
                await tx.update_user(user["id"], changes)
            if "role" in changes or changes.get("disabled"):
                await tx.delete_user_sessions(user["id"])
            if changes or not guarded:
                await record(
                    tx,
                    caller,
                    "user.update",
                    target=args["username"],
                    detail={k: v for k, v in changes.items() if k != "display_name"},
                )
        self._forget_user_sessions(int(user["id"]))
        result: dict[str, Any] = {"username": args["username"], **changes}
        if guarded:
            result["proposal"] = await self._propose(caller, guarded[0], args["username"])
        return result

    @operation("user.reset_password")
    async def user_reset_password(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """A DA's password at once; an account that sees numbers or approves
        by proposal, its holder activating again with a new code."""
        async with self.store.transaction() as tx:
            found = await tx.user_by_name(args["username"])
        if found is None:
            raise NotFound()
        change = approvals.Change("reset", Role(found["role"]))
        if approvals.needs_two_people(change):
            return await self._propose(
                caller, change, args["username"], reset_totp=bool(args.get("reset_totp"))
            )
        password = one_time_password()
        hashed = await asyncio.to_thread(accounts.hash_password, password)
        async with self.store.transaction() as tx:
            user = await tx.user_by_name(args["username"], lock=True)
            if user is None:
                raise NotFound()
            await tx.set_password(user["id"], hashed, must_change=True)
            if args.get("reset_totp"):
                await tx.clear_totp(user["id"])
            await tx.delete_user_sessions(user["id"])
            await record(
                tx,
                caller,
                "user.reset_password",
                target=args["username"],
                detail={"reset_totp": bool(args.get("reset_totp"))},
            )
        self._forget_user_sessions(int(user["id"]))
        return {
            "username": args["username"],
            "state": "approved",
            "password": password,
            "must_change_password": True,
        }
