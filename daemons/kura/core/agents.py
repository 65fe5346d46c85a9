"""Endpoint agents' rules (docs/agents.md), pure: enrolment tokens, an
agent's states, and whether an agent is compliant.

An **enrolment token** is shown once (as text and a QR code) and stored only
as its SHA-256. Whether one may enrol is the table ``TOKEN_RULES``: a token
that is unknown, already used, expired or withdrawn is refused, and the
reason is what the audit entry ``agent.enrol_refused`` records.

An agent is **compliant** when it enforces the newest bundle of its profile
(within two heartbeats of its issue), its posture meets the profile's
requirements and it was heard from within three heartbeats;
``evaluate`` returns the problems, each with a Japanese and an English text,
and no problem means compliant.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kura.core.argschema import EMPTY, UUID, Schema, obj, text
from kura.core.bundle import PROFILES
from kura.core.errors import KuraError

DEFAULT_MINUTES = 15
MAX_MINUTES = 24 * 60
HEARTBEAT_SECONDS = 30
PULL_SECONDS = 60
WATCH_SECONDS = 25.0  # the longest an agents.watch call waits

# --- enrolment tokens -----------------------------------------------------------

# Crockford's base32 without the look-alikes: typed from a screen by hand.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TOKEN_GROUPS = 5  # 5 groups of 4: 100 bits


def new_token() -> str:
    """A fresh token, ``XXXX-XXXX-XXXX-XXXX-XXXX`` (100 random bits)."""
    chars = "".join(secrets.choice(_ALPHABET) for _ in range(4 * TOKEN_GROUPS))
    return "-".join(chars[i : i + 4] for i in range(0, len(chars), 4))


def normalise_token(token: str) -> str:
    """What was typed, as made: upper case, the look-alikes read as meant,
    dashes where they belong."""
    cleaned = token.upper().replace("-", "").replace(" ", "")
    cleaned = cleaned.replace("O", "0").replace("I", "1").replace("L", "1")
    return "-".join(cleaned[i : i + 4] for i in range(0, len(cleaned), 4))


def token_digest(token: str) -> bytes:
    """What is stored of a token: the SHA-256 of its normal form."""
    return hashlib.sha256(normalise_token(token).encode()).digest()


def same_token(token: str, digest: bytes) -> bool:
    return hmac.compare_digest(token_digest(token), digest)


def lifetime(minutes: int | None) -> timedelta:
    """A token's lifetime: 15 minutes unless asked, never over 24 hours."""
    if minutes is None:
        return timedelta(minutes=DEFAULT_MINUTES)
    return timedelta(minutes=max(1, min(int(minutes), MAX_MINUTES)))


# Why a token does not enrol, by its state; None: it enrols.
UNKNOWN, USED, EXPIRED, WITHDRAWN = "unknown", "used", "expired", "withdrawn"
REFUSE_REASONS = (UNKNOWN, USED, EXPIRED, WITHDRAWN)
# (known, used, withdrawn, expired) -> the refusal, None: it enrols. Checked
# in this order: a used token says "used" even when it has since expired, so
# the SA reading the log sees a second attempt for what it is.
TOKEN_RULES: dict[tuple[bool, bool, bool, bool], str | None] = {
    (known, used, withdrawn, expired): (
        UNKNOWN if not known
        else USED if used
        else WITHDRAWN if withdrawn
        else EXPIRED if expired
        else None
    )
    for known in (False, True)
    for used in (False, True)
    for withdrawn in (False, True)
    for expired in (False, True)
}


def token_refusal(row: dict[str, Any] | None, now: datetime) -> str | None:
    """Why the token stored as ``row`` (None: no such token) may not enrol
    at ``now``; None if it may."""
    if row is None:
        return TOKEN_RULES[(False, False, False, False)]
    return TOKEN_RULES[
        (True, row["used_at"] is not None, row["withdrawn_at"] is not None,
         now >= row["expires"])
    ]


def token_state(row: dict[str, Any], now: datetime) -> str:
    """What the SA's list shows: open, used, withdrawn or expired."""
    return token_refusal(row, now) or "open"


class EnrolRefused(KuraError):
    code = "enrol_refused"
    status = 403
    ja = "登録トークンが使えません（不明・使用済み・期限切れ・取り消し済み）。"
    en = "The enrolment token cannot be used (unknown, used, expired or withdrawn)."


class AgentRevoked(KuraError):
    code = "agent_revoked"
    status = 403
    ja = "このエージェントの証明書は失効しています。"
    en = "This agent's certificate has been revoked."


class AgentUnknown(KuraError):
    code = "agent_unknown"
    status = 403
    ja = "この証明書のエージェントは登録されていません。"
    en = "No enrolled agent has this certificate."


class PolicyTestsFailed(KuraError):
    code = "policy_tests_failed"
    status = 422
    ja = "テストケースを満たさないため、ポリシーを保存しませんでした。"
    en = "The policy was not saved: some test cases fail."


def new_agent_id() -> str:
    """``agent-`` and 10 base32 characters (50 bits): short enough to read
    out, and never a run of 12 digits the audit log's number guard refuses."""
    return "agent-" + "".join(secrets.choice(_ALPHABET.lower()) for _ in range(10))


# --- agents -----------------------------------------------------------------------

ACTIVE, REVOKED = "active", "revoked"
AGENT_STATES = (ACTIVE, REVOKED)

