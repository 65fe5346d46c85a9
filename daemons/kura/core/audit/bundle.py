"""The export bundle: writing it, reading it, verifying it offline.

The bundle is one UTF-8 JSON Lines file: a header, one line per entry, one
per checkpoint, then the export checkpoint. Every line must be byte-for-byte
the canonical JSON of what it holds, so no edit -- not even one that parses
to the same values, such as ``2.0`` spelled ``2e0`` -- passes unnoticed.
Verification streams the file and keeps only 32 bytes per entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from kura.core.audit.checkpoints import Checkpoint
from kura.core.audit.entries import AuditEntry, canonical_json, format_time, parse_time
from kura.core.audit.verification import (
    VerifyReport,
    _bad_trusted_key,
    _Problem,
    _report,
    _Verifier,
)
from kura.core.errors import AuditBundleMalformed

BUNDLE_FORMAT = "kura-audit-bundle"
BUNDLE_VERSION = 1

# A generous bound so a hostile file cannot make the verifier read gigabytes
# into one string; real entry lines are a few hundred bytes.
MAX_LINE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Bundle:
    """A parsed export bundle."""

    appliance: str
    exported_at: datetime
    public_keys: tuple[bytes, ...]
    entries: tuple[AuditEntry, ...]
    checkpoints: tuple[Checkpoint, ...]
    final: Checkpoint
    sha256: str


def _entry_line(entry: AuditEntry) -> bytes:
    return canonical_json(
        {
            "type": "entry",
            "seq": entry.seq,
            "at": format_time(entry.at),
            "actor": entry.actor,
            "role": entry.role,
            "action": entry.action,
            "outcome": entry.outcome,
            "target": entry.target,
            "purpose": entry.purpose,
            "client": entry.client,
            "detail": entry.detail,
            "prev_hash": entry.prev_hash.hex(),
            "hash": entry.hash.hex(),
        }
    )


def _checkpoint_line(cp: Checkpoint) -> bytes:
    return canonical_json(
        {
            "type": "final" if cp.final else "checkpoint",
            "seq": cp.seq,
            "hash": cp.hash.hex(),
            "at": format_time(cp.at),
            "signature": cp.signature.hex(),
            "public_key": cp.public_key.hex(),
        }
    )


def bundle_lines(
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    final: Checkpoint,
    appliance: str,
) -> Iterator[bytes]:
    """The bundle's lines, each ending in ``\\n``; entries are streamed."""
    cps = list(checkpoints)
    if not final.final or any(cp.final for cp in cps):
        raise ValueError(
            "a bundle ends with exactly one export checkpoint: sign it with sign_export() "
            "(sign_checkpoint(..., final=True)), and only there"
        )
    keys = dict.fromkeys(cp.public_key for cp in [*cps, final])
    header = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "appliance": appliance,
        "exported_at": format_time(final.at),
        "public_keys": [k.hex() for k in keys],
    }
    yield canonical_json(header) + b"\n"
    for entry in entries:
        yield _entry_line(entry) + b"\n"
    for cp in cps:
        yield _checkpoint_line(cp) + b"\n"
    yield _checkpoint_line(final) + b"\n"


def bundle_bytes(
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    final: Checkpoint,
    appliance: str,
) -> bytes:
    """The whole bundle in memory, for handing over the API."""
    return b"".join(bundle_lines(entries, checkpoints, final, appliance))


def write_bundle(
    path: Path,
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    final: Checkpoint,
    appliance: str,
) -> str:
    """Write the bundle to a temporary name beside ``path`` and rename it into
    place; return the SHA-256 (hex) of the file."""
    digest = hashlib.sha256()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        with os.fdopen(fd, "wb") as out:
            for line in bundle_lines(entries, checkpoints, final, appliance):
                digest.update(line)
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


class _Malformed(Exception):
    def __init__(self, problem: _Problem) -> None:
        super().__init__(problem.en)
        self.problem = problem


def _malformed(line: int, ja: str, en: str, code: str = "malformed") -> _Malformed:
    return _Malformed(
        _Problem(
            code,
            f"バンドルの {line} 行目が不正です: {ja}",
            f"Line {line} of the bundle is malformed: {en}",
            line=line,
        )
    )


