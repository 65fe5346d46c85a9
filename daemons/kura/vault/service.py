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

On the standby of an HA pair (kura.vault.standby) only ``status`` and
``unseal`` work; everything else gets ``Standby``, and nothing is written.

In the audit-integrity state (kura.vault.integrity) only ``status``, signing
in and out and the SELF operations of an SA or a DA, the SA's look at the
log (list, verify, export) and ``audit.acknowledge`` work; everything else
gets ``AuditIntegrity``.

Every operation that touches a number, an account or a policy writes its
audit entry in the same database transaction as the change it records.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from typing import Any

from kura import __version__
from kura.config import Config
from kura.core import accounts, api
from kura.core.errors import (
    ActionRequired,
    BadRequest,
    KuraError,
    NotAuthenticated,
    PermissionDenied,
    Standby,
    Unavailable,
    UnsealFailed,
    VaultSealed,
)
from kura.core.keys import KeyHierarchy, bootstrap_keyring
from kura.core.roles import PUBLIC, SELF, SERVICE, Role, may
from kura.vault import sealing
from kura.vault.accounts import AccountOperations
from kura.vault.agents import AgentOperations
from kura.vault.base import (
    STANDBY,
    Caller,
    Clock,
    Handler,
    Session,
    operation,
    operations,
    record,
    utcnow,
)
from kura.vault.disposals import DisposalOperations
from kura.vault.exports import ExportOperations
from kura.vault.hastatus import HaStatusOperations
from kura.vault.oversight import OversightOperations
from kura.vault.pairing import PairingOperations
from kura.vault.policy import PolicyOperations
from kura.vault.reports import ReportOperations
from kura.vault.requests import RequestOperations
from kura.vault.standby import StandbyOperations
from kura.vault.store import ChainDiverged, Store, Tx
from kura.vault.subjects import SubjectOperations

log = logging.getLogger("kura.vault")

SESSION_TOUCH_SECONDS = 30.0  # last_seen is written to the database at most this often

# What still works in the audit-integrity state, besides status and signing in.
_SA_IN_FAULT = frozenset({"audit.list", "audit.verify", "audit.export", "audit.acknowledge"})
_DA_IN_FAULT = frozenset({"audit.acknowledge"})


