"""Accounts: the security policy and the decisions made under it.

Theory of operation. The Security Admin sets one ``SecurityPolicy``; the vault
stores it as JSON (``to_json``/``from_json``) and hands it, with plain values,
to the functions below, which answer questions and never touch a database:
is this new password acceptable, does this password match its hash, has it
expired, until when is an account locked, is this TOTP code good (and not a
replay), has this session run out. The caller owns the state (failure counts,
the last TOTP step used, session times) and stores what these functions return.

Passwords are normalised with NFKC before they are checked or hashed (NIST SP
800-63B 5.1.1.2), so a password typed with the IME on (full-width ＡＢＣ１２３)
matches the same password typed half-width, and composed and decomposed kana
are one password. Hashes are argon2id through passlib; see ``_HASHER``.

Nothing here puts a password, hash, secret or token in a message.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import pyotp
from passlib.hash import argon2

from kura.core.errors import BadRequest, PasswordRejected
from kura.core.roles import Role

MAX_PASSWORD_LENGTH = 128
"""Hard upper bound on a password, in characters after normalisation."""

MIN_USERNAME_IN_PASSWORD = 3
"""A user name shorter than this is not searched for in the password: a
one- or two-letter name would forbid half the alphabet."""

# --------------------------------------------------------------------------
# The policy


# Bounds for every integer field: (minimum, maximum, ja, en description).
# POLICY_SCHEMA and SecurityPolicy's validation are both built from this one
# table, so the API's schema and the vault's checks cannot drift apart.
_INT_FIELDS: dict[str, tuple[int, int, str, str]] = {
    "min_length": (8, MAX_PASSWORD_LENGTH, "パスワードの最小文字数", "Minimum password length"),
    "required_classes": (
        1,
        4,
        "必要な文字種の数（英小文字・英大文字・数字・記号等）",
        "Character classes required (lower, upper, digit, symbol/other)",
    ),
    "history": (
        0,
        24,
        "再利用を禁止する過去のパスワード数",
        "Previous passwords that may not be reused",
    ),
    "max_age_days": (
        0,
        3650,
        "パスワードの有効日数（0は無期限）",
        "Password lifetime in days (0: never expires)",
    ),
    "lockout_threshold": (1, 100, "ロックするまでの失敗回数", "Failed sign-ins before lockout"),
    "lockout_base_seconds": (1, 3600, "最初のロック時間（秒）", "First lockout period in seconds"),
    "lockout_max_seconds": (
        1,
        86400,
        "ロック時間の上限（秒）",
        "Longest lockout period in seconds",
    ),
    "session_idle_minutes": (
        1,
        1440,
        "無操作タイムアウト（分）",
        "Idle session timeout in minutes",
    ),
    "session_absolute_hours": (
        1,
        168,
        "セッションの最長時間（時間）",
        "Absolute session lifetime in hours",
    ),
    "export_approval_threshold": (
        0,
        1_000_000,
        "この行数を超える持出しには管理者の承認が必要",
        "Exports with more rows than this need an MA's approval",
    ),
    "audit_checkpoint_seconds": (
        1,
        3600,
        "監査ログの先頭に署名する間隔（秒）",
        "Seconds between signatures of the audit chain's head",
    ),
}

MAX_ALLOWED_NETWORKS = 64


def _field_error(name: str, ja: str, en: str) -> BadRequest:
    return BadRequest(en=f"{name}: {en}", ja=f"{name}: {ja}", field=name)


@dataclass(frozen=True)
class SecurityPolicy:
    """The Security Admin's rules for passwords, lockout, MFA, sessions and
    terminals. Constructing one validates the ranges (raising ``BadRequest``)."""

    min_length: int = 12
    required_classes: int = 3
    history: int = 5
    max_age_days: int = 90
    lockout_threshold: int = 5
    lockout_base_seconds: int = 30
    lockout_max_seconds: int = 3600
    # Every role by default (issue 10): MU and MA see numbers, so a stolen
    # password alone must not open them. A stored policy keeps what it says.
    mfa_roles: frozenset[Role] = frozenset(Role)
    session_idle_minutes: int = 15
    session_absolute_hours: int = 10
    export_approval_threshold: int = 100
    allowed_networks: tuple[str, ...] = ()
    audit_checkpoint_seconds: int = 5
    # MU and MA only from an enrolled, compliant clerk PC (docs/agents.md):
    # the console passes the browser's client-certificate serial, the vault
    # asks kura.vault.agents for its standing.
    require_enrolled_terminal: bool = False

    def __post_init__(self) -> None:
        for name, (low, high, _, _) in _INT_FIELDS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise _field_error(
                    name,
                    f"{low}以上{high}以下の整数を指定してください。",
                    f"must be an integer from {low} to {high}.",
                )
        if self.lockout_max_seconds < self.lockout_base_seconds:
            raise _field_error(
                "lockout_max_seconds",
                "lockout_base_seconds 以上の値を指定してください。",
                "must not be less than lockout_base_seconds.",
            )
        if self.session_idle_minutes > self.session_absolute_hours * 60:
            raise _field_error(
                "session_idle_minutes",
                "session_absolute_hours を超える時間は指定できません。",
                "must not be longer than session_absolute_hours.",
            )
        if len(self.allowed_networks) > MAX_ALLOWED_NETWORKS:
            raise _field_error(
                "allowed_networks",
                f"{MAX_ALLOWED_NETWORKS}件以内で指定してください。",
                f"may list at most {MAX_ALLOWED_NETWORKS} networks.",
            )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {name: getattr(self, name) for name in _INT_FIELDS}
        body["mfa_roles"] = [role.value for role in Role if role in self.mfa_roles]
        body["allowed_networks"] = list(self.allowed_networks)
        body["require_enrolled_terminal"] = self.require_enrolled_terminal
        return body

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], base: SecurityPolicy | None = None
    ) -> SecurityPolicy:
        """Parse a policy object strictly. Keys missing from ``data`` keep their
        value from ``base`` (the defaults if none), so a stored policy from an
        older version still loads and an edit can be applied to the current
        policy with ``from_json(edit, base=current)``."""
        if not isinstance(data, Mapping):
            raise BadRequest(
                en="The security policy must be a JSON object.",
                ja="セキュリティポリシーはJSONオブジェクトで指定してください。",
            )
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                name = str(key)[:64]
                raise _field_error(name, "不明な項目です。", "is not a policy setting.")
        values: dict[str, Any] = {}
        for name in _INT_FIELDS:
            if name in data:
                value = data[name]
                # bool is an int in Python but not in JSON Schema; 12.0 is not an int.
                if isinstance(value, bool) or not isinstance(value, int):
                    raise _field_error(name, "整数で指定してください。", "must be an integer.")
                values[name] = value
        if "mfa_roles" in data:
            values["mfa_roles"] = _parse_roles(data["mfa_roles"])
        if "allowed_networks" in data:
            values["allowed_networks"] = _parse_networks(data["allowed_networks"])
        if "require_enrolled_terminal" in data:
            flag = data["require_enrolled_terminal"]
            if not isinstance(flag, bool):
                raise _field_error(
                    "require_enrolled_terminal",
                    "true か false で指定してください。",
                    "must be true or false.",
                )
            values["require_enrolled_terminal"] = flag
        current = base if base is not None else cls()
        merged = {f.name: values.get(f.name, getattr(current, f.name)) for f in fields(cls)}
        return cls(**merged)


def _parse_roles(value: Any) -> frozenset[Role]:
    name = "mfa_roles"
    if not isinstance(value, list | tuple):
        raise _field_error(name, "ロールの配列で指定してください。", "must be a list of roles.")
    roles: set[Role] = set()
    values = [role.value for role in Role]
    allowed = ", ".join(values)
    for item in value:
        if not isinstance(item, str) or item not in values:
            raise _field_error(
                name,
                f"ロールは {allowed} のいずれかで指定してください。",
                f"each role must be one of {allowed}.",
            )
        if Role(item) in roles:
            raise _field_error(name, "ロールが重複しています。", "lists a role twice.")
        roles.add(Role(item))
    return frozenset(roles)


def _parse_networks(value: Any) -> tuple[str, ...]:
    name = "allowed_networks"
    if not isinstance(value, list | tuple):
        raise _field_error(
            name, "ネットワーク（CIDR）の配列で指定してください。", "must be a list of CIDRs."
        )
    networks: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _field_error(
                name, "ネットワークは文字列で指定してください。", "each network must be a string."
            )
        try:
            network = ipaddress.ip_network(item.strip(), strict=True)
        except ValueError:
            # item may be arbitrary text from the client: keep it out of the message.
            raise _field_error(
                name,
                "ネットワークは 192.0.2.0/24 のようなCIDR表記で指定してください（ホスト部は0）。",
                "each network must be a CIDR such as 192.0.2.0/24 (host bits zero).",
            ) from None
        text = str(network)
        if text in networks:
            raise _field_error(name, "ネットワークが重複しています。", "lists a network twice.")
        networks.append(text)
    return tuple(networks)


def _int_schema(name: str) -> dict[str, Any]:
    low, high, ja, en = _INT_FIELDS[name]
    return {
        "type": "integer",
        "minimum": low,
        "maximum": high,
        "default": getattr(SecurityPolicy(), name),
        "title": en,
        "description": ja,
    }


POLICY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:kura:security-policy",
    "title": "Security policy",
    "description": (
        "セキュリティポリシー。Omitted settings keep their current value. "
        "Also checked by the vault: lockout_max_seconds >= lockout_base_seconds, "
        "session_idle_minutes <= session_absolute_hours * 60, CIDRs have zero host bits."
    ),
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **{name: _int_schema(name) for name in _INT_FIELDS},
        "mfa_roles": {
            "type": "array",
            "items": {"type": "string", "enum": [role.value for role in Role]},
            "uniqueItems": True,
            "default": SecurityPolicy().to_json()["mfa_roles"],
            "title": "Roles that must sign in with a TOTP code",
            "description": "二要素認証（TOTP）を必須とするロール",
        },
        "allowed_networks": {
            "type": "array",
            "items": {"type": "string", "minLength": 2, "maxLength": 43},
            "uniqueItems": True,
            "maxItems": MAX_ALLOWED_NETWORKS,
            "default": [],
            "title": "Networks (CIDR) clients may connect from; empty: any",
            "description": "接続を許可する端末のネットワーク（CIDR）。空なら制限なし",
        },
        "require_enrolled_terminal": {
            "type": "boolean",
            "default": False,
            "title": "MU and MA only from enrolled, compliant clerk PCs",
            "description": (
                "マイナンバー利用者・管理者は登録済みで準拠している事務端末からのみ利用可"
            ),
        },
    },
}


def is_allowed_address(policy: SecurityPolicy, address: str) -> bool:
    """True if a client at ``address`` may connect under the policy."""
    if not policy.allowed_networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    return any(ip in ipaddress.ip_network(net) for net in policy.allowed_networks)


def mfa_required(policy: SecurityPolicy, role: Role) -> bool:
    return role in policy.mfa_roles


# --------------------------------------------------------------------------
# Passwords


@dataclass(frozen=True)
class Reason:
    """One reason a new password is refused; ``code`` is stable for clients."""

    code: str
    ja: str
    en: str


def _normalise(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


# Invisible or line-breaking characters: a password containing them cannot be
# typed reliably, and lone surrogates cannot even be encoded for hashing.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _character_classes(password: str) -> int:
    lower = upper = digit = other = False
    for char in password:
        if "a" <= char <= "z":
            lower = True
        elif "A" <= char <= "Z":
            upper = True
        elif "0" <= char <= "9":
            digit = True
        else:
            other = True  # ASCII symbols, spaces and every non-ASCII character
    return lower + upper + digit + other


def password_problems(
    policy: SecurityPolicy, password: str, username: str, previous_hashes: Sequence[str]
) -> list[Reason]:
    """Every way ``password`` breaks the policy; empty if it is acceptable.

    ``previous_hashes`` are the user's password hashes, newest first, including
    the current one; only the first ``policy.history`` are compared. Each
    comparison is a full argon2 verification (~0.1 s).
    """
    reasons: list[Reason] = []
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in password):
        reasons.append(
            Reason(
                "control_characters",
                "制御文字や改行などの見えない文字は使えません。",
                "It must not contain control, invisible or line-break characters.",
            )
        )
    normal = _normalise(password)
    if len(normal) < policy.min_length:
        reasons.append(
            Reason(
                "too_short",
                f"{policy.min_length}文字以上にしてください。",
                f"It must be at least {policy.min_length} characters long.",
            )
        )
    if len(normal) > MAX_PASSWORD_LENGTH:
        reasons.append(
            Reason(
                "too_long",
                f"{MAX_PASSWORD_LENGTH}文字以下にしてください。",
                f"It must be at most {MAX_PASSWORD_LENGTH} characters long.",
            )
        )
    if _character_classes(normal) < policy.required_classes:
        reasons.append(
            Reason(
                "too_few_classes",
                f"英小文字・英大文字・数字・記号（その他の文字を含む）のうち"
                f"{policy.required_classes}種類以上を含めてください。",
                f"It must mix at least {policy.required_classes} of: lower-case letters, "
                "upper-case letters, digits, symbols or other characters.",
            )
        )
    name = _normalise(username).casefold()
    if len(name) >= MIN_USERNAME_IN_PASSWORD and name in normal.casefold():
        reasons.append(
            Reason(
                "contains_username",
                "ユーザー名を含めないでください。",
                "It must not contain the user name.",
            )
        )
    if policy.history and any(
        verify_password(password, hashed) for hashed in previous_hashes[: policy.history]
    ):
        reasons.append(
            Reason(
                "reused",
                f"直近{policy.history}回のパスワードは再利用できません。",
                f"It must differ from the last {policy.history} passwords.",
            )
        )
    return reasons


def check_new_password(
    policy: SecurityPolicy, password: str, username: str, previous_hashes: Sequence[str]
) -> None:
    """Raise ``PasswordRejected`` naming every reason, if there is any."""
    reasons = password_problems(policy, password, username, previous_hashes)
    if reasons:
        raise PasswordRejected(
            en=" ".join([PasswordRejected.en, *(r.en for r in reasons)]),
            ja="".join([PasswordRejected.ja, *(r.ja for r in reasons)]),
            reasons=[r.code for r in reasons],
        )


# argon2id with RFC 9106 section 4's second recommended option: 64 MiB, three
# passes, four lanes, 16-byte salt, 32-byte tag. Measured on the 2-core build
# host: ~110 ms a hash (t=2/p=1 ~107 ms, t=3/p=1 ~150 ms, t=3/p=2 ~80 ms), in
# the 50-150 ms band: slow enough to price offline guessing, fast enough for a
# sign-in. The memory, not the time, is what costs an attacker's GPU; the
# price is 64 MiB per concurrent hash, so the vault runs them in a small pool.
# Changing these makes existing hashes ``password_needs_rehash``; regenerate
# DUMMY_HASH (a test checks it).
_HASHER = argon2.using(
    type="ID", memory_cost=65536, rounds=3, parallelism=4, salt_size=16, digest_size=32
)

DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$KMU4Z0ypda51TqlV6h3j/A$"
    "zR6A8D+zNByLIu5xLz9+WOhLAqU5GB1t1pNORd1wJus"
)
"""A hash of a random, forgotten password with the current parameters. Verify
against it when the user name is unknown so that the answer takes as long as
for a real user; the caller then fails the sign-in whatever the result."""


def hash_password(password: str) -> str:
    result: str = _HASHER.hash(_normalise(password))
    return result


def verify_password(password: str, hashed: str) -> bool:
    """True if ``password`` matches ``hashed`` (argon2's comparison is
    constant-time). A malformed or foreign hash, or a password that cannot be
    encoded, is simply a mismatch."""
    try:
        return bool(_HASHER.verify(_normalise(password), hashed))
    except (ValueError, TypeError):  # includes UnicodeEncodeError, PasswordSizeError
        return False


def password_needs_rehash(hashed: str) -> bool:
    """True if ``hashed`` was made with other parameters: after a successful
    sign-in the caller should store ``hash_password`` of the password again."""
    try:
        return bool(_HASHER.needs_update(hashed))
    except (ValueError, TypeError):
        return True


def password_expired(policy: SecurityPolicy, changed_at: datetime, now: datetime) -> bool:
    """True once ``max_age_days`` have passed since the change (at the exact
    moment too); never when ``max_age_days`` is 0."""
    if policy.max_age_days == 0:
        return False
    return now - changed_at >= timedelta(days=policy.max_age_days)


def lockout_until(policy: SecurityPolicy, failures: int, now: datetime) -> datetime | None:
    """When an account with ``failures`` consecutive failed sign-ins may try
    again, or None if it is not locked. The ``lockout_threshold``-th failure
    locks for ``lockout_base_seconds``, each further one doubles it, up to
    ``lockout_max_seconds``."""
    if failures < policy.lockout_threshold:
        return None
    # Clamp the exponent so a huge count cannot build a huge integer; 2**40
    # times any base is far past the largest allowed cap.
    exponent = min(failures - policy.lockout_threshold, 40)
    seconds = min(policy.lockout_base_seconds << exponent, policy.lockout_max_seconds)
    return now + timedelta(seconds=seconds)


# --------------------------------------------------------------------------
# Second factor: TOTP (RFC 6238, 30-second steps, 6 digits, SHA-1, as every
# authenticator app expects)

TOTP_WINDOW = 1
"""Steps accepted either side of now, for clock drift and slow typing."""


def new_totp_secret() -> str:
    """A fresh base32 secret (160 bits)."""
    return pyotp.random_base32()


def totp_uri(secret: str, username: str, issuer: str = "Kura") -> str:
    """The otpauth:// URI for the enrolment QR code. It contains the secret:
    show it once, never log it."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