_HEADER_KEYS = frozenset(["format", "version", "appliance", "exported_at", "public_keys"])
_ENTRY_KEYS = frozenset(
    [
        "type",
        "seq",
        "at",
        "actor",
        "role",
        "action",
        "outcome",
        "target",
        "purpose",
        "client",
        "detail",
        "prev_hash",
        "hash",
    ]
)
_CHECKPOINT_KEYS = frozenset(["type", "seq", "hash", "at", "signature", "public_key"])
_HEX32 = re.compile(r"[0-9a-f]{64}")
_HEX64 = re.compile(r"[0-9a-f]{128}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


class _Line:
    """One parsed line, with helpers that turn a bad field into ``_Malformed``."""

    def __init__(self, number: int, obj: dict[str, Any]) -> None:
        self.number = number
        self.obj = obj

    def bad(self, ja: str, en: str) -> _Malformed:
        return _malformed(self.number, ja, en)

    def keys(self, expected: frozenset[str]) -> None:
        if self.obj.keys() != expected:
            raise self.bad("項目が足りないか、余分な項目があります", "fields are missing or extra")

    def text(self, name: str) -> str:
        value = self.obj[name]
        if not isinstance(value, str):
            raise self.bad(f"{name} が文字列ではありません", f"{name} is not a string")
        return value

    def seq(self, minimum: int) -> int:
        value: object = self.obj["seq"]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.bad("seq が正しくありません", "seq is not a valid sequence number")
        return value

    def time(self, name: str) -> datetime:
        try:
            return parse_time(self.text(name))
        except ValueError:
            raise self.bad(f"{name} が日時ではありません", f"{name} is not a valid time") from None

    def hex(self, name: str, pattern: re.Pattern[str]) -> bytes:
        value = self.text(name)
        if not pattern.fullmatch(value):
            raise self.bad(f"{name} の16進表記が正しくありません", f"{name} is not valid hex")
        return bytes.fromhex(value)


def _parse_line(number: int, raw: bytes) -> _Line:
    if len(raw) > MAX_LINE_BYTES:
        raise _malformed(number, "行が長すぎます", "the line is too long")
    if not raw.endswith(b"\n"):
        raise _malformed(
            number,
            "行が途中で切れています（バンドルが切り詰められています）",
            "the line is cut short (the bundle was truncated)",
            code="truncated",
        )
    body = raw[:-1]
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed(number, "JSON として読めません", "it is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _malformed(number, "JSON オブジェクトではありません", "it is not a JSON object")
    try:
        again = canonical_json(obj)
    except (TypeError, ValueError):
        again = b""
    if again != body:
        raise _malformed(
            number,
            "正規の形式で書かれていません（編集されています）",
            "it is not in canonical form (it was edited)",
        )
    return _Line(number, obj)


def _parse_header(line: _Line) -> tuple[str, datetime, tuple[bytes, ...]]:
    if line.obj.get("format") != BUNDLE_FORMAT:
        raise line.bad(
            "Kura 監査バンドルのヘッダーではありません", "it is not a Kura audit bundle header"
        )
    version = line.obj.get("version")
    if version != BUNDLE_VERSION or isinstance(version, bool):
        raise line.bad("対応していない版です", f"bundle version {version!r} is not supported")
    line.keys(_HEADER_KEYS)
    appliance = line.text("appliance")
    exported_at = line.time("exported_at")
    keys = line.obj["public_keys"]
    if not isinstance(keys, list) or not all(
        isinstance(k, str) and _HEX32.fullmatch(k) for k in keys
    ):
        raise line.bad("public_keys が正しくありません", "public_keys is not a list of keys")
    return appliance, exported_at, tuple(bytes.fromhex(k) for k in keys)


def _parse_entry(line: _Line) -> AuditEntry:
    line.keys(_ENTRY_KEYS)
    detail = line.obj["detail"]
    if not isinstance(detail, dict):
        raise line.bad("detail がオブジェクトではありません", "detail is not an object")
    return AuditEntry(
        seq=line.seq(1),
        at=line.time("at"),
        actor=line.text("actor"),
        role=line.text("role"),
        action=line.text("action"),
        outcome=line.text("outcome"),
        target=line.text("target"),
        purpose=line.text("purpose"),
        client=line.text("client"),
        detail=detail,
        prev_hash=line.hex("prev_hash", _HEX32),
        hash=line.hex("hash", _HEX32),
    )


def _parse_checkpoint(line: _Line, final: bool) -> Checkpoint:
    line.keys(_CHECKPOINT_KEYS)
    return Checkpoint(
        seq=line.seq(0),
        hash=line.hex("hash", _HEX32),
        at=line.time("at"),
        signature=line.hex("signature", _HEX64),
        public_key=line.hex("public_key", _HEX32),
        final=final,
    )


@dataclass
class _Header:
    appliance: str
    exported_at: datetime
    public_keys: tuple[bytes, ...]


@dataclass
class _Parsed:
    """What a pass over the file leaves besides the entries it handed on."""

    header: _Header | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    final: Checkpoint | None = None
    sha256: str = ""


def _raw_lines(stream: BinaryIO) -> Iterator[bytes]:
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        yield raw


def _records(stream: BinaryIO, parsed: _Parsed) -> Iterator[AuditEntry]:
    """Parse the bundle, yielding entries as they come and filling ``parsed``
    with the header, the checkpoints and the export checkpoint."""
    digest = hashlib.sha256()
    number = 0
    for number, raw in enumerate(_raw_lines(stream), start=1):
        digest.update(raw)
        line = _parse_line(number, raw)
        if number == 1:
            parsed.header = _Header(*_parse_header(line))
            continue
        if parsed.final is not None:
            raise line.bad(
                "エクスポート時のチェックポイントの後に行があります",
                "there is a line after the export checkpoint",
            )
        kind = line.obj.get("type")
        if kind == "entry":
            if parsed.checkpoints:
                raise line.bad(
                    "チェックポイントの後に記録があります", "an entry follows the checkpoints"
                )
            yield _parse_entry(line)
        elif kind in ("checkpoint", "final"):
            cp = _parse_checkpoint(line, final=kind == "final")
            if cp.final:
                parsed.final = cp
            else:
                parsed.checkpoints.append(cp)
        else:
            raise line.bad("不明な種類の行です", "the line is of an unknown type")
    if number == 0:
        raise _Malformed(
            _Problem("malformed", "バンドルが空です。", "The bundle is empty.", line=1)
        )
    if parsed.final is None:
        raise _Malformed(
            _Problem(
                "truncated",
                "エクスポート時のチェックポイントがありません（バンドルが切り詰められています）。",
                "The export checkpoint is missing: the bundle was cut short.",
                line=number + 1,
            )
        )
    parsed.sha256 = digest.hexdigest()


def _open(source: Path | bytes) -> BinaryIO:
    if isinstance(source, bytes | bytearray):
        return io.BytesIO(source)
    return Path(source).open("rb")


def read_bundle(source: Path | bytes) -> Bundle:
    """Parse a bundle (a file or its bytes) without judging the chain.
    Raises ``AuditBundleMalformed`` if it cannot be read or parsed."""
    parsed = _Parsed()
    try:
        with _open(source) as stream:
            entries = tuple(_records(stream, parsed))
    except _Malformed as e:
        raise AuditBundleMalformed(e.problem.en, e.problem.ja, line=e.problem.line) from None
    except OSError as e:
        raise AuditBundleMalformed(
            f"The bundle cannot be read: {e.strerror or e}",
            f"バンドルを読み込めません: {e.strerror or e}",
        ) from None
    assert parsed.header is not None and parsed.final is not None  # _records saw to it
    return Bundle(
        appliance=parsed.header.appliance,
        exported_at=parsed.header.exported_at,
        public_keys=parsed.header.public_keys,
        entries=entries,
        checkpoints=tuple(parsed.checkpoints),
        final=parsed.final,
        sha256=parsed.sha256,
    )


def verify_bundle(source: Path | bytes, trusted_public_key: bytes | None = None) -> VerifyReport:
    """Verify a bundle offline: its form, the chain, every checkpoint and the
    export checkpoint. Never raises for a bad or unreadable bundle; the report
    says what is wrong. Memory use is 32 bytes per entry."""
    if bad := _bad_trusted_key(trusted_public_key):
        return bad
    verifier = _Verifier(trusted_public_key)
    parsed = _Parsed()
    try:
        with _open(source) as stream:
            for entry in _records(stream, parsed):
                verifier.feed(entry)
    except _Malformed as e:
        return _report(
            e.problem,
            entries=verifier.walk.count,
            checkpoints=len(parsed.checkpoints),
            fingerprints=[],
        )
    except OSError as e:
        reason = e.strerror or str(e)
        return _report(
            _Problem(
                "unreadable",
                f"バンドルを読み込めません: {reason}",
                f"The bundle cannot be read: {reason}",
            ),
            entries=0,
            checkpoints=0,
            fingerprints=[],
        )
    assert parsed.header is not None and parsed.final is not None  # _records saw to it
    verifier.checkpoints = parsed.checkpoints
    problem, fingerprints = verifier.finish(parsed.final)
    if problem is None:
        signers = dict.fromkeys(cp.public_key for cp in [*parsed.checkpoints, parsed.final])
        if parsed.header.public_keys != tuple(signers):
            problem = _Problem(
                "malformed",
                "ヘッダーの公開鍵一覧が、チェックポイントに署名した鍵と一致しません。",
                "The header's list of public keys does not match the keys that signed "
                "the checkpoints.",
                line=1,
            )
        elif parsed.header.exported_at != parsed.final.at:
            problem = _Problem(
                "malformed",
                "ヘッダーのエクスポート日時が、エクスポート時のチェックポイントと一致しません。",
                "The header's export time does not match the export checkpoint.",
                line=1,
            )
    return _report(
        problem,
        entries=verifier.walk.count,
        checkpoints=len(parsed.checkpoints),
        fingerprints=fingerprints,
        last_seq=verifier.walk.last_good,
        exported_at=parsed.final.at,
        bundle_sha256=parsed.sha256,
        faults=verifier.all_faults(parsed.final),
        hashes=verifier.scan.hashes,
        altered=verifier.scan.altered,
    )