# The problems that make an agent non-compliant: (code) -> (ja, en).
SILENT = "silent"
STALE_POLICY = "stale_policy"
DISK_NOT_ENCRYPTED = "disk_not_encrypted"
UPDATES_PENDING = "updates_pending"
PROBLEM_TEXTS: dict[str, tuple[str, str]] = {
    SILENT: ("{seconds} 秒以上応答がありません。", "Not heard from for over {seconds} seconds."),
    STALE_POLICY: (
        "最新のポリシー（{newest}）を適用していません（適用中: {current}）。",
        "Does not enforce the newest policy ({newest}; enforces {current}).",
    ),
    DISK_NOT_ENCRYPTED: ("ディスクが暗号化されていません。", "The disk is not encrypted."),
    UPDATES_PENDING: (
        "未適用のセキュリティ更新が {count} 件あります（上限 {limit} 件）。",
        "{count} security updates are pending (at most {limit} allowed).",
    ),
}


@dataclass(frozen=True)
class Problem:
    code: str
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        ja, en = PROBLEM_TEXTS[self.code]
        return {"code": self.code, "ja": ja.format(**self.params),
                "en": en.format(**self.params)}


@dataclass(frozen=True)
class Standing:
    """What the vault knows of one agent when it judges it."""

    last_seen: datetime
    policy_serial: int | None
    posture: dict[str, Any]


@dataclass(frozen=True)
class Requirements:
    """A profile's posture requirements (kura.core.agentpolicy)."""

    require_disk_encryption: bool = False
    max_security_updates: int | None = None


def evaluate(
    agent: Standing,
    newest_serial: int | None,
    newest_issued: datetime | None,
    needs: Requirements,
    now: datetime,
    heartbeat_seconds: int = HEARTBEAT_SECONDS,
) -> list[Problem]:
    """The agent's problems at ``now``; empty when it is compliant."""
    problems: list[Problem] = []
    beat = timedelta(seconds=heartbeat_seconds)
    if now - agent.last_seen > 3 * beat:
        problems.append(Problem(SILENT, {"seconds": 3 * heartbeat_seconds}))
    if (
        newest_serial is not None
        and newest_issued is not None
        and (agent.policy_serial or 0) < newest_serial
        and now - newest_issued > 2 * beat
    ):
        problems.append(Problem(STALE_POLICY, {"newest": newest_serial,
                                               "current": agent.policy_serial or "-"}))
    if needs.require_disk_encryption and agent.posture.get("disk_encrypted") is not True:
        problems.append(Problem(DISK_NOT_ENCRYPTED, {}))
    pending = agent.posture.get("security_updates")
    if needs.max_security_updates is not None and (
        not isinstance(pending, int) or pending > needs.max_security_updates
    ):
        problems.append(Problem(UPDATES_PENDING, {
            "count": pending if isinstance(pending, int) else "?",
            "limit": needs.max_security_updates,
        }))
    return problems


# What a heartbeat report may hold (kura-agent sends it; kura-policy passes it on).
POSTURE_KEYS = ("os_release", "security_updates", "disk_encrypted")


def posture_of(report: dict[str, Any]) -> dict[str, Any]:
    """The posture fields of a report, bounded (a report is the agent's word)."""
    out: dict[str, Any] = {}
    release = report.get("os_release")
    if isinstance(release, str):
        out["os_release"] = release[:200]
    updates = report.get("security_updates")
    if isinstance(updates, int) and not isinstance(updates, bool):
        out["security_updates"] = max(0, min(updates, 100_000))
    if isinstance(report.get("disk_encrypted"), bool):
        out["disk_encrypted"] = report["disk_encrypted"]
    return out


# --- the operations' arguments (kura.core.api) -------------------------------------

PROFILE: Schema = {"type": "string", "enum": list(PROFILES)}
_SERIAL = text(80, 1)
_PEM = text(16_000, 1)
_ADDRESS = text(64, 1)
_JSON_OBJECT: Schema = {"type": "object"}

SCHEMAS: dict[str, Schema] = {
    "agents.token_create": obj(
        {"profile": PROFILE},
        {"label": text(100), "minutes": {"type": "integer", "minimum": 1,
                                         "maximum": MAX_MINUTES}},
    ),
    "agents.tokens": EMPTY,
    "agents.token_withdraw": obj({"token_id": UUID}),
    "agents.list": EMPTY,
    "agents.revoke": obj({"agent_id": text(40, 1)}, {"reason": text(500)}),
    "agents.policy_get": obj({"profile": PROFILE}),
    "agents.policy_set": obj(
        {"profile": PROFILE, "policy": _JSON_OBJECT},
        {"tests": {"type": "array", "maxItems": 500}, "version": {"type": "integer"}},
    ),
    "alerts.list": EMPTY,
    "agents.ca": EMPTY,
    "agents.server_cert": obj(
        {"csr_pem": _PEM, "names": {"type": "array", "items": text(253, 1), "minItems": 1,
                                    "maxItems": 32}}
    ),
    "agents.enrol": obj(
        {"token": text(64, 1), "csr_pem": _PEM},
        {"hostname": text(253), "address": text(64)},
    ),
    "agents.check": obj({"serial": _SERIAL}),
    "agents.heartbeat": obj({"serial": _SERIAL, "address": _ADDRESS},
                            {"report": _JSON_OBJECT}),
    "agents.bundle": obj({"profile": PROFILE}),
    "agents.watch": obj({}, {"after": {"type": "integer", "minimum": 0}}),
}
