"""The key hierarchy: everything the vault encrypts hangs from one root key.

Theory of operation
-------------------
The **root key** (32 random bytes) is made once, at first boot, and never
stored in the clear: a seal (custodian shares, systemd-creds, or the
development host seal; see ``kura.vault.sealing``) gives it back after boot.
Nothing is encrypted with the root key directly. HKDF-SHA256 derives from it,
each under its own ``info`` label:

- the *keyring key*, which wraps the KEKs;
- the *blind-index key*: HMAC-SHA256 over ``kind NUL normalised-number`` gives
  a 32-byte index for exact lookup and duplicate detection without decrypting;
- the *audit-signing seed*, the private half of an Ed25519 key that signs
  audit checkpoints (deterministic, so the public key is stable for the life
  of the root key);
- the *backup key*, for encrypted backups;
- the endpoint agents' keys (docs/agents.md): the *agent root CA* and the
  *issuing intermediate* (ECDSA P-256, the private scalar an HKDF output
  reduced into the curve's range) and the *bundle-signing key* (Ed25519).
  Derived, not stored, so both appliances of an HA pair hold the same ones;
- the *check value*, kept beside the seal so a candidate root key (from shares
  or a credential) can be verified without storing anything secret.

The **keyring** is a set of numbered KEKs (32 random bytes each), stored in the
database wrapped by the keyring key with AES-256-GCM; the associated data
binds the version, so a wrapped KEK moved to another version fails. One
version is *active*: new data keys are wrapped under it. ``rotate`` adds a
version and makes it active; old versions stay until every data key has been
rewrapped, which is cheap (32 bytes per record) and can run online.

Each record (a subject, a registration entry, a document) has its own **data
key** (32 random bytes) wrapped by a KEK; the associated data binds the record
id and the KEK version. The data key encrypts the record's **fields** with
AES-256-GCM; the associated data binds the record id and the field name, so a
ciphertext copied to another row or another column does not decrypt.

The field associated data deliberately does *not* contain the KEK version:
rotation rewraps the data key and leaves field ciphertexts untouched, so the
KEK version of a row changes while its fields do not. The KEK version is bound
one level up, in the wrapped data key, which a field cannot be opened without.
The field associated data carries the format label ``kura/v1/field`` instead,
so a future format can never be confused with this one.

Every AES-GCM output is ``nonce (12 random bytes) || ciphertext || tag``.
Random 96-bit nonces are safe well past any realistic count per key (the
usual bound is 2**32 messages per key; a data key encrypts a handful of
fields, a KEK wraps one data key per record).

This module is pure: bytes in, bytes out, no files, no clocks, no processes.
The objects that hold keys never print them.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kura.core.errors import DecryptionFailed, KuraError

ROOT_KEY_BYTES = 32
KEK_BYTES = 32
DATA_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
BLIND_INDEX_BYTES = 32
CHECK_VALUE_BYTES = 32

# HKDF info labels. Changing one changes every key derived under it.
_INFO_CHECK_VALUE = b"kura/v1/root-check-value"
_INFO_KEYRING = b"kura/v1/keyring"
_INFO_BLIND_INDEX = b"kura/v1/blind-index"
_INFO_AUDIT_SIGNING = b"kura/v1/audit-signing-seed"
_INFO_BACKUP = b"kura/v1/backup"
_INFO_AGENT_ROOT_CA = b"kura/v1/agent-root-ca"
_INFO_AGENT_ISSUING = b"kura/v1/agent-issuing-ca"
_INFO_BUNDLE_SIGNING = b"kura/v1/agent-bundle-signing-seed"

# The order of P-256's base point: a private scalar is 1 .. n-1.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Associated-data prefixes, one per kind of ciphertext.
_AD_KEK = b"kura/v1/kek\x00"
_AD_DATA_KEY = b"kura/v1/data-key\x00"
_AD_FIELD = b"kura/v1/field\x00"

_VERSION = struct.Struct(">I")
_LENGTH = struct.Struct(">H")


def new_root_key() -> bytes:
    """Make a fresh root key (first boot only)."""
    return os.urandom(ROOT_KEY_BYTES)


def root_check_value(root_key: bytes) -> bytes:
    """A one-way value that tells whether a candidate root key is the right one.

    Safe to store beside the seal: it is an HKDF output under its own label,
    so it reveals nothing about the root key or the keys derived from it.
    """
    return _derive(root_key, _INFO_CHECK_VALUE, CHECK_VALUE_BYTES)


def check_root_key(root_key: bytes, check_value: bytes) -> bool:
    """True if ``root_key`` is the key ``check_value`` was made from."""
    if len(root_key) != ROOT_KEY_BYTES:
        return False
    return hmac.compare_digest(root_check_value(root_key), check_value)


def bootstrap_keyring(root_key: bytes) -> tuple[int, bytes]:
    """The first keyring version for a new vault: ``(1, wrapped KEK)``."""
    return KeyHierarchy.unlock(root_key, {}, None).rotate()


class KeyHierarchy:
    """The unlocked keys below one root key. Build it with :meth:`unlock`.

    Holds the unwrapped KEKs (as ready AES-GCM objects), the blind-index HMAC,
    the audit-signing key and the backup key. The root key itself is not kept.
    """

    __slots__ = (
        "_active",
        "_agent_keys",
        "_audit_key",
        "_backup_key",
        "_blind",
        "_keks",
        "_keyring",
    )

    def __init__(
        self,
        keyring: AESGCM,
        keks: dict[int, AESGCM],
        active: int | None,
        blind_key: bytes,
        audit_key: Ed25519PrivateKey,
        backup_key: bytes,
        agent_keys: AgentKeys,
    ) -> None:
        self._keyring = keyring
        self._agent_keys = agent_keys
        self._keks = keks
        self._active = active
        # An HMAC object keyed once; .copy() per index skips the key schedule.
        self._blind = hmac.new(blind_key, digestmod="sha256")
        self._audit_key = audit_key
        self._backup_key = backup_key

    def __repr__(self) -> str:
        return f"<KeyHierarchy versions={sorted(self._keks)} active={self._active}>"

    @classmethod
    def unlock(
        cls,
        root_key: bytes,
        wrapped_versions: Mapping[int, bytes],
        active_version: int | None,
    ) -> KeyHierarchy:
        """Derive the fixed keys and unwrap every stored KEK version.

        ``active_version`` None means the keyring is empty (a new vault);
        :meth:`rotate` then makes version 1. Raises :class:`DecryptionFailed`
        if any version does not unwrap (wrong root key, or altered rows).
        """
        if active_version is None:
            if wrapped_versions:
                raise KuraError(en="The keyring has versions but none is marked active.")
        elif active_version not in wrapped_versions:
            raise KuraError(en=f"The active keyring version {active_version} is not stored.")
        keyring = AESGCM(_derive(root_key, _INFO_KEYRING, 32))
        keks: dict[int, AESGCM] = {}
        for version, wrapped in wrapped_versions.items():
            kek = _open(keyring, wrapped, _kek_ad(version), "keyring")
            if len(kek) != KEK_BYTES:
                raise DecryptionFailed(what="keyring")
            keks[version] = AESGCM(kek)
        seed = _derive(root_key, _INFO_AUDIT_SIGNING, 32)
        return cls(
            keyring=keyring,
            keks=keks,
            active=active_version,
            blind_key=_derive(root_key, _INFO_BLIND_INDEX, 32),
            audit_key=Ed25519PrivateKey.from_private_bytes(seed),
            backup_key=_derive(root_key, _INFO_BACKUP, 32),
            agent_keys=AgentKeys.derive(root_key),
        )

    # -- the keyring ---------------------------------------------------------

    @property
    def active_version(self) -> int:
        """The KEK version new data keys are wrapped under."""
        if self._active is None:
            raise KuraError(en="The keyring is empty; make its first version first.")
        return self._active

    @property
    def versions(self) -> frozenset[int]:
        """Every KEK version this hierarchy can open."""
        return frozenset(self._keks)

    def adopt(self, version: int, wrapped: bytes) -> None:
        """Open a KEK version made elsewhere: on an HA pair the primary
        rotates, and a standby promoted later must open the new version (and
        wrap new data keys under it). Raises :class:`DecryptionFailed` if it
        is not wrapped under this root key."""
        kek = _open(self._keyring, wrapped, _kek_ad(version), "keyring")
        if len(kek) != KEK_BYTES:
            raise DecryptionFailed(what="keyring")
        self._keks[version] = AESGCM(kek)
        if self._active is None or version > self._active:
            self._active = version

    def rotate(self) -> tuple[int, bytes]:
        """Make a new KEK version and make it active.

        Returns ``(version, wrapped)`` for the caller to store; until it is
        stored, data keys wrapped under it cannot be opened after a restart,
        so store it before using the hierarchy for new records.
        """
        version = max(self._keks, default=0) + 1
        kek = os.urandom(KEK_BYTES)
        wrapped = _seal(self._keyring, kek, _kek_ad(version))
        self._keks[version] = AESGCM(kek)
        self._active = version
        return version, wrapped

    # -- data keys -----------------------------------------------------------

    def new_data_key(self, subject_id: str) -> tuple[DataKey, int, bytes]:
        """A fresh data key for one record: ``(key, kek_version, wrapped)``."""
        version = self.active_version
        raw = os.urandom(DATA_KEY_BYTES)
        wrapped = _seal(self._keks[version], raw, _data_key_ad(subject_id, version))
        return DataKey(subject_id, version, AESGCM(raw)), version, wrapped

    def open_data_key(self, subject_id: str, kek_version: int, wrapped: bytes) -> DataKey:
        """Unwrap a record's data key. Raises :class:`DecryptionFailed`."""
        raw = self._unwrap(subject_id, kek_version, wrapped)
        return DataKey(subject_id, kek_version, AESGCM(raw))

    def rewrap_data_key(
        self, subject_id: str, kek_version: int, wrapped: bytes
    ) -> tuple[int, bytes]:
        """Move a wrapped data key to the active KEK version.

        The data key itself does not change, so the record's field ciphertexts
        stay valid. A key already under the active version is checked and
        returned as it is.
        """
        raw = self._unwrap(subject_id, kek_version, wrapped)
        active = self.active_version
        if kek_version == active:
            return active, wrapped
        return active, _seal(self._keks[active], raw, _data_key_ad(subject_id, active))

    def _unwrap(self, subject_id: str, kek_version: int, wrapped: bytes) -> bytes:
        kek = self._keks.get(kek_version)
        if kek is None:
            raise DecryptionFailed(
                en=f"Keyring version {kek_version} is not known to this vault.",
                what="data_key",
            )
        raw = _open(kek, wrapped, _data_key_ad(subject_id, kek_version), "data_key")
        if len(raw) != DATA_KEY_BYTES:
            raise DecryptionFailed(what="data_key")
        return raw

    # -- keys derived from the root ------------------------------------------

    def blind_index(self, kind: str, normalised: str) -> bytes:
        """HMAC-SHA256 of ``kind NUL normalised``: 32 bytes, stable for the
        life of the root key (KEK rotation does not change it)."""
        if not kind or "\x00" in kind:
            raise ValueError("blind index kind must be a non-empty name without NUL")
        mac = self._blind.copy()
        mac.update(kind.encode() + b"\x00" + normalised.encode())
        return mac.digest()

    @property
    def audit_signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that signs audit checkpoints."""
        return self._audit_key

    @property
    def audit_public_key(self) -> Ed25519PublicKey:
        """The public half, for verifying an exported audit bundle."""
        return self._audit_key.public_key()

    @property
    def backup_key(self) -> bytes:
        """32 bytes for encrypting backups."""
        return self._backup_key

    @property
    def agent_keys(self) -> AgentKeys:
        """The endpoint agents' CA, intermediate and bundle-signing keys."""
        return self._agent_keys


