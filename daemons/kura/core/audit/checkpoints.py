"""Checkpoints: signed statements of the chain head, and key fingerprints.

A chain alone does not stop someone with database access from rewriting an
entry *and recomputing every later hash*. Checkpoints do: the vault regularly
signs ``(seq, hash, time)`` of the head with its Ed25519 key, and a rewritten
chain no longer matches the next signed checkpoint. The signed message is
domain-separated and says whether it is an ordinary checkpoint or the
*export* checkpoint made when a bundle is written, so an old ordinary
checkpoint cannot pose as the end of a truncated bundle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kura.core.audit.entries import canonical_json, format_time

CHECKPOINT_DOMAIN = b"kura-audit-checkpoint-v1\x00"


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that entry ``seq`` had ``hash`` at time ``at``.
    ``final`` marks the export checkpoint that closes a bundle."""

    seq: int
    hash: bytes
    at: datetime
    signature: bytes
    public_key: bytes
    final: bool = False


def checkpoint_message(seq: int, hash: bytes, at: datetime, *, final: bool = False) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    return CHECKPOINT_DOMAIN + canonical_json(
        {
            "seq": seq,
            "hash": hash.hex(),
            "at": format_time(at),
            "kind": "export" if final else "checkpoint",
        }
    )


def sign_checkpoint(
    key: Ed25519PrivateKey, seq: int, hash: bytes, at: datetime, *, final: bool = False
) -> Checkpoint:
    """Sign ``(seq, hash, at)``; ``final=True`` for the export checkpoint."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError("a checkpoint's seq must be a non-negative integer")
    if len(hash) != 32:
        raise ValueError("a checkpoint's hash must be 32 bytes")
    message = checkpoint_message(seq, hash, at, final=final)
    return Checkpoint(
        seq=seq,
        hash=bytes(hash),
        at=at,
        signature=key.sign(message),
        public_key=raw_public_key(key.public_key()),
        final=final,
    )


def sign_export(key: Ed25519PrivateKey, seq: int, hash: bytes, at: datetime) -> Checkpoint:
    """The export checkpoint that closes a bundle: ``sign_checkpoint(..., final=True)``
    over the last entry exported."""
    return sign_checkpoint(key, seq, hash, at, final=True)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def checkpoint_valid(cp: Checkpoint) -> bool:
    """True if the signature is good for the key the checkpoint names. Whether
    that key is the appliance's is the caller's question."""
    try:
        public = Ed25519PublicKey.from_public_bytes(cp.public_key)
        public.verify(cp.signature, checkpoint_message(cp.seq, cp.hash, cp.at, final=cp.final))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def public_key_fingerprint(public_key: bytes) -> str:
    """What an auditor compares with the appliance: ``sha256:`` and 64 hex digits."""
    return "sha256:" + hashlib.sha256(public_key).hexdigest()
