"""What agents send and get, checked before anything reaches the vault.

Pure: values in, values or a ``WireError`` out. A request body or a stream
message with a bad shape is answered with an error that names what is wrong;
it never reaches the vault and never ends the connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kura.core.errors import BadRequest

MAX_HOSTNAME = 253
MAX_TOKEN = 200
MAX_CSR = 16 << 10


class WireError(BadRequest):
    """A request body or stream message that is not what the wire defines."""

    code = "bad_request"


@dataclass(frozen=True)
class Enrolment:
    token: str
    csr: str
    hostname: str


@dataclass(frozen=True)
class Heartbeat:
    report: dict[str, Any]


def _object(text: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise WireError("the body is not JSON", "本文が JSON ではありません。") from None
    if not isinstance(value, dict):
        raise WireError("the body must be a JSON object",
                        "本文は JSON オブジェクトにしてください。")
    return value


def _text(value: dict[str, Any], key: str, limit: int) -> str:
    field = value.get(key)
    if not isinstance(field, str) or not field:
        raise WireError(f"{key!r} must be a non-empty string",
                        f"{key} は空でない文字列にしてください。", field=key)
    if len(field) > limit:
        raise WireError(f"{key!r} is longer than {limit} characters",
                        f"{key} が長すぎます（{limit} 文字まで）。", field=key)
    return field


def enrolment(body: bytes) -> Enrolment:
    """``POST /kura-agent/v1/enrol``: ``{token, csr, hostname}``."""
    value = _object(body)
    return Enrolment(
        token=_text(value, "token", MAX_TOKEN),
        csr=_text(value, "csr", MAX_CSR),
        hostname=_text(value, "hostname", MAX_HOSTNAME),
    )


def report(value: dict[str, Any]) -> dict[str, Any]:
    """A heartbeat's report: an object (its fields are the vault's to judge)."""
    found = value.get("report")
    if not isinstance(found, dict):
        raise WireError("'report' must be a JSON object",
                        "report は JSON オブジェクトにしてください。", field="report")
    return found


def heartbeat_body(body: bytes) -> Heartbeat:
    """``POST /kura-agent/v1/heartbeat``: ``{report: {...}}``."""
    return Heartbeat(report=report(_object(body)))


def stream_message(text: str) -> Heartbeat:
    """A message an agent sends on the stream; only heartbeats are defined."""
    value = _object(text)
    if value.get("type") != "heartbeat":
        raise WireError("unknown message type (expected 'heartbeat')",
                        "不明なメッセージ種別です（heartbeat のみ）。", field="type")
    return Heartbeat(report=report(value))


def bundle_message(envelope: dict[str, Any]) -> dict[str, Any]:
    return {"type": "bundle", "bundle": envelope}


def ack_message(serial: int) -> dict[str, Any]:
    return {"type": "ack", "serial": serial}


def error_message(message: str) -> dict[str, Any]:
    return {"type": "error", "error": message}
