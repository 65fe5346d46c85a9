"""What every part of the vault shares: its state (keys, seal, policy,
sessions), who is calling, and small helpers. The operations live in
``accounts``, ``subjects`` and ``oversight``; ``service.Vault`` puts them
together behind one dispatcher."""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from kura.config import Config
from kura.core import accounts, audit, subjects
from kura.core.errors import (
    BadRequest,
    VaultSealed,
)
from kura.core.keys import KeyHierarchy
from kura.core.roles import Role
from kura.vault import sealing
from kura.vault.store import Row, Store, Tx

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
    language: str = "ja"
    display_name: str = ""
    terminal: str = ""  # the client-certificate serial it signed in with (kura.core.terminals)


@dataclass(frozen=True)
class Caller:
    client: str
    peer_uid: int
    session: Session | None = None
    terminal: str = ""  # the browser's verified client-certificate serial (kura-console)
    service: str = ""  # a daemon calling a service operation: "kura-policy"

    @property
    def actor(self) -> str:
        if self.session:
            return self.session.username
        return self.service or "-"

    @property
    def role(self) -> str:
        return str(self.session.role) if self.session else ""


Handler = Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any]]]
HandlerMethod = Callable[[Any, Caller, dict[str, Any]], Awaitable[dict[str, Any]]]


def operation(name: str) -> Callable[[HandlerMethod], HandlerMethod]:
    """Mark a method as the handler of the vault operation ``name`` (one of
    kura.core.roles' operations); ``operations()`` collects them."""

    def mark(method: HandlerMethod) -> HandlerMethod:
        method.vault_operation = name  # type: ignore[attr-defined]
        return method

    return mark


def operations(vault: object) -> dict[str, Handler]:
    """Every operation ``vault``'s classes define, by name, bound to it."""
    found: dict[str, Handler] = {}
    for cls in reversed(type(vault).__mro__):
        for attr, value in vars(cls).items():
            name = getattr(value, "vault_operation", None)
            if name is not None:
                found[name] = getattr(vault, attr)
    return found


def safe_actor_name(text: str) -> str:
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


async def record(tx: Tx, caller: Caller, action: str, **fields: Any) -> audit.AuditEntry:
    """Append the audit entry of ``caller``'s ``action`` inside ``tx``."""
    return await tx.append_audit(
        actor=caller.actor, role=caller.role, client=caller.client, action=action, **fields
    )


# The vault's role (kura.vault.roles): a single appliance, or one node of an
# HA pair. Only a standby never writes.
SINGLE = "single"
PRIMARY = "primary"
STANDBY = "standby"


class VaultBase:
    """The vault's state; the operation classes build on it."""

    role: str = SINGLE
    # The last of ha.degraded / ha.in_step in the log (kura.vault.hastatus);
    # None: read the log first (at start, and after being a standby, while
    # the other node may have written its own).
    _pair_recorded: str | None = None

    def __init__(self, config: Config, store: Store, clock: Clock = utcnow) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.keys: KeyHierarchy | None = None
        # Held for pairing a standby (kura.vault.pairing): with custodian
        # shares it cannot be read back from the seal. Everything it protects
        # is already in this process's memory as the keys derived from it.
        self.root_key: bytes | None = None
        self.seal: sealing.SealInfo | None = None
        self.collector: sealing.ShareCollector | None = None
        self.policy = accounts.SecurityPolicy()
        self.sessions: dict[bytes, Session] = {}

    @property
    def sealed(self) -> bool:
        return self.keys is None

    @property
    def writable(self) -> bool:
        """False on a standby: its database takes no writes, and the vault
        writes nothing (no audit entry, checkpoint, session) until promoted."""
        return self.role != STANDBY

    def pair_degraded(self) -> bool:
        """An HA primary going on without its standby (kura.vault.hastatus):
        the console's banner on every page."""
        return False

    async def follow_pair(self) -> None:
        """Record the pair's loss of redundancy and its return (kura.vault.
        hastatus); nothing on a single appliance."""

    async def agent_upkeep(self, now: float) -> None:
        """Judge the endpoint agents every few seconds (kura.vault.agents)."""

    def _keys(self) -> KeyHierarchy:
        if self.keys is None:
            raise VaultSealed()
        return self.keys

    def _restriction(self, user: Row, mfa_done: bool) -> str | None:
        role = Role(user["role"])
        if user["must_change_password"] or accounts.password_expired(
            self.policy, user["password_changed_at"], self.clock()
        ):
            return "password"
        if accounts.mfa_required(self.policy, role) and not mfa_done:
            return "mfa"
        return None

    def _sealed_row(
        self,
        subject: subjects.SubjectInput,
        employee_id: uuid.UUID | None,
        actor: str,
        bidx: bytes | None = None,  # the number's blind index, when already made
    ) -> dict[str, Any]:
        """A new subject's row: its own data key (wrapped by the current KEK),
        the number encrypted under it and its blind index."""
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

    async def terminal_standing(self, serial_hex: str) -> str:
        """What the enrolled agents say of a client-certificate serial:
        "compliant", "noncompliant", "revoked" or "unknown" (kura.vault.agents
        answers; without it no terminal is known)."""
        return "unknown"

    def _forget_user_sessions(self, user_id: int) -> None:
        for digest, s in list(self.sessions.items()):
            if s.user_id == user_id:
                del self.sessions[digest]


def parse_time(value: str | None, field: str) -> datetime | None:
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


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
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


def decision_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """What every two-person proposal shows (a disposal batch, a policy
    change): who proposed it when, who decided it when, and why."""
    return {
        "id": str(row["id"]),
        "state": row["state"],
        "proposed_by": row["proposed_by"],
        "proposed_at": row["proposed_at"].isoformat(),
        "decided_by": row["decided_by"],
        "decided_at": row["decided_at"].isoformat() if row["decided_at"] else None,
        "reason": row["reason"],
    }
