"""Signed policy bundles: what kura-vault signs and what kura-agent accepts.

A bundle travels as an envelope ``{"format", "body", "signature"}``: the body
is the UTF-8 JSON of the policy resolved for one profile, base64-encoded so
that the bytes signed are the bytes verified (no canonical-JSON guesswork),
and the signature is Ed25519 over those bytes.

Whether an agent takes a bundle is decided by ``decide`` alone, from the
bundle it enforces and the one offered; the rules are the table ``RULES``.
This module needs only the standard library and cryptography: the agent, on
an endpoint, imports it without the rest of Kura.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "kura-bundle/1"
PROFILES = ("clerk-pc", "business-server")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its body and the exact bytes that were signed."""

    body: dict[str, Any]
    raw: bytes

    @property
    def serial(self) -> int:
        return int(self.body["serial"])

    @property
    def profile(self) -> str:
        return str(self.body["profile"])

    @property
    def appliance(self) -> str:
        return str(self.body["appliance"])

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def encode_body(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def sign(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, str]:
    """The envelope of ``body`` signed with ``key``."""
    raw = encode_body(body)
    return {
        "format": FORMAT,
        "body": base64.b64encode(raw).decode("ascii"),
        "signature": base64.b64encode(key.sign(raw)).decode("ascii"),
    }


# Why an offered envelope is refused. The agent reports these in its heartbeat.
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_FORMAT = "unknown_format"
MALFORMED = "malformed"
OTHER_APPLIANCE = "other_appliance"
WRONG_PROFILE = "wrong_profile"
OLDER = "older"
CONFLICT = "conflict"
REASONS = (UNSIGNED, BAD_SIGNATURE, UNKNOWN_FORMAT, MALFORMED, OTHER_APPLIANCE,
           WRONG_PROFILE, OLDER, CONFLICT)


class Refused(Exception):
    """The envelope is not a bundle this agent may enforce; ``reason`` is one
    of ``REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"bundle refused: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


def _b64(text: Any, reason: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise Refused(reason)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refused(reason, "not base64") from exc


def verify(envelope: Any, key: Ed25519PublicKey) -> Bundle:
    """The bundle inside ``envelope`` if ``key`` signed it; ``Refused`` otherwise.
    Nothing of the body is looked at before the signature holds."""
    if not isinstance(envelope, dict):
        raise Refused(MALFORMED, "not an object")
    if envelope.get("format") != FORMAT:
        raise Refused(UNKNOWN_FORMAT, str(envelope.get("format"))[:40])
    if not envelope.get("signature"):
        raise Refused(UNSIGNED)
    raw = _b64(envelope.get("body"), MALFORMED)
    signature = _b64(envelope.get("signature"), BAD_SIGNATURE)
    try:
        key.verify(signature, raw)
    except InvalidSignature as exc:
        raise Refused(BAD_SIGNATURE) from exc
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(MALFORMED, "body is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("serial"), int) \
            or body.get("profile") not in PROFILES or not isinstance(body.get("appliance"), str):
        raise Refused(MALFORMED, "serial, profile or appliance missing")
    return Bundle(body, raw)


# What happens to a verified offer, by how its serial compares with the
# enforced bundle's and whether the bytes are the same. Profile and appliance
# are checked first: a bundle for someone else is never compared at all.
ACCEPT = "accept"
KEEP = "keep"  # the bundle already enforced, offered again: nothing to do
RULES: dict[tuple[str, bool], str] = {
    ("none", False): ACCEPT,  # nothing enforced yet: the first bundle
    ("newer", False): ACCEPT,
    ("same", True): KEEP,
    ("same", False): CONFLICT,  # one serial, two bodies: someone forged or rewound
    ("older", False): OLDER,  # a replay of a bundle this agent has moved past
}


def decide(current: Bundle | None, offered: Bundle, profile: str, appliance: str) -> str:
    """``ACCEPT``, ``KEEP`` or the reason to refuse ``offered`` for an agent of
    ``profile`` enrolled with ``appliance`` that enforces ``current``."""
    if offered.appliance != appliance:
        return OTHER_APPLIANCE
    if offered.profile != profile:
        return WRONG_PROFILE
    if current is None:
        order, same = "none", False
    elif offered.serial > current.serial:
        order, same = "newer", False
    elif offered.serial < current.serial:
        order, same = "older", False
    else:
        order, same = "same", offered.raw == current.raw
    return RULES[(order, same)]


def public_key_text(key: Ed25519PublicKey) -> str:
    """The raw public key in base64, as an agent stores and the console shows it."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_b64(text, MALFORMED))
