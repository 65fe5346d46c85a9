"""The building blocks of the vault operations' argument schemas (JSON
Schema): objects that refuse unknown fields, bounded text, ids, paging.
``kura.core.api`` and each area's core module (requests, exports, disposal,
reports) build their schemas from these; this module imports nothing of
theirs, so any of them can use it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Schema = dict[str, Any]


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None) -> Schema:
    """An object with these fields and no others."""
    props = {**required, **(optional or {})}
    return {
        "type": "object",
        "properties": props,
        "required": sorted(required),
        "additionalProperties": False,
    }


def text(max_length: int = 200, min_length: int = 0, pattern: str | None = None) -> Schema:
    s: Schema = {"type": "string", "maxLength": max_length, "minLength": min_length}
    if pattern:
        s["pattern"] = pattern
    return s


NUMBER_TEXT = text(40, 1)  # normalised and checked by the number rules, not the schema
UUID: Schema = {"type": "string", "format": "uuid", "pattern": "^[0-9a-f-]{36}$"}
DATE: Schema = {
    "type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$", "maxLength": 10,
}
TIME = text(40)  # an ISO 8601 date-time, parsed by the vault
USERNAME = text(64, 1, r"^[A-Za-z0-9._@-]+$")
ROLE: Schema = {"type": "string", "enum": ["MU", "MA", "SA", "DA"]}
KIND: Schema = {"type": "string", "enum": ["employee", "dependent", "payee"]}
PURPOSE = text(40, 1, r"^[a-z_]+$")
CODE = text(32, 1, r"^[A-Za-z0-9_-]+$")
PAGE: Schema = {"type": "integer", "minimum": 0, "maximum": 1_000_000}
LIMIT: Schema = {"type": "integer", "minimum": 1, "maximum": 500}
EMPTY = obj({})