class AgentKeys:
    """The keys behind endpoint agents (kura.core.agentca, kura.core.bundle):
    the root CA an agent pins, the intermediate that signs its certificate
    and kura-policy's, and the key that signs every policy bundle."""

    __slots__ = ("bundle_signing", "issuing", "root_ca")

    def __init__(
        self,
        root_ca: ec.EllipticCurvePrivateKey,
        issuing: ec.EllipticCurvePrivateKey,
        bundle_signing: Ed25519PrivateKey,
    ) -> None:
        self.root_ca = root_ca
        self.issuing = issuing
        self.bundle_signing = bundle_signing

    def __repr__(self) -> str:
        return "<AgentKeys>"

    @classmethod
    def derive(cls, root_key: bytes) -> AgentKeys:
        return cls(
            root_ca=_p256_key(_derive(root_key, _INFO_AGENT_ROOT_CA, 48)),
            issuing=_p256_key(_derive(root_key, _INFO_AGENT_ISSUING, 48)),
            bundle_signing=Ed25519PrivateKey.from_private_bytes(
                _derive(root_key, _INFO_BUNDLE_SIGNING, 32)
            ),
        )


def _p256_key(material: bytes) -> ec.EllipticCurvePrivateKey:
    # 48 bytes (384 bits) reduced mod n-1: the bias against the 256-bit order
    # is below 2**-128, and +1 keeps the scalar off zero.
    scalar = int.from_bytes(material, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


class DataKey:
    """One record's unwrapped data key, ready to encrypt and decrypt fields."""

    __slots__ = ("_ad_prefix", "_aead", "kek_version", "subject_id")

    def __init__(self, subject_id: str, kek_version: int, aead: AESGCM) -> None:
        self.subject_id = subject_id
        self.kek_version = kek_version
        self._aead = aead
        self._ad_prefix = _AD_FIELD + _length_prefixed(subject_id)

    def __repr__(self) -> str:
        return f"<DataKey kek_version={self.kek_version}>"

    def encrypt(self, field: str, plaintext: bytes) -> bytes:
        """``nonce || ciphertext || tag``, bound to this record and ``field``."""
        return _seal(self._aead, plaintext, self._ad_prefix + field.encode())

    def decrypt(self, field: str, ciphertext: bytes) -> bytes:
        """The plaintext, or :class:`DecryptionFailed` if the ciphertext was
        altered, belongs to another record or field, or another key."""
        return _open(self._aead, ciphertext, self._ad_prefix + field.encode(), "field")


# -- helpers -----------------------------------------------------------------


def _derive(root_key: bytes, info: bytes, length: int) -> bytes:
    if len(root_key) != ROOT_KEY_BYTES:
        raise ValueError(f"a root key is {ROOT_KEY_BYTES} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(root_key)


def _kek_ad(version: int) -> bytes:
    return _AD_KEK + _VERSION.pack(version)


def _data_key_ad(subject_id: str, kek_version: int) -> bytes:
    return _AD_DATA_KEY + _VERSION.pack(kek_version) + _length_prefixed(subject_id)


def _length_prefixed(text: str) -> bytes:
    # A length prefix keeps ("ab", "c") and ("a", "bc") apart.
    raw = text.encode()
    if not raw:
        raise ValueError("a record id must not be empty")
    return _LENGTH.pack(len(raw)) + raw


def _seal(aead: AESGCM, plaintext: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + aead.encrypt(nonce, plaintext, ad)


def _open(aead: AESGCM, blob: bytes, ad: bytes, what: str) -> bytes:
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed(what=what)
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)
    except InvalidTag:
        raise DecryptionFailed(what=what) from None
