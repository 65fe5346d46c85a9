"""The audit chain: hash-linked entries, signed checkpoints, the export bundle.

What it offers
--------------
- ``entries``: ``make_entry`` builds the next ``AuditEntry`` after a
  ``ChainHead``; ``canonical``, ``canonical_json`` and ``chain_hash`` define
  what its hash covers; ``looks_like_my_number`` and
  ``refuse_numbers`` keep My Numbers out.
- ``checkpoints``: ``Checkpoint``, ``sign_checkpoint``, ``sign_export``,
  ``checkpoint_valid``, ``raw_public_key`` and ``public_key_fingerprint``.
- ``verification``: ``verify_chain`` walks entries and checkpoints and
  returns a ``VerifyReport``.
- ``integrity``: ``Fault``, ``chain_faults`` (every fault, not only the
  first), ``recorded_incidents`` and ``split_recorded`` (faults the chain
  itself records), ``extension_faults`` (a newer export extends an older
  one), and the signed ``TrustedHead`` the vault keeps outside the database.
- ``bundle``: ``bundle_lines``, ``bundle_bytes`` and ``write_bundle`` write an
  export bundle; ``read_bundle`` parses one; ``verify_bundle`` verifies one
  offline.

Everything is importable from here (``from kura.core import audit``, then
``audit.make_entry``); the modules are how the code is arranged.

Theory of operation
-------------------
Every entry's ``hash`` is ``sha256(prev_hash || canonical(fields))``, where
``prev_hash`` is the previous entry's hash (``GENESIS``, 32 zero bytes, for
entry 1) and ``canonical`` is deterministic JSON. Changing, deleting or
reordering a row therefore breaks the chain at that row.

A chain alone does not stop someone with database access from rewriting an
entry *and recomputing every later hash*. Checkpoints do: the vault regularly
signs ``(seq, hash, time)`` of the head with its Ed25519 key, and a rewritten
chain no longer matches the next signed checkpoint. The signed message is
domain-separated and says whether it is an ordinary checkpoint or the
*export* checkpoint made when a bundle is written, so an old ordinary
checkpoint cannot pose as the end of a truncated bundle.

The bundle is one UTF-8 JSON Lines file: a header, one line per entry, one
per checkpoint, then the export checkpoint. Every line must be byte-for-byte
the canonical JSON of what it holds, so no edit -- not even one that parses
to the same values, such as ``2.0`` spelled ``2e0`` -- passes unnoticed.
Verification streams the file and keeps only 32 bytes per entry.

Nothing here touches the database; the only I/O is reading and writing a
bundle file.
"""

from kura.core.audit.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    MAX_LINE_BYTES,
    Bundle,
    bundle_bytes,
    bundle_lines,
    read_bundle,
    verify_bundle,
    write_bundle,
)
from kura.core.audit.checkpoints import (
    CHECKPOINT_DOMAIN,
    Checkpoint,
    checkpoint_message,
    checkpoint_valid,
    public_key_fingerprint,
    raw_public_key,
    sign_checkpoint,
    sign_export,
)
from kura.core.audit.entries import (
    GENESIS,
    GENESIS_HEAD,
    OUTCOMES,
    ROLES,
    AuditEntry,
    ChainHead,
    canonical,
    canonical_json,
    chain_hash,
    format_time,
    looks_like_my_number,
    make_entry,
    parse_time,
    refuse_numbers,
)
from kura.core.audit.integrity import (
    ACKNOWLEDGED_ACTION,
    FAULT_ACTION,
    HEAD_DOMAIN,
    Fault,
    FaultScan,
    Incident,
    SweepBaseline,
    TrustedHead,
    chain_faults,
    covered_seq,
    extension_faults,
    head_bytes,
    head_valid,
    newly_altered,
    parse_head,
    recorded_incidents,
    sign_head,
    split_recorded,
    sweep_range,
)
from kura.core.audit.verification import VerifyReport, verify_chain

__all__ = [
    "ACKNOWLEDGED_ACTION",
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "CHECKPOINT_DOMAIN",
    "FAULT_ACTION",
    "GENESIS",
    "GENESIS_HEAD",
    "HEAD_DOMAIN",
    "MAX_LINE_BYTES",
    "OUTCOMES",
    "ROLES",
    "AuditEntry",
    "Bundle",
    "ChainHead",
    "Checkpoint",
    "Fault",
    "FaultScan",
    "Incident",
    "SweepBaseline",
    "TrustedHead",
    "VerifyReport",
    "bundle_bytes",
    "bundle_lines",
    "canonical",
    "canonical_json",
    "chain_faults",
    "chain_hash",
    "checkpoint_message",
    "checkpoint_valid",
    "covered_seq",
    "extension_faults",
    "format_time",
    "head_bytes",
    "head_valid",
    "looks_like_my_number",
    "make_entry",
    "newly_altered",
    "parse_head",
    "parse_time",
    "public_key_fingerprint",
    "raw_public_key",
    "read_bundle",
    "recorded_incidents",
    "refuse_numbers",
    "sign_checkpoint",
    "sign_export",
    "sign_head",
    "split_recorded",
    "sweep_range",
    "verify_bundle",
    "verify_chain",
    "write_bundle",
]
