"""Pairing a standby: the root key reaches it encrypted, after a code check.

Theory of operation
-------------------
A standby that has no root key yet makes an *offer*; the primary answers
with an *envelope* holding the root key. The DA carries one short *pairing
code* from the standby's screen to the primary's console, and that code is
what binds the two: it is a password-authenticated key exchange (CPace over
X25519), not a fingerprint of the offer.

Why not a code computed from the offer (both screens showing the same hash
of the standby's public key)? A short hash is a commitment only against
someone who must find a collision *before* seeing the target. An attacker on
the wire sees the real offer, and then needs a forged offer (its own public
key) whose 10-digit code is the same: about 2**33 SHA-256 evaluations, a
second's work for one graphics card, or none at all with a table made in
advance. The code would have to be ~20 digits and slow to hash to hold. A
PAKE gives the attacker one guess per pairing attempt instead, with no
offline search, and keeps the code short:

1. The standby draws a random 10-digit secret and adds two check digits
   (ISO 7064 MOD 97-10) so that a typo is caught on the primary. It maps the
   code, the offer's nonce and its name and address to a curve point ``G``
   (Elligator 2, RFC 9380), draws a scalar ``a`` and publishes ``A = a·G``
   in the offer (the field ``public_key``). The code is shown only on the
   standby's own screen; it is never on the wire.
2. On the primary, the DA types the code. The primary computes the same
   ``G``, draws ``b``, sends ``B = b·G`` and encrypts the root key under
   ``HKDF(b·A)`` with AES-256-GCM; the associated data is the whole
   transcript (the offer, the primary's name, the parameters that travel,
   the check value, ``B``), so no byte of it can be changed.
3. The standby computes ``a·B`` (the same point exactly when both sides used
   the same code), opens the envelope and checks the key against the check
   value carried with it.

Someone who swaps the offer for their own must guess the code before they
see anything that depends on it: a wrong guess leaves them with a
ciphertext under a Diffie-Hellman value they cannot compute, and nothing to
test further guesses against. A forged envelope sent to the standby is one
guess too; the standby allows three (``ATTEMPTS``) and then forgets the
offer. The offer expires (``LIFETIME``) and is single-use: the standby drops
its scalar once an envelope opens.

This module is pure: values in, values out, no files, no clocks (``now`` is
passed in). The scalar never leaves :class:`PendingOffer` except to be
written by the caller to a 0600 file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kura.core.argschema import UUID, Schema, obj, text
from kura.core.errors import (
    BadRequest,
    PairingCodeMismatch,
    PairingEnvelopeRejected,
    PairingOfferExpired,
    PairingWrongRootKey,
)
from kura.core.keys import NONCE_BYTES, ROOT_KEY_BYTES, check_root_key

LIFETIME = timedelta(minutes=15)  # how long an offer (and the envelope made for it) is good
MAX_LIFETIME = timedelta(hours=1)  # the primary refuses an offer that claims to live longer
ATTEMPTS = 3  # envelopes the standby tries before it forgets the offer
CODE_DIGITS = 12  # 10 random digits and 2 check digits

_FORMAT = 1
_OFFER_KIND = "kura-pairing-offer"
_ENVELOPE_KIND = "kura-pairing-envelope"
_LABEL_GENERATOR = b"kura/v1/pairing/generator"
_LABEL_OFFER = b"kura/v1/pairing/offer"
_LABEL_KEY = b"kura/v1/pairing/envelope-key"
_LABEL_AD = b"kura/v1/pairing/envelope"
_LABEL_CODE_DIGEST = b"kura/v1/pairing/code-digest"

# Curve25519 in Montgomery form: v^2 = u^3 + A u^2 + u over GF(2^255 - 19).
_P = 2**255 - 19
_A = 486662
_Z = 2  # RFC 9380's non-square for curve25519

# The vault operations' arguments (kura.core.api registers them). The offer is
# checked field by field by Offer.from_json, which names the bad field.
SCHEMAS: dict[str, Schema] = {
    "ha.pair": obj(
        {"offer": {"type": "object", "maxProperties": 16}, "code": text(40, 1)},
        {"monitor_uri": text(500), "ca_certificate": text(20_000)},
    ),
    "ha.approve": obj({"id": UUID}),
    "ha.reject": obj({"id": UUID}, {"reason": text(500)}),
    "ha.pairings": obj({}),
    "ha.status": obj({}),
    "ha.switchover": obj({}),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.:\[\]%-]{1,255}$")
_HEX32 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{32}$")


# -- the code -------------------------------------------------------------------


def new_code() -> str:
    """A fresh pairing code: 10 random digits and 2 check digits."""
    body = f"{secrets.randbelow(10**10):010d}"
    return body + f"{98 - int(body) * 100 % 97:02d}"


def format_code(code: str) -> str:
    """The code as it is shown: three groups of four (``1234 5678 9012``)."""
    digits = normalise_code(code)
    return " ".join(digits[i : i + 4] for i in range(0, CODE_DIGITS, 4))


def normalise_code(typed: str) -> str:
    """The 12 digits of a code as typed (spaces, hyphens and full-width digits
    allowed), or PairingCodeMismatch if it is not a code a standby can show."""
    digits = "".join(
        ch for ch in unicodedata.normalize("NFKC", typed) if ch not in " -\u2010\u2212\u30fc"
    )
    if len(digits) != CODE_DIGITS or not digits.isascii() or not digits.isdigit():
        raise PairingCodeMismatch(
            en=f"A pairing code is {CODE_DIGITS} digits; check the code on the standby's screen.",
            ja=f"ペアリングコードは{CODE_DIGITS}桁です。スタンバイ機の画面を確認してください。",
        )
    if int(digits) % 97 != 1:
        raise PairingCodeMismatch()
    return digits


def code_digest(offer: Offer, code: str) -> str:
    """A short digest of the code for the audit log (never the code itself).

    It names which code was used without showing it on screen; it is not a
    protection of the code (33 bits can be searched), which is harmless only
    because a code is worthless once its offer is spent or expired.
    """
    mac = hmac.new(offer.nonce, _LABEL_CODE_DIGEST + normalise_code(code).encode(), "sha256")
    return mac.hexdigest()[:16]


# -- the offer -------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """What the standby publishes. Nothing in it is secret."""

    appliance: str  # the standby's appliance name
    address: str  # where the primary reaches it (its replication address)
    public_key: bytes  # A = a·G(code): 32 bytes
    nonce: bytes  # 16 random bytes: the session id
    created: datetime
    expires: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "kind": _OFFER_KIND,
            "appliance": self.appliance,
            "address": self.address,
            "public_key": self.public_key.hex(),
            "nonce": self.nonce.hex(),
            "created": self.created.isoformat(),
            "expires": self.expires.isoformat(),
        }

    @classmethod
    def from_json(cls, body: Any) -> Offer:
        """An offer as received; BadRequest naming the field if it is not one."""
        fields = {
            "appliance": _NAME,
            "address": _ADDRESS,
            "public_key": _HEX32,
            "nonce": _HEX16,
        }
        if not isinstance(body, dict) or body.get("kind") != _OFFER_KIND:
            raise BadRequest(
                en="This is not a Kura pairing offer.",
                ja="Kura のペアリング申し出ではありません。",
            )
        if body.get("format") != _FORMAT:
            raise BadRequest(
                en="The pairing offer is of a format this appliance does not know.",
                ja="この装置が対応していない形式のペアリング申し出です。",
            )
        for name, pattern in fields.items():
            value = body.get(name)
            if not isinstance(value, str) or not pattern.match(value):
                raise _bad_field("offer", name)
        return cls(
            appliance=body["appliance"],
            address=body["address"],
            public_key=bytes.fromhex(body["public_key"]),
            nonce=bytes.fromhex(body["nonce"]),
            created=_time(body.get("created"), "offer", "created"),
            expires=_time(body.get("expires"), "offer", "expires"),
        )

    @property
    def digest(self) -> bytes:
        """SHA-256 over the offer's canonical form: what the envelope names."""
        return hashlib.sha256(_LABEL_OFFER + b"\x00" + _canonical(self.to_json())).digest()

    @property
    def fingerprint(self) -> str:
        """A short, readable name of this offer for screens and the audit log."""
        text = self.digest.hex()[:16]
        return "-".join(text[i : i + 4] for i in range(0, 16, 4))

    def check_fresh(self, now: datetime) -> None:
        """PairingOfferExpired if ``now`` is past the expiry, BadRequest if the
        offer claims an implausible lifetime (a clock far off on either side)."""
        if now >= self.expires:
            raise PairingOfferExpired()
        if self.expires - self.created > MAX_LIFETIME or self.expires - now > MAX_LIFETIME:
            raise BadRequest(
                en="The pairing offer's lifetime is implausible: check both appliances' clocks.",
                ja="ペアリング申し出の有効期限が不自然です。両装置の時刻を確認してください。",
            )