def totp_verify(secret: str, code: str, now: datetime, last_used_step: int | None) -> int | None:
    """The time step ``code`` belongs to, if it is valid within ±TOTP_WINDOW
    steps of ``now`` and later than ``last_used_step`` (so a code, once used,
    cannot be replayed); None otherwise. Store the returned step.

    Full-width digits and spaces are accepted ("１２３ ４５６"): IME input.
    """
    typed = "".join(_normalise(code).split()).replace("-", "")
    if len(typed) != 6 or not typed.isascii() or not typed.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    accepted: int | None = None
    # Check every step in the window, without stopping early, so the time
    # taken does not say which step matched.
    for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
        matches = hmac.compare_digest(totp.generate_otp(step), typed)
        if matches and (last_used_step is None or step > last_used_step):
            accepted = step
    return accepted


# --------------------------------------------------------------------------
# Sessions


@dataclass(frozen=True)
class SessionTimes:
    created: datetime
    last_seen: datetime


def session_expired(policy: SecurityPolicy, times: SessionTimes, now: datetime) -> str | None:
    """None if the session is still valid, else why it ended: "absolute" (too
    old, whatever the activity) or "idle" (unused too long). Both limits are
    reached at the exact moment."""
    if now - times.created >= timedelta(hours=policy.session_absolute_hours):
        return "absolute"
    if now - times.last_seen >= timedelta(minutes=policy.session_idle_minutes):
        return "idle"
    return None


def new_session_token() -> tuple[str, bytes]:
    """A new session token for the client's cookie, and the digest the vault
    stores instead of it (a stolen database holds no usable session)."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> bytes:
    # A plain hash is enough: the token has 256 bits of entropy, nothing to guess.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