class Vault(
    AccountOperations,
    SubjectOperations,
    OversightOperations,
    RequestOperations,
    ExportOperations,
    DisposalOperations,
    ReportOperations,
    PolicyOperations,
    StandbyOperations,
    PairingOperations,
    HaStatusOperations,
    AgentOperations,
):
    def __init__(self, config: Config, store: Store, clock: Clock = utcnow) -> None:
        super().__init__(config, store, clock)
        self._unseal_lock = asyncio.Lock()
        self.handlers: dict[str, Handler] = operations(self)

    # --- start-up and sealing --------------------------------------------------

    async def start(self) -> None:
        """Ask the database the node's role; read the seal; unseal by itself
        where the seal allows it (TPM/host key)."""
        self.role = await self.detect_role() or self.writable_role()
        log.info("the database's role: %s", self.role)
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

    async def _open(self, root_key: bytes, how: str) -> None:
        async with self.store.transaction() as tx:
            ring = await tx.keyring()
        if self.role == STANDBY:
            await self._open_standby(root_key, how, ring)
            return
        if ring:
            # Before the first entry is chained: does the database still hold
            # the chain the vault signed, up to the head file's head?
            await self.verify_at_start(_unlock(root_key, ring))
        else:
            self.store.head_check = self.config.vault.audit_head_check
        async with self.store.transaction() as tx:
            ring = await tx.keyring()
            if not ring:
                version, wrapped = bootstrap_keyring(root_key)
                await tx.add_keyring_version(version, wrapped)
                ring = {version: wrapped}
            keys = _unlock(root_key, ring)
            await self.load_settings(tx)
            await tx.append_audit(
                actor="-",
                role="",
                action="vault.unseal",
                client="local",
                detail={"seal": how, "key_versions": len(ring), **self._overrides()},
            )
            if self._deferred_promotion is not None:  # promoted while sealed
                await tx.append_audit(
                    actor="-", role="", action="ha.promoted", client="local",
                    detail={**self._deferred_promotion, "head_seq": self.store.trusted.seq
                            if self.store.trusted else None, "audit_integrity": "ok"
                            if self.integrity is None else "fault"},
                )
                self._deferred_promotion = None
        self.keys = keys
        self.root_key = root_key  # for pairing a standby (kura.vault.pairing)
        self.collector = None
        log.info("vault unsealed (%s seal, keyring versions %s)", how, sorted(ring))

    async def _open_standby(self, root_key: bytes, how: str, ring: dict[int, bytes]) -> None:
        """Unseal a standby without a write: the replicated keyring must open
        under the root key, the chain is verified against the head file, the
        policy and rules are read; the unseal is recorded once promoted."""
        if not ring:
            raise UnsealFailed(
                "the standby's database holds no keyring yet (nothing replicated)",
                "待機系のデータベースに鍵束がまだありません（複製されていません）。",
            )
        keys = _unlock(root_key, ring)
        await self.verify_at_start(keys)
        async with self.store.transaction() as tx:
            await self.load_settings(tx)
        self._deferred_unseal = {
            "seal": how,
            "key_versions": len(ring),
            "unsealed_as": STANDBY,
            "unsealed_at": self.clock().isoformat(),
            **self._overrides(),
        }
        self.keys = keys
        self.collector = None
        log.info("vault unsealed as the standby (%s seal, keyring versions %s)", how, sorted(ring))

    def _overrides(self) -> dict[str, Any]:
        """``local_overrides`` for the unseal entry, and a warning in the journal."""
        found = self.config.vault.local_overrides()
        if not found:
            return {}
        log.warning("kura.toml overrides the policy or design: %s",
                    ", ".join(f"{k}={v}" for k, v in sorted(found.items())))
        return {"local_overrides": found}

    async def load_settings(self, tx: Tx) -> None:
        stored = await tx.setting("policy")
        if stored:
            self.policy = accounts.SecurityPolicy.from_json(stored)
        await self.load_retention_rules(tx)  # for the subjects' disposal dates

    @operation("status")
    async def status(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {
            "sealed": self.sealed,
            "initialised": self.seal is not None,
            "seal_mode": self.seal.mode if self.seal else None,
            "version": __version__,
            "appliance": self.config.appliance,
            "audit_integrity": self.integrity_status(),
            "role": self.role,
        }
        if self.role == STANDBY:
            result["standby"] = await self.replication_status()
        if self.seal and self.seal.mode == "shamir":
            result["shares_needed"] = self.seal.threshold
            result["shares_entered"] = self.collector.count if self.collector else 0
        return result

    @operation("unseal")
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
                if not self.writable:
                    log.warning("a share was refused on the standby (not recorded)")
                    raise
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
                if self.sealed and self.writable:
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
        self,
        op: str,
        args: Any,
        token: str | None,
        client: str,
        peer_uid: int,
        terminal: str = "",
    ) -> dict[str, Any]:
        try:
            return await self._judged(op, args, token, client, peer_uid, terminal)
        except Standby:
            if self.role != STANDBY:
                # A write refused as read-only: the database is a standby now.
                await self.follow_role()
            raise
        except Unavailable:
            self.store.role_suspect = True  # the upkeep asks the role again
            raise

    async def _judged(
        self, op: str, args: Any, token: str | None, client: str, peer_uid: int, terminal: str
    ) -> dict[str, Any]:
        try:
            return await self._call(op, args, token, client, peer_uid, terminal)
        except ChainDiverged as exc:
            # The database no longer extends the trusted head: record it and
            # stop; then the call is judged again as the integrity state allows.
            await self.diverged(exc)
        try:
            return await self._call(op, args, token, client, peer_uid, terminal)
        except ChainDiverged:
            raise self.refuse_in_fault() from None

    async def _call(
        self, op: str, args: Any, token: str | None, client: str, peer_uid: int, terminal: str
    ) -> dict[str, Any]:
        handler = self.handlers.get(op)
        if handler is None:
            raise BadRequest(f"unknown operation {op!r}", f"不明な操作です: {op}")
        if self.role == STANDBY and op not in ("status", "unseal"):
            # Before anything that could write (a refusal's audit entry, a
            # session's last-seen time): a standby writes nothing.
            raise Standby()
        caller = Caller(client=client or "local", peer_uid=peer_uid, terminal=terminal)
        valid = api.validate(op, args if args is not None else {})
        # whoami needs no key (sessions are digests in the database): the
        # console asks it while sealed to show a DA or SA the unseal page.
        if self.sealed and op not in ("status", "unseal", "whoami"):
            raise VaultSealed()
        # The SA's allowed networks are the clerks' terminals; an employee
        # opens their one-time link from wherever they are (the link is the
        # credential, and it works once).
        # kura-policy passes the agent's address as the client: agents are
        # not the console's terminals (its own uid is its credential).
        exempt = ("status", "request.open", "request.submit", "agents.ca")
        if op not in exempt and op not in SERVICE and not self._client_allowed(caller.client):
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
        if self.integrity is not None and op != "status":
            return await self._call_in_fault(op, handler, caller, valid, token)
        if op in PUBLIC:
            return await handler(caller, valid)
        if op in SERVICE:
            # kura-policy's uid is its credential; it never holds a session.
            if peer_uid not in self.config.vault.policy_uids or token:
                async with self.store.transaction() as tx:
                    await record(tx, caller, op, outcome="denied", detail={"reason": "uid"})
                raise PermissionDenied()
            return await handler(replace(caller, service="kura-policy"), valid)
        if op == "bootstrap_da":
            if peer_uid not in self.config.vault.admin_uids and peer_uid != os.geteuid():
                raise PermissionDenied()
            return await handler(caller, valid)
        session = await self._session(token, caller)
        caller = replace(caller, session=session)
        if op != "logout":  # signing out is always allowed
            await self.refuse_terminal(caller, session.username, session.role, session.terminal)
        if session.restriction and op not in SELF:
            raise ActionRequired(required=session.restriction)
        if not may(session.role, op):
            async with self.store.transaction() as tx:
                await record(tx, caller, op, outcome="denied", detail={"reason": "role"})
            raise PermissionDenied()
        return await handler(caller, valid)

    async def _call_in_fault(
        self, op: str, handler: Handler, caller: Caller, valid: dict[str, Any], token: str | None
    ) -> dict[str, Any]:
        """The audit-integrity state: only an SA or a DA, only what looks at
        the log or acknowledges the incident."""
        admins = (Role.SA, Role.DA)
        if op == "login":
            result = await handler(caller, valid)
            if result.get("role") not in admins:
                self.sessions.pop(accounts.token_digest(str(result["token"])), None)
                async with self.store.transaction() as tx:
                    await tx.delete_session(accounts.token_digest(str(result["token"])))
                raise self.refuse_in_fault()
            return result
        if op in PUBLIC or op in SERVICE or op == "bootstrap_da":
            raise self.refuse_in_fault()
        session = await self._session(token, caller)
        caller = replace(caller, session=session)
        allowed = _SA_IN_FAULT if session.role == Role.SA else _DA_IN_FAULT
        if session.role not in admins or (op not in SELF and op not in allowed):
            raise self.refuse_in_fault()
        if session.restriction and op not in SELF:
            raise ActionRequired(required=session.restriction)
        result = await handler(caller, valid)
        if op == "whoami":  # the console shows its banner on every page
            result = {**result, "audit_integrity": "fault"}
        return result

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
                language=row["language"],
                display_name=row["display_name"],
                terminal=row["terminal"],
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


def _unlock(root_key: bytes, ring: dict[int, bytes]) -> KeyHierarchy:
    """The key hierarchy under ``root_key``, or UnsealFailed if it is not this
    appliance's root key."""
    try:
        return KeyHierarchy.unlock(root_key, ring, max(ring))
    except KuraError as exc:
        raise UnsealFailed(
            "the root key does not open this appliance's keyring",
            "ルート鍵がこのアプライアンスの鍵束と一致しません。",
        ) from exc