@dataclass(frozen=True)
class PendingOffer:
    """The standby's side while it waits: the offer, the code it shows and the
    secret scalar. Kept by the caller in a 0600 file; dropped once used."""

    offer: Offer
    code: str
    scalar: bytes  # a: 32 bytes, X25519 private key
    attempts_left: int = ATTEMPTS

    def __repr__(self) -> str:
        return f"<PendingOffer {self.offer.fingerprint} attempts_left={self.attempts_left}>"

    def to_json(self) -> dict[str, Any]:
        return {
            "offer": self.offer.to_json(),
            "code": self.code,
            "scalar": self.scalar.hex(),
            "attempts_left": self.attempts_left,
        }

    @classmethod
    def from_json(cls, body: Any) -> PendingOffer:
        try:
            scalar = bytes.fromhex(body["scalar"])
            if len(scalar) != 32:
                raise ValueError("scalar length")
            return cls(
                offer=Offer.from_json(body["offer"]),
                code=normalise_code(body["code"]),
                scalar=scalar,
                attempts_left=int(body["attempts_left"]),
            )
        except (KeyError, TypeError, ValueError):
            raise BadRequest(
                en="The pending pairing offer on this appliance is damaged; make a new one.",
                ja="この装置の保留中のペアリング申し出が壊れています。新しく作成してください。",
            ) from None


