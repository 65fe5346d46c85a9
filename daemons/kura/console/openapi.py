"""The OpenAPI 3.1 document of /api/v1, built from the route table and the
vault's own argument schemas (kura.core.api)."""

from __future__ import annotations

from typing import Any

from kura import __version__
from kura.console.api import ROUTES, Route, body_schema
from kura.core import api as schemas

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "message_en"],
            "properties": {
                "code": {"type": "string", "description": "stable, for programs"},
                "message": {"type": "string", "description": "Japanese"},
                "message_en": {"type": "string", "description": "English"},
                "detail": {"type": "object"},
            },
        }
    },
}

_STATUSES = {
    "400": "Malformed request (bad JSON, wrong types, unknown fields)",
    "401": "Not signed in, or the session expired",
    "403": "The role may not do this",
    "404": "No such record",
    "409": "Conflicts with stored data (e.g. the number belongs to someone else)",
    "413": "Body too large",
    "422": "Invalid number, purpose or password",
    "423": "Account locked",
    "503": "Vault sealed or unavailable",
}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.op.replace(".", "_")
        + ("_" + route.path.strip("/").split("/")[0] if route.op == "subject.register" else ""),
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {
            "200": {"description": "OK", "content": _success(route)},
            **{
                code: {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for code, text in _STATUSES.items()
            },
        },
    }
    if route.op == "subject.register":
        op["responses"]["201"] = {
            "description": "Created",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    if not route.public:
        op["security"] = [{"bearer": []}]
    # A parameter is described by the operation's own argument schema where it
    # has one, so the document promises exactly what the vault accepts.
    known = schemas.ARGS.get(route.op, {}).get("properties", {})
    params = [
        {"name": name, "in": "path", "required": True,
         "schema": known.get(name, {"type": "string"})}
        for name in route.path_params
    ]
    params += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": known.get(name)
            or (
                {"type": "integer", "minimum": 0}
                if kind is int
                else {"type": "string", "maxLength": 100}
            ),
        }
        for name, kind in route.query.items()
    ]
    if params:
        op["parameters"] = params
    if route.body:
        content: dict[str, Any] = {"application/json": {"schema": body_schema(route)}}
        if route.op == "subject.import":
            content["text/csv"] = {"schema": {"type": "string"}}
        op["requestBody"] = {"required": route.op != "keys.rotate", "content": content}
    return op


def _success(route: Route) -> dict[str, Any]:
    if route.respond == "export":
        return {"text/csv": {"schema": {"type": "string", "format": "binary"}}}
    if route.respond == "bundle":
        return {"application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}}
    return {"application/json": {"schema": {"type": "object"}}}


def document(prefix: str = "/api/v1") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(prefix + route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kura API",
            "version": __version__,
            "description": "My Number vault appliance. Errors carry a stable code and "
            "messages in Japanese (message) and English (message_en). Numbers travel only "
            "in request bodies.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
