"""The vault: the only process that ever holds a plaintext number.

``Vault.call(op, args, token, client, peer_uid)`` is the whole interface. Each
call is checked in this order, and refused at the first step that fails:

1. the operation exists and its arguments fit its schema (kura.core.api);
2. the vault is unsealed (only ``status`` and ``unseal`` work while sealed);
3. the session is valid (not expired, not signed out, user not disabled),
   and not restricted to changing a password or enrolling a second factor;
4. the session's role may perform the operation (kura.core.roles); a refusal
   is itself written to the audit log;
5. for reveal and export, the declared purpose is one the subject allows.

Every operation that touches a number, an account or a policy writes its
audit entry in the same database transaction as the change it records.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import logging
import secrets
import string
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from kura import __version__
from kura.config import Config
from kura.core import accounts, api, audit, importer, numbers, subjects
from kura.core.errors import (
    AccountLocked,
    ActionRequired,
    BadRequest,
    Conflict,
    DuplicateNumber,
    KuraError,
    LoginFailed,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    PurposeRequired,
    UnsealFailed,
    VaultSealed,
)
from kura.core.keys import KeyHierarchy, bootstrap_keyring
from kura.core.purposes import BY_CODE, CATALOGUE
from kura.core.roles import PUBLIC, SELF, Role, may
from kura.vault import sealing
from kura.vault.store import Row, Store

log = logging.getLogger("kura.vault")

IMPORT_BATCH = 2000
SESSION_TOUCH_SECONDS = 30.0
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Session:
    digest: bytes
    user_id: int
    username: str
    role: Role
    created: datetime
    last_seen: datetime
    stored_seen: datetime
    restriction: str | None  # "password" | "mfa" | None


@dataclass(frozen=True)
class Caller:
    client: str
    peer_uid: int
    session: Session | None = None

    @property
    def actor(self) -> str:
        return self.session.username if self.session else "-"

    @property
    def role(self) -> str:
        return str(self.session.role) if self.session else ""


Handler = Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any]]]


def _safe_name(text: str) -> str:
    """A user-typed name for the audit log: a number typed by mistake into the
    user-name field must not end up there."""
    return "(invalid)" if audit.looks_like_my_number(text) else text[:64]


def one_time_password() -> str:
    """A password that meets the default policy: 20 characters of four classes."""
    alphabet = string.ascii_letters + string.digits
    core = "".join(secrets.choice(alphabet) for _ in range(16))
    return (
        core
        + secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ")
        + secrets.choice("abcdefghijkmnopqrstuvwxyz")
        + secrets.choice("23456789")
        + secrets.choice("-_.!")
    )


class Vault:
    def __init__(self, config: Config, store: Store, clock: Clock = utcnow) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.keys: KeyHierarchy | None = None
        self.seal: sealing.SealInfo | None = None
        self.collector: sealing.ShareCollector | None = None
        self.policy = accounts.SecurityPolicy()
        self.sessions: dict[bytes, Session] = {}
        self._unseal_lock = asyncio.Lock()
        self.handlers: dict[str, Handler] = {
            "status": self.status,
            "unseal": self.unseal,
            "login": self.login,
            "logout": self.logout,
            "whoami": self.whoami,
            "change_password": self.change_password,
            "totp_begin": self.totp_begin,
            "totp_confirm": self.totp_confirm,
            "purposes": self.purposes,
            "bootstrap_da": self.bootstrap_da,
            "subject.register": self.subject_register,
            "subject.lookup": self.subject_lookup,
            "subject.get": self.subject_get,
            "subject.list": self.subject_list,
            "subject.reveal": self.subject_reveal,
            "subject.import": self.subject_import,
            "subject.export": self.subject_export,
            "subject.correct": self.subject_correct,
            "policy.get": self.policy_get,
            "policy.set": self.policy_set,
            "audit.list": self.audit_list,
            "audit.export": self.audit_export,
            "user.create": self.user_create,
            "user.list": self.user_list,
            "user.update": self.user_update,
            "user.reset_password": self.user_reset_password,
            "keys.rotate": self.keys_rotate,
        }

    # --- start-up and sealing --------------------------------------------------

    async def start(self) -> None:
        """Read the seal; unseal by itself where the seal allows it (TPM/host key)."""
        self.seal = sealing.read_seal(self.config.vault.keys_dir)
        if self.seal is None:
            log.warning("no seal in %s: run `kura vault init` first", self.config.vault.keys_dir)
            return
        if self.seal.mode == "host":
            await self._open(sealing.load_host(self.config.vault.keys_dir), "host")
        elif self.seal.mode == "creds":
            root = await asyncio.to_thread(
                sealing.load_creds, self.config.vault.keys_dir, self.config.vault.credentials_dir
            )
            await self._open(root, "creds")
        else:
            self.collector = sealing.ShareCollector(self.seal)
            log.info("vault is sealed: waiting for %d custodian shares", self.seal.threshold)

    @property
    def sealed(self) -> bool:
        return self.keys is None

    def _keys(self) -> KeyHierarchy:
        if self.keys is None:
            raise VaultSealed()
        return self.keys

    async def _open(self, root_key: bytes, how: str) -> None:
        async with self.store.transaction() as tx:
            ring = await tx.keyring()
            if not ring:
                version, wrapped = bootstrap_keyring(root_key)
                await tx.add_keyring_version(version, wrapped)
                ring = {version: wrapped}
            try:
                keys = KeyHierarchy.unlock(root_key, ring, max(ring))
            except KuraError as exc:
                raise UnsealFailed(
                    "the root key does not open this appliance's keyring",
                    "ルート鍵がこのアプライアンスの鍵束と一致しません。",
                ) from exc
            stored = await tx.setting("policy")
            if stored:
                self.policy = accounts.SecurityPolicy.from_json(stored)
            await tx.append_audit(
                actor="-",
                role="",
                action="vault.unseal",
                client="local",
                detail={"seal": how, "key_versions": len(ring)},
            )
        self.keys = keys
        self.collector = None
        log.info("vault unsealed (%s seal, keyring versions %s)", how, sorted(ring))

    async def status(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {
            "sealed": self.sealed,
            "initialised": self.seal is not None,
            "seal_mode": self.seal.mode if self.seal else None,
            "version": __version__,
            "appliance": self.config.appliance,
        }
        if self.seal and self.seal.mode == "shamir":
            result["shares_needed"] = self.seal.threshold
            result["shares_entered"] = self.collector.count if self.collector else 0
        return result

    async def unseal(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self._unseal_lock:
            if not self.sealed:
                return await self.status(caller, args)
            if self.seal is None or self.collector is None:
                raise UnsealFailed(
                    "this appliance is not sealed with custodian shares",
                    "このアプライアンスはシェアによる封印ではありません。",
                )
            try:
                self.collector.add(args["share"])
                if self.collector.complete:
                    try:
                        root = self.collector.root_key()
                    except KuraError:
                        self.collector = sealing.ShareCollector(self.seal)
                        raise
                    await self._open(root, "shamir")
            except UnsealFailed as exc:
                # A wrong share is a security event: record it (never the share).
                async with self.store.transaction() as tx:
                    await tx.append_audit(
                        actor="-",
                        role="",
                        action="vault.unseal",
                        outcome="denied",
                        client=caller.client,
                        detail={"reason": str(exc.detail.get("reason", "share"))},
                    )
                raise
            else:
                if self.sealed:
                    async with self.store.transaction() as tx:
                        await tx.append_audit(
                            actor="-",
                            role="",
                            action="vault.share",
                            client=caller.client,
                            detail={"entered": self.collector.count, "needed": self.seal.threshold},
                        )
            return await self.status(caller, args)

    # --- the dispatcher ------------------------------------------------------

    async def call(
        self, op: str, args: Any, token: str | None, client: str, peer_uid: int
    ) -> dict[str, Any]:
        handler = self.handlers.get(op)
        if handler is None:
            raise BadRequest(f"unknown operation {op!r}", f"不明な操作です: {op}")
        caller = Caller(client=client or "local", peer_uid=peer_uid)
        valid = api.validate(op, args if args is not None else {})
        if self.sealed and op not in ("status", "unseal"):
            raise VaultSealed()
        if op != "status" and not self._client_allowed(caller.client):
            async with self.store.transaction() as tx:
                await tx.append_audit(
                    actor="-",
                    role="",
                    action=op,
                    outcome="denied",
                    client=caller.client,
                    detail={"reason": "network"},
                )
            raise PermissionDenied(
                "this terminal's network is not allowed by the security policy",
                "この端末のネットワークからの利用はセキュリティポリシーで許可されていません。",
            )
        if op in PUBLIC:
            return await handler(caller, valid)
        if op == "bootstrap_da":
            if peer_uid not in self.config.vault.admin_uids and peer_uid != _own_uid():
                raise PermissionDenied()
            return await handler(caller, valid)
        session = await self._session(token, caller)
        caller = replace(caller, session=session)
        if session.restriction and op not in SELF:
            raise ActionRequired(required=session.restriction)
        if not may(session.role, op):
            async with self.store.transaction() as tx:
                await tx.append_audit(
                    actor=caller.actor,
                    role=caller.role,
                    action=op,
                    outcome="denied",
                    client=caller.client,
                    detail={"reason": "role"},
                )
            raise PermissionDenied()
        return await handler(caller, valid)

    def _client_allowed(self, client: str) -> bool:
        # "local" is a peer on the vault's own socket, already checked by uid.
        return client == "local" or accounts.is_allowed_address(self.policy, client)

    async def _session(self, token: str | None, caller: Caller) -> Session:
        if not token:
            raise NotAuthenticated()
        digest = accounts.token_digest(token)
        now = self.clock()
        session = self.sessions.get(digest)
        if session is None:
            async with self.store.transaction() as tx:
                row = await tx.session(digest)
            if row is None or row["disabled"]:
                raise NotAuthenticated()
            session = Session(
                digest=digest,
                user_id=int(row["user_id"]),
                username=row["username"],
                role=Role(row["role"]),
                created=row["created_at"],
                last_seen=row["last_seen"],
                stored_seen=row["last_seen"],
                restriction=self._restriction(row, bool(row["mfa_done"])),
            )
        expired = accounts.session_expired(
            self.policy, accounts.SessionTimes(session.created, session.last_seen), now
        )
        if expired:
            self.sessions.pop(digest, None)
            async with self.store.transaction() as tx:
                await tx.delete_session(digest)
                await tx.append_audit(
                    actor=session.username,
                    role=str(session.role),
                    action="session.expired",
                    client=caller.client,
                    detail={"why": expired},
                )
            raise NotAuthenticated(
                "the session expired; please sign in again",
                "セッションの有効期限が切れました。再度ログインしてください。",
                why=expired,
            )
        session = replace(session, last_seen=now)
        if (now - session.stored_seen).total_seconds() > SESSION_TOUCH_SECONDS:
            async with self.store.transaction() as tx:
                await tx.touch_session(digest, now)
            session = replace(session, stored_seen=now)
        self.sessions[digest] = session
        return session

    def _restriction(self, user: Row, mfa_done: bool) -> str | None:
        role = Role(user["role"])
        if user["must_change_password"] or accounts.password_expired(
            self.policy, user["password_changed_at"], self.clock()
        ):
            return "password"
        if accounts.mfa_required(self.policy, role) and not mfa_done:
            return "mfa"
        return None

    def _forget_user_sessions(self, user_id: int) -> None:
        for digest, s in list(self.sessions.items()):
            if s.user_id == user_id:
                del self.sessions[digest]

    # --- accounts --------------------------------------------------------------

    async def bootstrap_da(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        password = args.get("password") or one_time_password()
        accounts.check_new_password(self.policy, password, args["username"], [])
        hashed = await asyncio.to_thread(accounts.hash_password, password)
        async with self.store.transaction() as tx:
            await tx.conn.execute("LOCK TABLE users IN EXCLUSIVE MODE")
            if await tx.count_users():
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

    async def login(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        username, now = args["username"], self.clock()
        async with self.store.transaction() as tx:
            user = await tx.user_by_name(username)
        if user is None or user["disabled"]:
            await asyncio.to_thread(accounts.verify_password, args["password"], accounts.DUMMY_HASH)
            await self._audit_login(caller, _safe_name(username), "", "denied", "unknown_user")
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
                    await tx.run(
                        "UPDATE users SET totp_last_step = %s WHERE id = %s",
                        (totp_step, locked["id"]),
                    )
                token, digest = accounts.new_session_token()
                mfa_done = totp_step is not None
                row = await tx.insert_session(digest, locked["id"], caller.client, mfa_done, now)
                await tx.append_audit(
                    actor=username,
                    role=str(role),
                    action="login",
                    client=caller.client,
                    detail={"mfa": mfa_done},
                )
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

    async def logout(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        assert caller.session
        self.sessions.pop(caller.session.digest, None)
        async with self.store.transaction() as tx:
            await tx.delete_session(caller.session.digest)
            await tx.append_audit(
                actor=caller.actor, role=caller.role, action="logout", client=caller.client
            )
        return {"signed_out": True}

    async def whoami(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        assert caller.session
        s = caller.session
        return {
            "username": s.username,
            "role": str(s.role),
            "must_change_password": s.restriction == "password",
            "mfa_setup_required": s.restriction == "mfa",
        }

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
            await tx.append_audit(
                actor=s.username,
                role=str(s.role),
                action="user.password",
                target=s.username,
                client=caller.client,
            )
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

    async def totp_begin(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        assert caller.session
        s, keys = caller.session, self._keys()
        secret = accounts.new_totp_secret()
        dk, version, wrapped = keys.new_data_key(f"user:{s.user_id}")
        async with self.store.transaction() as tx:
            await tx.run(
                "UPDATE users SET totp_kek_version = %s, totp_wrapped_key = %s,"
                " totp_pending_ct = %s, totp_secret_ct = CASE WHEN totp_secret_ct IS NULL"
                " THEN NULL ELSE totp_secret_ct END WHERE id = %s",
                (version, wrapped, dk.encrypt("totp_pending_ct", secret.encode()), s.user_id),
            )
            user = await tx.user_by_id(s.user_id)
            assert user is not None
            if user["totp_secret_ct"] is not None:
                raise Conflict(
                    "a second factor is already set up; ask a DA to reset it",
                    "二要素認証は設定済みです。リセットはアプライアンス管理者に依頼してください。",
                )
            await tx.append_audit(
                actor=s.username,
                role=str(s.role),
                action="user.totp_begin",
                target=s.username,
                client=caller.client,
            )
        return {"secret": secret, "uri": accounts.totp_uri(secret, s.username)}

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
            await tx.run(
                "UPDATE users SET totp_secret_ct = %s, totp_pending_ct = NULL,"
                " totp_last_step = %s WHERE id = %s",
                (dk.encrypt("totp_secret_ct", secret.encode()), step, s.user_id),
            )
            await tx.run("UPDATE sessions SET mfa_done = true WHERE token_digest = %s", (s.digest,))
            await tx.append_audit(
                actor=s.username,
                role=str(s.role),
                action="user.totp_enrol",
                target=s.username,
                client=caller.client,
            )
            user = await tx.user_by_id(s.user_id)
        assert user is not None
        self.sessions[s.digest] = replace(s, restriction=self._restriction(user, True))
        return await self.whoami(replace(caller, session=self.sessions[s.digest]), {})

    async def purposes(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return {"purposes": [{"code": p.code, "ja": p.ja, "en": p.en} for p in CATALOGUE]}

    async def user_create(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        password = one_time_password()
        hashed = await asyncio.to_thread(accounts.hash_password, password)
        async with self.store.transaction() as tx:
            if await tx.user_by_name(args["username"]):
                raise Conflict("that user name is taken", "そのユーザー名は使われています。")
            await tx.insert_user(
                args["username"], args["role"], args.get("display_name", ""), hashed
            )
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="user.create",
                target=args["username"],
                client=caller.client,
                detail={"role": args["role"]},
            )
        return {
            "username": args["username"],
            "role": args["role"],
            "password": password,
            "must_change_password": True,
        }

    async def user_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            rows = await tx.all(
                "SELECT username, display_name, role, disabled, must_change_password,"
                " totp_secret_ct IS NOT NULL AS totp, locked_until, last_login_at, created_at"
                " FROM users ORDER BY username"
            )
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="user.list",
                client=caller.client,
                detail={"count": len(rows)},
            )
        return {"users": [_jsonable(r) for r in rows]}

    async def user_update(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        changes = {k: args[k] for k in ("role", "disabled", "display_name") if k in args}
        async with self.store.transaction() as tx:
            user = await tx.user_by_name(args["username"], lock=True)
            if user is None:
                raise NotFound()
            if user["id"] == (caller.session.user_id if caller.session else None) and (
                changes.get("disabled") or changes.get("role", "DA") != "DA"
            ):
                raise Conflict(
                    "you cannot disable or demote yourself",
                    "自分自身を無効化・降格することはできません。",
                )
            if changes:
                sets = ", ".join(f"{k} = %s" for k in changes)
                await tx.run(
                    f"UPDATE users SET {sets} WHERE id = %s", [*changes.values(), user["id"]]
                )
            if "role" in changes or changes.get("disabled"):
                await tx.delete_user_sessions(user["id"])
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="user.update",
                target=args["username"],
                client=caller.client,
                detail={k: v for k, v in changes.items() if k != "display_name"},
            )
        self._forget_user_sessions(int(user["id"]))
        return {"username": args["username"], **changes}

    async def user_reset_password(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        password = one_time_password()
        hashed = await asyncio.to_thread(accounts.hash_password, password)
        async with self.store.transaction() as tx:
            user = await tx.user_by_name(args["username"], lock=True)
            if user is None:
                raise NotFound()
            await tx.set_password(user["id"], hashed, must_change=True)
            if args.get("reset_totp"):
                await tx.run(
                    "UPDATE users SET totp_secret_ct = NULL, totp_pending_ct = NULL,"
                    " totp_last_step = NULL WHERE id = %s",
                    (user["id"],),
                )
            await tx.delete_user_sessions(user["id"])
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="user.reset_password",
                target=args["username"],
                client=caller.client,
                detail={"reset_totp": bool(args.get("reset_totp"))},
            )
        self._forget_user_sessions(int(user["id"]))
        return {"username": args["username"], "password": password, "must_change_password": True}

    # --- policy ----------------------------------------------------------------

    async def policy_get(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            await tx.append_audit(
                actor=caller.actor, role=caller.role, action="policy.get", client=caller.client
            )
        return {"policy": self.policy.to_json()}

    async def policy_set(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        new = accounts.SecurityPolicy.from_json(args["policy"], base=self.policy)
        old = self.policy.to_json()
        async with self.store.transaction() as tx:
            await tx.set_setting("policy", new.to_json())
            changed = sorted(k for k, v in new.to_json().items() if old.get(k) != v)
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="policy.set",
                client=caller.client,
                detail={"changed": changed},
            )
        self.policy = new
        return {"policy": new.to_json()}

    # --- subjects --------------------------------------------------------------

    def _summary(self, row: Row) -> dict[str, Any]:
        keys = self._keys()
        sid = str(row["id"])
        dk = keys.open_data_key(sid, row["kek_version"], bytes(row["wrapped_key"]))
        number = dk.decrypt("number", bytes(row["number_ct"])).decode()
        return {
            "id": sid,
            "kind": row["kind"],
            "code": row["code"],
            "name": row["name"],
            "name_kana": row["name_kana"],
            "number_masked": numbers.mask(number),
            "employee_id": str(row["employee_id"]) if row["employee_id"] else None,
            "birth_date": row["birth_date"].isoformat() if row["birth_date"] else None,
            "purposes": list(row["purposes"]),
            "retention_basis": row["retention_basis"],
            "retention_event": row["retention_event"].isoformat()
            if row["retention_event"]
            else None,
            "created_at": row["created_at"].isoformat(),
        }

    def _sealed_row(
        self,
        subject: subjects.SubjectInput,
        employee_id: uuid.UUID | None,
        actor: str,
        bidx: bytes | None = None,  # the number's blind index, when already made
    ) -> dict[str, Any]:
        keys = self._keys()
        sid = str(uuid.uuid4())
        dk, version, wrapped = keys.new_data_key(sid)
        return {
            "id": sid,
            "kind": subject.kind,
            "code": subject.code,
            "name": subject.name,
            "name_kana": subject.name_kana,
            "employee_id": employee_id,
            "birth_date": subject.birth_date,
            "purposes": list(subject.purposes),
            "retention_basis": subject.retention_basis,
            "kek_version": version,
            "wrapped_key": wrapped,
            "number_ct": dk.encrypt("number", subject.number.encode()),
            "number_bidx": bidx or keys.blind_index("my_number", subject.number),
            "created_by": actor,
        }

    async def subject_register(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        subject = subjects.subject_from_json(args)
        keys = self._keys()
        bidx = keys.blind_index("my_number", subject.number)
        async with self.store.transaction() as tx:
            employee_id = None
            if subject.kind == "dependent":
                employee = await tx.subject_by_code("employee", subject.employee_code)
                if employee is None:
                    raise NotFound(
                        "no employee with that code",
                        "その社員コードの社員がいません。",
                        field="employee_code",
                    )
                employee_id = employee["id"]
            same_number = await tx.subject_by_bidx(bidx)
            same_code = (
                None
                if subject.kind == "dependent"
                else await tx.subject_by_code(subject.kind, subject.code)
            )
            refusal: DuplicateNumber | None = None
            try:
                if _already_registered(subject, employee_id, same_number, same_code):
                    assert same_number is not None
                    return {"subject": self._summary(same_number), "created": False}
            except DuplicateNumber as exc:
                # Raised only after this transaction commits the refusal's record.
                refusal = exc
                await tx.append_audit(
                    actor=caller.actor,
                    role=caller.role,
                    action="subject.register",
                    outcome="denied",
                    client=caller.client,
                    detail={"reason": "duplicate_number"},
                )
            else:
                values = self._sealed_row(subject, employee_id, caller.actor)
                await tx.insert_subject(values)
                await tx.append_audit(
                    actor=caller.actor,
                    role=caller.role,
                    action="subject.register",
                    target=values["id"],
                    client=caller.client,
                    detail={"kind": subject.kind},
                )
                row = await tx.subject(values["id"])
        if refusal is not None:
            raise refusal
        assert row is not None
        return {"subject": self._summary(row), "created": True}

    async def subject_lookup(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        if ("number" in args) == ("code" in args):
            raise BadRequest(
                "give exactly one of number or code",
                "番号またはコードのどちらか一方を指定してください。",
            )
        async with self.store.transaction() as tx:
            if "number" in args:
                number = numbers.parse_my_number(args["number"])
                row = await tx.subject_by_bidx(self._keys().blind_index("my_number", number))
                by = "number"
            else:
                row = await tx.subject_by_code(args.get("kind", "payee"), args["code"])
                by = "code"
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="subject.lookup",
                target=str(row["id"]) if row else "",
                client=caller.client,
                detail={"by": by, "found": row is not None},
            )
        return {"subjects": [self._summary(row)] if row else []}

    async def subject_get(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            row = await tx.subject(args["id"])
            if row is None:
                raise NotFound()
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="subject.get",
                target=args["id"],
                client=caller.client,
            )
        return {"subject": self._summary(row)}

    async def subject_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        offset, limit = args.get("offset", 0), args.get("limit", 50)
        async with self.store.transaction() as tx:
            rows = await tx.list_subjects(args.get("kind"), args.get("query"), offset, limit)
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="subject.list",
                client=caller.client,
                detail={"count": len(rows)},
            )
        return {"subjects": [self._summary(r) for r in rows], "offset": offset, "limit": limit}

    async def subject_reveal(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        purpose = args["purpose"]
        async with self.store.transaction() as tx:
            row = await tx.subject(args["id"])
            if row is None:
                raise NotFound()
            allowed = list(row["purposes"])
            if purpose not in allowed:
                # Raised only after this transaction commits the refusal's record.
                await tx.append_audit(
                    actor=caller.actor,
                    role=caller.role,
                    action="subject.reveal",
                    outcome="denied",
                    target=args["id"],
                    purpose=_safe_purpose(purpose),
                    client=caller.client,
                    detail={"reason": "purpose"},
                )
            else:
                dk = self._keys().open_data_key(
                    str(row["id"]), row["kek_version"], bytes(row["wrapped_key"])
                )
                number = dk.decrypt("number", bytes(row["number_ct"])).decode()
                await tx.append_audit(
                    actor=caller.actor,
                    role=caller.role,
                    action="subject.reveal",
                    target=args["id"],
                    purpose=purpose,
                    client=caller.client,
                )
        if purpose not in allowed:
            raise PurposeRequired(allowed=allowed)
        return {"id": args["id"], "number": number, "purpose": purpose}

    async def subject_correct(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        async with self.store.transaction() as tx:
            row = await tx.subject(args["id"], lock=True)
            if row is None:
                raise NotFound()
            changes: dict[str, Any] = {}
            for field in ("name", "name_kana"):
                if field in args:
                    changes[field] = subjects.clean_text_field(field, args[field])
            if "purposes" in args:
                unknown = [p for p in args["purposes"] if p not in BY_CODE]
                if unknown or not args["purposes"]:
                    raise BadRequest(
                        "unknown or no purposes", "利用目的が正しくありません。", field="purposes"
                    )
                changes["purposes"] = list(dict.fromkeys(args["purposes"]))
            if "retention_event" in args:
                changes["retention_event"] = (
                    _parse_date(args["retention_event"], "retention_event")
                    if args["retention_event"]
                    else None
                )
            if "number" in args:
                number = numbers.parse_my_number(args["number"])
                bidx = keys.blind_index("my_number", number)
                other = await tx.subject_by_bidx(bidx)
                if other is not None and other["id"] != row["id"]:
                    raise DuplicateNumber()
                dk = keys.open_data_key(
                    str(row["id"]), row["kek_version"], bytes(row["wrapped_key"])
                )
                changes["number_ct"] = dk.encrypt("number", number.encode())
                changes["number_bidx"] = bidx
            if changes:
                await tx.update_subject(args["id"], changes)
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="subject.correct",
                target=args["id"],
                client=caller.client,
                detail={"fields": sorted(k for k in changes if k != "number_bidx")},
            )
            row = await tx.subject(args["id"])
        assert row is not None
        return {"subject": self._summary(row)}

    async def subject_import(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        if "csv" in args:
            try:
                raw = base64.b64decode(args["csv"], validate=True)
            except ValueError as exc:
                raise BadRequest("csv must be base64", "csv は base64 で送ってください。") from exc
            parsed = importer.parse_csv(raw)
        else:
            parsed = importer.parse_rows(args.get("rows", []))
        self._keys()
        rejections = [_rejection_json(r) for r in parsed.rejections]
        created = existing = 0
        records = sorted(parsed.records, key=lambda r: r.subject.kind != "employee")
        for start in range(0, len(records), IMPORT_BATCH):
            batch = records[start : start + IMPORT_BATCH]
            for attempt in range(3):
                try:
                    c, e, rej = await self._import_batch(caller, batch)
                    break
                except psycopg.errors.UniqueViolation:
                    # Someone registered one of these numbers meanwhile: classify again.
                    if attempt == 2:
                        raise
            created += c
            existing += e
            rejections += rej
            await asyncio.sleep(0)
        rejections.sort(key=lambda r: r["line"])
        return {
            "created": created,
            "existing": existing,
            "rejected": rejections,
            "total": len(parsed.records) + len(parsed.rejections),
        }

    async def _import_batch(
        self, caller: Caller, batch: Sequence[importer.ImportRecord]
    ) -> tuple[int, int, list[dict[str, Any]]]:
        keys = self._keys()
        bidxs = [keys.blind_index("my_number", r.subject.number) for r in batch]
        rejections: list[dict[str, Any]] = []
        existing = 0
        async with self.store.transaction() as tx:
            found = await tx.subjects_matching(bidxs, [r.subject.code for r in batch])
            by_bidx = {bytes(f["number_bidx"]): f for f in found}
            by_code = {(f["kind"], f["code"]): f for f in found}
            employees = await tx.employee_ids(
                [r.subject.employee_code for r in batch if r.subject.kind == "dependent"]
            )
            created = 0

            def sealed_rows() -> Iterator[list[Any]]:
                # Sealed one by one as COPY takes them, so that PostgreSQL stores
                # the first rows while the vault still encrypts the next ones.
                nonlocal created, existing
                for record, bidx in zip(batch, bidxs, strict=True):
                    s = record.subject
                    employee_id = None
                    if s.kind == "dependent":
                        employee_id = employees.get(s.employee_code)
                        if employee_id is None:
                            rejections.append(
                                _reject(
                                    record.line,
                                    "employee_code",
                                    NotFound(
                                        "no employee with that code",
                                        "その社員コードの社員がいません。",
                                    ),
                                )
                            )
                            continue
                    same_code = None if s.kind == "dependent" else by_code.get((s.kind, s.code))
                    try:
                        if _already_registered(s, employee_id, by_bidx.get(bidx), same_code):
                            existing += 1
                            continue
                    except KuraError as exc:
                        field = "number" if isinstance(exc, DuplicateNumber) else "code"
                        rejections.append(_reject(record.line, field, exc))
                        continue
                    values = self._sealed_row(s, employee_id, caller.actor, bidx)
                    if s.kind == "employee":
                        employees[s.code] = uuid.UUID(values["id"])
                    by_code[(s.kind, s.code)] = values
                    by_bidx[bidx] = values
                    created += 1
                    yield [values[c] for c in _COPY]

            await tx.copy_subjects(sealed_rows())
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="subject.import",
                client=caller.client,
                detail={"created": created, "existing": existing, "rejected": len(rejections)},
            )
        return created, existing, rejections

    async def subject_export(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        purpose = args["purpose"]
        if purpose not in BY_CODE:
            raise PurposeRequired()
        encoding = args.get("encoding", "shift_jis")
        keys = self._keys()
        async with self.store.transaction() as tx:
            rows = await tx.list_subjects(args.get("kind"), None, 0, 1_000_000, args.get("ids"))
            if "ids" in args and len(rows) != len(set(args["ids"])):
                raise NotFound("some subjects do not exist", "存在しない対象者が含まれています。")
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(["種別", "コード", "氏名", "フリガナ", "個人番号"])
            skipped, unencodable, count = [], [], 0
            for row in rows:
                if purpose not in row["purposes"]:
                    skipped.append(str(row["id"]))
                    continue
                if encoding == "shift_jis" and not _encodable(
                    (row["name"], row["name_kana"], row["code"])
                ):
                    unencodable.append(str(row["id"]))
                    continue
                dk = keys.open_data_key(
                    str(row["id"]), row["kek_version"], bytes(row["wrapped_key"])
                )
                number = dk.decrypt("number", bytes(row["number_ct"])).decode()
                writer.writerow([row["kind"], row["code"], row["name"], row["name_kana"], number])
                count += 1
            text = out.getvalue()
            data = (
                text.encode("cp932")
                if encoding == "shift_jis"
                else ("\ufeff" + text).encode("utf-8")
            )
            digest = hashlib.sha256(data).hexdigest()
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="subject.export",
                purpose=purpose,
                client=caller.client,
                detail={
                    "rows": count,
                    "sha256": digest,
                    "encoding": encoding,
                    "skipped": len(skipped),
                    "unencodable": len(unencodable),
                },
            )
        return {
            "rows": count,
            "sha256": digest,
            "encoding": encoding,
            "content": base64.b64encode(data).decode(),
            "skipped_purpose": skipped,
            "unencodable": unencodable,
        }

    # --- audit and keys --------------------------------------------------------

    async def audit_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            rows = await tx.search_audit(
                args.get("actor"),
                args.get("action"),
                _parse_time(args.get("since"), "since"),
                _parse_time(args.get("until"), "until"),
                args.get("offset", 0),
                args.get("limit", 100),
            )
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="audit.list",
                client=caller.client,
                detail={"count": len(rows)},
            )
        return {"entries": [_jsonable(r) for r in rows]}

    async def checkpoint(self, force: bool = False) -> audit.Checkpoint | None:
        """Sign the head of the chain when it has moved and either enough entries
        (``checkpoint_entries``) or enough time (``checkpoint_seconds``) passed
        since the last checkpoint, or when ``force`` is set (at shutdown)."""
        keys = self.keys
        if keys is None:
            return None
        now = self.clock()
        async with self.store.transaction() as tx:
            head = await tx.audit_head()
            last = await tx.last_checkpoint()
            if head is None:
                return None
            seq = int(head["seq"])
            last_seq = int(last["seq"]) if last else 0
            if seq <= last_seq:
                return None
            due = (
                force
                or last is None
                or seq - last_seq >= self.config.vault.checkpoint_entries
                or (now - last["at"]).total_seconds() >= self.config.vault.checkpoint_seconds
            )
            if not due:
                return None
            cp = audit.sign_checkpoint(keys.audit_signing_key, seq, bytes(head["hash"]), now)
            await tx.insert_checkpoint(cp)
        return cp

    async def audit_export(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        async with self.store.transaction() as tx:
            entry = await tx.append_audit(
                actor=caller.actor, role=caller.role, action="audit.export", client=caller.client
            )
        async with self.store.transaction() as tx:
            entries = await tx.audit_entries()
            checkpoints = await tx.checkpoints()
        final = audit.sign_checkpoint(
            keys.audit_signing_key, entry.seq, entry.hash, self.clock(), final=True
        )
        bundle = b"".join(audit.bundle_lines(entries, checkpoints, final, self.config.appliance))
        return {
            "bundle": base64.b64encode(bundle).decode(),
            "sha256": hashlib.sha256(bundle).hexdigest(),
            "entries": len(entries),
        }

    async def keys_rotate(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        version, wrapped = keys.rotate()
        async with self.store.transaction() as tx:
            await tx.add_keyring_version(version, wrapped)
            await tx.append_audit(
                actor=caller.actor,
                role=caller.role,
                action="keys.rotate",
                client=caller.client,
                detail={"version": version},
            )
        rewrapped = 0
        if args.get("rewrap"):
            after: str | None = None
            while True:
                async with self.store.transaction() as tx:
                    batch = await tx.subject_keys(after, 1000)
                    moved = 0
                    for r in batch:
                        if r["kek_version"] == version:
                            continue
                        new_version, new_wrapped = keys.rewrap_data_key(
                            str(r["id"]), r["kek_version"], bytes(r["wrapped_key"])
                        )
                        await tx.set_subject_key(r["id"], new_version, new_wrapped)
                        moved += 1
                    rewrapped += moved
                    if moved:
                        await tx.append_audit(
                            actor=caller.actor,
                            role=caller.role,
                            action="keys.rewrap",
                            client=caller.client,
                            detail={"count": moved, "version": version},
                        )
                if len(batch) < 1000:
                    break
                after = str(batch[-1]["id"])
        return {"version": version, "rewrapped": rewrapped}


_COPY = (
    "id",
    "kind",
    "code",
    "name",
    "name_kana",
    "employee_id",
    "birth_date",
    "purposes",
    "retention_basis",
    "kek_version",
    "wrapped_key",
    "number_ct",
    "number_bidx",
    "created_by",
)


def _already_registered(
    subject: subjects.SubjectInput,
    employee_id: Any,
    same_number: Mapping[str, Any] | None,
    same_code: Mapping[str, Any] | None,
) -> bool:
    """True if this very person is registered already (registering again is
    harmless, so imports can be re-run); DuplicateNumber if the number belongs
    to someone else; Conflict if the code is taken by another number."""
    if same_number is not None:
        same = (
            same_number["kind"] == subject.kind
            and same_number["code"] == subject.code
            and (subject.kind != "dependent" or same_number["employee_id"] == employee_id)
        )
        if same:
            return True
        raise DuplicateNumber()
    if same_code is not None:
        raise Conflict(
            "that code is already used for another number",
            "そのコードは別の番号で登録済みです。",
            field="code",
        )
    return False


def _own_uid() -> int:
    import os

    return os.geteuid()


def _safe_purpose(purpose: str) -> str:
    return purpose if purpose in BY_CODE else "(unknown)"


def _reject(line: int, field: str, error: KuraError) -> dict[str, Any]:
    return {
        "line": line,
        "field": field,
        "code": error.code,
        "message": error.message_ja,
        "message_en": error.message_en,
    }


def _rejection_json(r: importer.Rejection) -> dict[str, Any]:
    return {"line": r.line, "field": r.field, "code": r.code, "message": r.ja, "message_en": r.en}


def _encodable(values: Sequence[str]) -> bool:
    try:
        for v in values:
            v.encode("cp932")
    except UnicodeEncodeError:
        return False
    return True


def _parse_date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(
            f"{field}: not a date (YYYY-MM-DD)",
            f"{field}: 日付（YYYY-MM-DD）ではありません。",
            field=field,
        ) from exc


def _parse_time(value: str | None, field: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(
            f"{field}: not a date-time (ISO 8601)",
            f"{field}: 日時（ISO 8601）ではありません。",
            field=field,
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, datetime | date):
            out[k] = v.isoformat()
        elif isinstance(v, uuid.UUID):
            out[k] = str(v)
        elif isinstance(v, bytes | memoryview):
            out[k] = bytes(v).hex()
        elif isinstance(v, timedelta):
            out[k] = v.total_seconds()
        else:
            out[k] = v
    return out


def keys_dir_of(config: Config) -> Path:
    return config.vault.keys_dir