def make_offer(appliance: str, address: str, now: datetime) -> PendingOffer:
    """A new offer for this standby, with its code and secret scalar."""
    for name, value, pattern in (("appliance", appliance, _NAME), ("address", address, _ADDRESS)):
        if not pattern.match(value):
            raise _bad_field("offer", name)
    code = new_code()
    nonce = os.urandom(16)
    private = X25519PrivateKey.generate()
    generator = _generator(code, nonce, appliance, address)
    offer = Offer(
        appliance=appliance,
        address=address,
        public_key=private.exchange(generator),
        nonce=nonce,
        created=now,
        expires=now + LIFETIME,
    )
    scalar = private.private_bytes_raw()
    return PendingOffer(offer=offer, code=code, scalar=scalar)


# -- what travels with the key ------------------------------------------------------


@dataclass(frozen=True)
class PairingParams:
    """The non-secret parameters the standby needs besides the root key.

    ``seal_mode`` is the primary's; ``shares`` is its custodian (or recovery)
    share set as ``(threshold, count, identifier)``, so that the standby can
    record the same set and the same custodians' shares open it.
    """

    primary: str  # the primary's appliance name
    seal_mode: str
    shares: tuple[int, int, int] | None = None
    monitor_uri: str = ""  # pg_auto_failover's monitor, as the standby's keeper joins it
    ca_certificate: str = ""  # PEM: the formation's CA, for TLS between the nodes

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "primary": self.primary,
            "seal_mode": self.seal_mode,
            "monitor_uri": self.monitor_uri,
            "ca_certificate": self.ca_certificate,
        }
        if self.shares is not None:
            threshold, count, identifier = self.shares
            body["custodian_shares"] = {
                "threshold": threshold,
                "count": count,
                "identifier": identifier,
            }
        return body

    @classmethod
    def from_json(cls, body: Any) -> PairingParams:
        try:
            shares = body.get("custodian_shares")
            params = cls(
                primary=str(body["primary"]),
                seal_mode=str(body["seal_mode"]),
                shares=(
                    (int(shares["threshold"]), int(shares["count"]), int(shares["identifier"]))
                    if shares
                    else None
                ),
                monitor_uri=str(body.get("monitor_uri", "")),
                ca_certificate=str(body.get("ca_certificate", "")),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise _bad_field("envelope", "params") from None
        if params.seal_mode not in ("shamir", "creds", "host") or not _NAME.match(params.primary):
            raise _bad_field("envelope", "params")
        return params


# -- the envelope -------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """What the primary sends back. The root key inside is encrypted; the
    rest is in the clear and bound to the ciphertext as associated data."""

    offer_digest: bytes
    public_key: bytes  # B = b·G(code)
    params: PairingParams
    check_value: bytes
    ciphertext: bytes  # nonce || AES-256-GCM(root key) || tag

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "kind": _ENVELOPE_KIND,
            "offer_digest": self.offer_digest.hex(),
            "public_key": self.public_key.hex(),
            "params": self.params.to_json(),
            "check_value": self.check_value.hex(),
            "ciphertext": base64.b64encode(self.ciphertext).decode(),
        }

    @classmethod
    def from_json(cls, body: Any) -> Envelope:
        if not isinstance(body, dict) or body.get("kind") != _ENVELOPE_KIND:
            raise BadRequest(
                en="This is not a Kura pairing envelope.",
                ja="Kura のペアリング封筒ではありません。",
            )
        try:
            if body["format"] != _FORMAT:
                raise ValueError("format")
            envelope = cls(
                offer_digest=bytes.fromhex(body["offer_digest"]),
                public_key=bytes.fromhex(body["public_key"]),
                params=PairingParams.from_json(body["params"]),
                check_value=bytes.fromhex(body["check_value"]),
                ciphertext=base64.b64decode(body["ciphertext"], validate=True),
            )
        except BadRequest:
            raise
        except (KeyError, TypeError, ValueError):
            raise _bad_field("envelope", "(body)") from None
        if len(envelope.public_key) != 32 or len(envelope.offer_digest) != 32:
            raise _bad_field("envelope", "public_key")
        return envelope


def make_envelope(
    root_key: bytes,
    offer: Offer,
    code: str,
    params: PairingParams,
    check_value: bytes,
    now: datetime,
) -> Envelope:
    """The root key for the standby that made ``offer`` and showed ``code``.

    Refuses an expired offer and a mistyped code (check digits) before any
    key material is touched. A code that passes its check digits but is not
    the standby's cannot be told apart here: the standby refuses the envelope.
    """
    offer.check_fresh(now)
    digits = normalise_code(code)
    if len(root_key) != ROOT_KEY_BYTES:
        raise ValueError(f"a root key is {ROOT_KEY_BYTES} bytes")
    private = X25519PrivateKey.generate()
    public = private.exchange(_generator(digits, offer.nonce, offer.appliance, offer.address))
    shared = _exchange(private, offer.public_key)
    unsealed = Envelope(offer.digest, public, params, check_value, b"")
    nonce = os.urandom(NONCE_BYTES)
    aead = AESGCM(_envelope_key(shared, offer, public))
    sealed = nonce + aead.encrypt(nonce, root_key, _associated_data(offer, unsealed))
    return Envelope(offer.digest, public, params, check_value, sealed)


def open_envelope(
    pending: PendingOffer, envelope: Envelope, now: datetime
) -> tuple[bytes, PairingParams]:
    """The root key and the parameters, if ``envelope`` answers ``pending``.

    PairingOfferExpired past the offer's expiry; PairingEnvelopeRejected if
    it was made for another offer, altered, or made with another code;
    PairingWrongRootKey if the key inside is not the one its check value
    names. The caller counts a rejection against ``attempts_left``.
    """
    offer = pending.offer
    if now >= offer.expires or pending.attempts_left <= 0:
        raise PairingOfferExpired()
    if not hmac.compare_digest(envelope.offer_digest, offer.digest):
        raise PairingEnvelopeRejected(
            en="This envelope was made for another pairing offer.",
            ja="この封筒は別のペアリング申し出に対して作られたものです。",
        )
    blob = envelope.ciphertext
    if len(blob) < NONCE_BYTES + 16:
        raise PairingEnvelopeRejected()
    private = X25519PrivateKey.from_private_bytes(pending.scalar)
    try:
        shared = _exchange(private, envelope.public_key)
        aead = AESGCM(_envelope_key(shared, offer, envelope.public_key))
        root_key = aead.decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], _associated_data(offer, envelope)
        )
    except (InvalidTag, PairingEnvelopeRejected):
        raise PairingEnvelopeRejected() from None
    if not check_root_key(root_key, envelope.check_value):
        raise PairingWrongRootKey()
    return root_key, envelope.params


def requires_approval() -> bool:
    """Whether a pairing made by a DA waits for an SA's approval: yes.

    Pairing hands over the root key, and a paired standby then receives the
    whole database by replication. A DA who could pair alone could pair a
    machine of their own and read every number, which DESIGN.md says a DA
    never does: so pairing is a two-person act, like an account that sees
    numbers. The DA, who stands between the two appliances, types the code;
    an SA approves the standby named in the offer before the envelope is made.
    """
    return True


# -- helpers ---------------------------------------------------------------------


def _generator(code: str, nonce: bytes, appliance: str, address: str) -> X25519PublicKey:
    """CPace's generator: the code and the session (nonce, standby's name and
    address) hashed to a point of Curve25519 with Elligator 2."""
    h = hashlib.sha512(
        _LABEL_GENERATOR
        + b"".join(_prefixed(part) for part in (code.encode(), nonce, appliance.encode(),
                                                address.encode()))
    ).digest()
    # 48 bytes reduced mod p: uniform enough (RFC 9380's hash_to_field, L = 48).
    u = _elligator2(int.from_bytes(h[:48], "big") % _P)
    return X25519PublicKey.from_public_bytes(u.to_bytes(32, "little"))


def _elligator2(r: int) -> int:
    """RFC 9380's map_to_curve_elligator2 for curve25519: the u-coordinate of a
    point on the curve (not its twist). Clamped X25519 scalars are multiples
    of 8, which clears the small-order part of the point."""
    tv1 = _Z * r * r % _P
    if tv1 == _P - 1:  # the exceptional case: 1 + tv1 would be 0
        tv1 = 0
    x1 = -_A * pow(1 + tv1, _P - 2, _P) % _P
    gx1 = (x1 * x1 * x1 + _A * x1 * x1 + x1) % _P
    return x1 if _is_square(gx1) else (-x1 - _A) % _P


def _is_square(a: int) -> bool:
    return a == 0 or pow(a, (_P - 1) // 2, _P) == 1


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # a low-order point: the shared value would be all zeros
        raise PairingEnvelopeRejected() from None


def _envelope_key(shared: bytes, offer: Offer, primary_public: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=offer.digest,
        info=_LABEL_KEY + offer.public_key + primary_public,
    ).derive(shared)


def _associated_data(offer: Offer, envelope: Envelope) -> bytes:
    """The transcript the ciphertext is bound to: every byte of the offer and
    of the envelope except the ciphertext itself."""
    transcript = {
        "offer": offer.to_json(),
        "public_key": envelope.public_key.hex(),
        "params": envelope.params.to_json(),
        "check_value": envelope.check_value.hex(),
    }
    return _LABEL_AD + b"\x00" + _canonical(transcript)


def _canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _prefixed(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def _time(value: Any, what: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise _bad_field(what, field) from None
    if parsed.tzinfo is None:
        raise _bad_field(what, field)
    return parsed


def _bad_field(what: str, field: str) -> BadRequest:
    return BadRequest(
        en=f"The pairing {what}'s field {field} is missing or not valid.",
        ja=f"ペアリングの{'申し出' if what == 'offer' else '封筒'}の項目 {field} が"
        "ないか、正しくありません。",
        field=field,
    )
