"""The shape of every vault operation's arguments, as JSON Schema.

The vault validates each call against these (strictly: unknown fields are an
error), and kura-console builds its OpenAPI document from the same schemas,
so the two can never disagree. Validation errors name the field and the rule,
never the value (a value may be a number)."""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator

from kura.core import jsonbounds
from kura.core.argschema import (
    CODE,
    EMPTY,
    KIND,
    LIMIT,
    NUMBER_TEXT,
    PAGE,
    PURPOSE,
    ROLE,
    USERNAME,
    UUID,
    Schema,
    obj,
    text,
)
from kura.core.errors import BadRequest

# Filled in below for the subject body (kura.core.subjects owns that schema).
ARGS: dict[str, Schema] = {
    "status": EMPTY,
    "unseal": obj({"share": text(2000, 1)}),
    "login": obj(
        {"username": text(64, 1), "password": text(256, 1)},
        {"totp": text(10, 0)},
    ),
    "logout": EMPTY,
    "whoami": EMPTY,
    "change_password": obj({"current_password": text(256, 1), "new_password": text(256, 1)}),
    "totp_begin": EMPTY,
    "totp_confirm": obj({"code": text(10, 1)}),
    "purposes": EMPTY,
    "preferences.set": obj({"language": {"type": "string", "enum": ["ja", "en"]}}),
    "bootstrap_da": obj({"username": USERNAME}, {"password": text(256, 1)}),
    "subject.lookup": obj({}, {"number": NUMBER_TEXT, "code": CODE, "kind": KIND}),
    "subject.get": obj({"id": UUID}),
    "subject.list": obj({}, {"kind": KIND, "query": text(100), "offset": PAGE, "limit": LIMIT}),
    "subject.reveal": obj({"id": UUID, "purpose": PURPOSE}),
    "subject.export": obj(
        {"purpose": PURPOSE},
        {
            "ids": {"type": "array", "items": UUID, "maxItems": 100_000},
            "kind": KIND,
            "encoding": {"type": "string", "enum": ["shift_jis", "utf-8-bom"]},
        },
    ),
    "subject.correct": obj(
        {"id": UUID},
        {
            "name": text(100, 1),
            "name_kana": text(100),
            "number": NUMBER_TEXT,
            "purposes": {"type": "array", "items": PURPOSE, "maxItems": 20},
            "retention_event": {"type": ["string", "null"], "format": "date", "maxLength": 10},
        },
    ),
    "policy.get": EMPTY,
    "audit.list": obj(
        {},
        {
            "actor": text(64),
            "action": text(64),
            "since": text(40),
            "until": text(40),
            "offset": PAGE,
            "limit": LIMIT,
        },
    ),
    "audit.export": EMPTY,
    "audit.acknowledge": EMPTY,
    "user.create": obj({"username": USERNAME, "role": ROLE}, {"display_name": text(100)}),
    "user.list": EMPTY,
    "user.update": obj(
        {"username": USERNAME},
        {"role": ROLE, "disabled": {"type": "boolean"}, "display_name": text(100)},
    ),
    "user.reset_password": obj({"username": USERNAME}, {"reset_totp": {"type": "boolean"}}),
    "user.proposals": obj(
        {}, {"state": {"type": "string", "enum": ["pending", "all"]}, "limit": LIMIT}
    ),
    "user.approve": obj({"id": UUID}),
    "user.reject": obj({"id": UUID}),
    "user.cancel": obj({"id": UUID}),
    "user.first_logins": obj({}, {"limit": LIMIT}),
    "user.activate": obj(
        {
            "username": text(64, 1),
            "half_a": text(40, 1),
            "half_b": text(40, 1),
            "new_password": text(256, 1),
        }
    ),
    "keys.rotate": obj({}, {"rewrap": {"type": "boolean"}}),
}


def register_schema(op: str, schema: Schema) -> None:
    ARGS[op] = schema
    _validators.pop(op, None)


_validators: dict[str, Draft202012Validator] = {}

_RULES_JA = {
    "required": "必須項目がありません",
    "additionalProperties": "未知の項目があります",
    "type": "型が正しくありません",
    "maxLength": "長すぎます",
    "minLength": "短すぎます（空です）",
    "pattern": "使えない文字が含まれています",
    "enum": "選択肢にない値です",
    "maximum": "大きすぎます",
    "minimum": "小さすぎます",
    "maxItems": "項目が多すぎます",
    "minItems": "項目が足りません",
}


def validate(op: str, args: Any) -> dict[str, Any]:
    """``args`` if it fits the operation's schema, else BadRequest naming the field."""
    schema = ARGS.get(op)
    if schema is None:
        raise BadRequest(f"unknown operation {op!r}", f"不明な操作です: {op}")
    validator = _validators.get(op)
    if validator is None:
        validator = _validators[op] = Draft202012Validator(schema)
    # Text that is not Unicode (a lone surrogate) is refused for every
    # operation, whatever its schema; the socket has already bounded nesting.
    jsonbounds.check_text(args)
    error = next(iter(sorted(validator.iter_errors(args), key=lambda e: list(e.path))), None)
    if error is None:
        return dict(args)
    path = ".".join(str(p) for p in error.absolute_path) or "(body)"
    rule = str(error.validator)
    if rule == "required" or rule == "additionalProperties":
        # These messages name fields, not values: safe to include.
        fields = _field_names(error.message)
        path = f"{path}: {fields}" if path != "(body)" else fields
    raise BadRequest(
        f"{path}: {rule} rule not met",
        f"{path}: {_RULES_JA.get(rule, '形式が正しくありません')}",
        field=path,
        rule=rule,
    )


def _field_names(message: str) -> str:
    # jsonschema says e.g. "'name' is a required property" or
    # "Additional properties are not allowed ('x', 'y' were unexpected)".
    names = [
        n for n in re.findall(r"'([A-Za-z0-9_.-]{1,64})'", message) if not re.search(r"\d{5}", n)
    ]
    return ", ".join(names) or "(field)"


def _register_domain_schemas() -> None:
    # The subject and policy bodies are owned by their own modules.
    from kura.core import agents, disposal, exports, pairing, policychange, reports, requests
    from kura.core.accounts import POLICY_SCHEMA
    from kura.core.subjects import SUBJECT_SCHEMA

    for area in (requests, exports, disposal, reports, policychange, pairing, agents):
        for op, schema in area.SCHEMAS.items():
            register_schema(op, schema)

    register_schema("subject.register", SUBJECT_SCHEMA)
    register_schema("policy.set", obj({"policy": POLICY_SCHEMA}))
    register_schema(
        "subject.import",
        obj(
            {},
            {
                # Rows are not checked here one by one: the importer checks each
                # and reports a bad one by its line instead of refusing them all.
                "rows": {"type": "array", "maxItems": 100_000},
                "csv": {"type": "string", "maxLength": 48 << 20},
                # The console parses an uploaded file itself and sends the rows:
                # how many it refused while reading, for the batch's audit entry.
                "refused_on_parse": {"type": "integer", "minimum": 0, "maximum": 100_000},
            },
        ),
    )


_register_domain_schemas()
