"""The JSON API under /api/v1, for integrations such as payroll software.

Every route is one row of ``ROUTES``: method, path, the vault operation it
calls, and where that operation's arguments come from (path, query, body).
The handlers, the OpenAPI document and the tests all read this one table.
Numbers only ever travel in request bodies, never in a path or a query."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kura.console.clientcert import terminal_serial
from kura.console.vaultclient import VaultClient, VaultError
from kura.core import api as schemas
from kura.core import jsonbounds
from kura.core.errors import BadRequest, KuraError, PayloadTooLarge

log = logging.getLogger("kura.console")

VAULT: web.AppKey[VaultClient] = web.AppKey("vault", VaultClient)
LIMITS: web.AppKey[tuple[int, int]] = web.AppKey("limits", tuple)

QueryType = type[int] | type[str]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    op: str
    summary: str
    body: bool = False
    query: dict[str, QueryType] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)  # arguments the route sets itself
    public: bool = False
    respond: str = "json"  # "json" | "export" | "bundle"
    tag: str = "subjects"

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/status",
        "status",
        "Appliance status: sealed or not, version",
        public=True,
        tag="vault",
    ),
    Route(
        "POST",
        "/unseal",
        "unseal",
        "Enter one custodian share (SLIP-39 mnemonic)",
        body=True,
        public=True,
        tag="vault",
    ),
    Route(
        "POST",
        "/session",
        "login",
        "Sign in; returns a bearer token",
        body=True,
        public=True,
        tag="session",
    ),
    Route("GET", "/session", "whoami", "Who the token belongs to", tag="session"),
    Route("DELETE", "/session", "logout", "Sign out", tag="session"),
    Route(
        "POST",
        "/session/password",
        "change_password",
        "Change your password",
        body=True,
        tag="session",
    ),
    Route(
        "POST", "/session/totp", "totp_begin", "Start enrolling a TOTP second factor", tag="session"
    ),
    Route(
        "POST",
        "/session/totp/confirm",
        "totp_confirm",
        "Confirm TOTP enrolment",
        body=True,
        tag="session",
    ),
    Route("GET", "/purposes", "purposes", "The purposes a number may be used for"),
    Route(
        "POST",
        "/payees",
        "subject.register",
        "Register an individual payee",
        body=True,
        fixed={"kind": "payee"},
    ),
    Route("POST", "/subjects", "subject.register", "Register a subject of any kind", body=True),
    Route(
        "GET",
        "/subjects",
        "subject.list",
        "List subjects (numbers masked)",
        query={"kind": str, "query": str, "offset": int, "limit": int},
    ),
    Route(
        "POST",
        "/subjects/lookup",
        "subject.lookup",
        "Find a subject by number or by code (number masked)",
        body=True,
    ),
    Route(
        "POST",
        "/subjects/import",
        "subject.import",
        "Bulk import: JSON rows, or a CSV file (UTF-8 or Shift_JIS) as text/csv",
        body=True,
    ),
    Route("GET", "/subjects/{id}", "subject.get", "One subject (number masked)"),
    Route(
        "PATCH", "/subjects/{id}", "subject.correct", "Correct a subject's record (MA)", body=True
    ),
    Route(
        "POST",
        "/subjects/{id}/reveal",
        "subject.reveal",
        "Reveal the number for a declared purpose (logged)",
        body=True,
    ),
    Route(
        "POST",
        "/exports",
        "subject.export",
        "Export numbers for forms as CSV (Shift_JIS or UTF-8 with BOM); logged as a take-out",
        body=True,
        respond="export",
    ),
    Route("GET", "/policy", "policy.get", "The security policy", tag="policy"),
    Route(
        "PUT",
        "/policy",
        "policy.set",
        "Change the security policy (SA): stronger settings apply at once, weaker ones wait "
        "for a second person",
        body=True,
        tag="policy",
    ),
    Route(
        "GET",
        "/policy/changes",
        "policy.pending",
        "Policy changes: the weakening that waits for a second person, and those of the "
        "last 7 days",
        tag="policy",
    ),
    Route(
        "POST",
        "/policy/changes/{id}/approve",
        "policy.approve",
        "Approve a waiting policy change (another SA; an MA where there is one SA)",
        body=True,
        tag="policy",
    ),
    Route(
        "POST",
        "/policy/changes/{id}/reject",
        "policy.reject",
        "Reject a waiting policy change (another SA; an MA where there is one SA)",
        body=True,
        tag="policy",
    ),
    Route(
        "POST",
        "/policy/changes/{id}/cancel",
        "policy.cancel",
        "Cancel your own waiting policy change (SA)",
        tag="policy",
    ),
    Route(
        "GET",
        "/audit",
        "audit.list",
        "Search the audit log",
        query={
            "actor": str,
            "action": str,
            "since": str,
            "until": str,
            "offset": int,
            "limit": int,
        },
        tag="audit",
    ),
    Route(
        "GET",
        "/audit/export",
        "audit.export",
        "Download a verifiable audit bundle",
        respond="bundle",
        tag="audit",
    ),
    Route("GET", "/users", "user.list", "List accounts (DA)", tag="users"),
    Route(
        "POST",
        "/users",
        "user.create",
        "Create an account: a DA at once with a one-time password; MU, MA or SA as a"
        " proposal with the activation code's first half (DA)",
        body=True,
        tag="users",
    ),
    Route(
        "PATCH",
        "/users/{username}",
        "user.update",
        "Change role, name or disable (DA)",
        body=True,
        tag="users",
    ),
    Route(
        "POST",
        "/users/{username}/password-reset",
        "user.reset_password",
        "Reset a password: a DA's at once; MU, MA or SA as a proposal (DA)",
        body=True,
        tag="users",
    ),
    Route(
        "GET",
        "/users/proposals",
        "user.proposals",
        "Account changes waiting for a second person (state=all: with decided ones)",
        query={"state": str, "limit": int},
        tag="users",
    ),
    Route(
        "POST",
        "/users/proposals/{id}/approve",
        "user.approve",
        "Approve a DA's account change; returns the activation code's second half once",
        tag="users",
    ),
    Route(
        "POST",
        "/users/proposals/{id}/reject",
        "user.reject",
        "Reject a DA's account change",
        tag="users",
    ),
    Route(
        "POST",
        "/users/proposals/{id}/cancel",
        "user.cancel",
        "Cancel one's own account change proposal (DA)",
        tag="users",
    ),
    Route(
        "GET",
        "/users/first-logins",
        "user.first_logins",
        "The latest first sign-ins of new number handlers (SA)",
        query={"limit": int},
        tag="users",
    ),
    Route(
        "POST",
        "/activation",
        "user.activate",
        "Activate one's account with both halves of the code and a new password",
        body=True,
        public=True,
        tag="users",
    ),
    Route("POST", "/keys/rotate", "keys.rotate", "Rotate the keyring (DA)", body=True, tag="vault"),
    # --- registration requests (collection from employees) ---
    Route(
        "POST",
        "/requests",
        "request.create",
        "Create a registration request; its one-time link's token is returned only now",
        body=True,
        tag="requests",
    ),
    Route(
        "GET",
        "/requests",
        "request.list",
        "List registration requests (no numbers); submitted ones first",
        query={"state": str, "id": str, "offset": int, "limit": int},
        tag="requests",
    ),
    Route(
        "GET",
        "/requests/{id}",
        "request.get",
        "A request with its entries (numbers in full, for review) and documents (MA; logged)",
        tag="requests",
    ),
    Route(
        "GET",
        "/requests/{id}/documents/{document_id}",
        "request.document",
        "One document of a request: content type and base64 content (MA; logged)",
        tag="requests",
    ),
    Route(
        "POST",
        "/requests/{id}/approve",
        "request.approve",
        "Approve a submitted request: the employee and dependents become subjects (MA)",
        tag="requests",
    ),
    Route(
        "POST",
        "/requests/{id}/reject",
        "request.reject",
        "Reject a submitted request with a reason (MA)",
        body=True,
        tag="requests",
    ),
    Route(
        "POST",
        "/requests/{id}/reissue",
        "request.reissue",
        "A new one-time link for a rejected or expired request (the old one dies)",
        body=True,
        tag="requests",
    ),
    Route(
        "POST",
        "/requests/{id}/cancel",
        "request.cancel",
        "Cancel a request that is not submitted (its link dies)",
        tag="requests",
    ),
    Route(
        "POST",
        "/registration/open",
        "request.open",
        "The employee's view of a one-time link (token in the body)",
        body=True,
        public=True,
        tag="requests",
    ),
    Route(
        "POST",
        "/registration/submit",
        "request.submit",
        "The employee submits numbers and documents through a one-time link",
        body=True,
        public=True,
        tag="requests",
    ),
    # --- export requests ---
    Route(
        "POST",
        "/export-requests",
        "export.prepare",
        "Prepare an export for a form: rows counted, characters Shift_JIS cannot carry"
        " reported; approved at once up to the SA's threshold, else waits for an MA",
        body=True,
        tag="exports",
    ),
    Route(
        "GET",
        "/export-requests",
        "export.list",
        "Export requests: an MU's own; for an MA all of them, pending first",
        query={"state": str, "offset": int, "limit": int},
        tag="exports",
    ),
    Route("GET", "/export-requests/{id}", "export.list", "One export request", tag="exports"),
    Route(
        "POST",
        "/export-requests/{id}/decision",
        "export.decide",
        "Approve or reject an export request (MA; not one's own)",
        body=True,
        tag="exports",
    ),
    Route(
        "POST",
        "/export-requests/{id}/download",
        "export.download",
        "Download an approved export once, as CSV; logged as a take-out (requester only)",
        respond="export",
        tag="exports",
    ),
    # --- retention and disposal ---
    Route(
        "GET",
        "/retention-rules",
        "retention.list",
        "The retention rules: basis, years kept, anchor",
        tag="disposal",
    ),
    Route(
        "PUT",
        "/retention-rules/{basis}",
        "retention.set",
        "Change a retention rule's years and anchor (SA)",
        body=True,
        tag="disposal",
    ),
    Route(
        "GET",
        "/disposals/due",
        "disposal.due",
        "Subjects due for disposal on a date (default today, Japan time); never a number",
        query={"as_of": str, "limit": int},
        tag="disposal",
    ),
    Route(
        "POST",
        "/disposals",
        "disposal.propose",
        "Propose a disposal batch of subjects that are due (their dependents come along)",
        body=True,
        tag="disposal",
    ),
    Route(
        "GET",
        "/disposals",
        "disposal.list",
        "Disposal batches: proposed, approved (executed) and rejected",
        query={"state": str, "offset": int, "limit": int},
        tag="disposal",
    ),
    Route(
        "POST",
        "/disposals/{id}/decision",
        "disposal.decide",
        "Approve (destroy the subjects' keys and data at once) or reject a batch (MA)",
        body=True,
        tag="disposal",
    ),
    Route(
        "GET",
        "/disposal-records",
        "disposal.records",
        "Disposal records (廃棄記録): date, kind, count, operator, approver",
        query={"since": str, "until": str, "offset": int, "limit": int},
        tag="disposal",
    ),
    # --- reports and the appliance ---
    Route(
        "GET",
        "/reports/access",
        "report.access",
        "Access history for a period: counts per user; one user's entries with user (SA)",
        query={"since": str, "until": str, "user": str, "offset": int, "limit": int},
        tag="reports",
    ),
    Route(
        "GET",
        "/reports/ledger",
        "report.ledger",
        "The handling-status ledger (取扱状況) for a period (SA, MA)",
        query={"since": str, "until": str},
        tag="reports",
    ),
    Route(
        "POST",
        "/audit/verify",
        "audit.verify",
        "Verify the whole audit chain and its signed checkpoints in the vault (SA)",
        tag="audit",
    ),
    Route(
        "POST",
        "/audit/acknowledge",
        "audit.acknowledge",
        "Acknowledge an audit-integrity incident; work resumes once an SA and a DA have",
        tag="audit",
    ),
    Route(
        "GET",
        "/appliance",
        "appliance.status",
        "The appliance: seal, keyring, database and storage, accounts, sessions (DA)",
        tag="vault",
    ),
    Route(
        "GET",
        "/ha",
        "ha.status",
        "The HA pair: roles, replication and lag, sync or degraded, witness, role changes",
        tag="vault",
    ),
    Route(
        "POST",
        "/ha/switchover",
        "ha.switchover",
        "Planned switchover: the standby becomes primary (DA; refused when degraded)",
        tag="vault",
    ),
    Route(
        "GET",
        "/agents/ca",
        "agents.ca",
        "The agent CA's certificate (PEM), its SHA-256 fingerprint and the bundle-signing key: "
        "public values",
        public=True,
        tag="agents",
    ),
    Route(
        "GET",
        "/agents",
        "agents.list",
        "Enrolled agents: profile, address, last seen, enforced and newest bundle serial, "
        "compliant or the problems (SA)",
        tag="agents",
    ),
    Route(
        "POST",
        "/agents/{agent_id}/revoke",
        "agents.revoke",
        "Revoke an agent's certificate with a reason (SA)",
        body=True,
        tag="agents",
    ),
    Route(
        "GET",
        "/agents/tokens",
        "agents.tokens",
        "Enrolment tokens of the last days: open, used, expired or withdrawn, never the token (SA)",
        tag="agents",
    ),
    Route(
        "POST",
        "/agents/tokens",
        "agents.token_create",
        "A one-time enrolment token for a profile, with the whole kura-agent enroll command; "
        "shown once (SA)",
        body=True,
        tag="agents",
    ),
    Route(
        "POST",
        "/agents/tokens/{token_id}/withdraw",
        "agents.token_withdraw",
        "Withdraw an open enrolment token (SA)",
        tag="agents",
    ),
    Route(
        "GET",
        "/agents/policy/{profile}",
        "agents.policy_get",
        "A profile's agent policy, its test cases, version and newest bundle serial (SA)",
        tag="agents",
    ),
    Route(
        "PUT",
        "/agents/policy/{profile}",
        "agents.policy_set",
        "Save a profile's agent policy and test cases at the version read; refused, with the "
        "failing cases, when a case fails (SA)",
        body=True,
        tag="agents",
    ),
    Route(
        "GET",
        "/alerts",
        "alerts.list",
        "Alerts of the endpoint agents: silent or not compliant, open and recently cleared "
        "(DA, SA)",
        tag="agents",
    ),
)


def session_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip() or None
    return request.cookies.get("kura_session")


def http_status(exc: KuraError) -> int:
    return exc.http_status if isinstance(exc, VaultError) else exc.status


def error_response(exc: KuraError) -> web.Response:
    return web.json_response({"error": exc.to_json()}, status=http_status(exc), dumps=_dumps)


def _safe_filename(name: Any, default: str) -> str:
    """A download's file name from the vault, if it is a plain one."""
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name):
        return name
    return default


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


async def _body(request: web.Request, route: Route) -> dict[str, Any]:
    max_body, max_import = request.app[LIMITS]
    limit = max_import if route.op == "subject.import" else max_body
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(limit=limit)
    raw = await request.read()
    if len(raw) > limit:
        raise PayloadTooLarge(limit=limit)
    if not raw:
        return {}
    ctype = request.content_type
    if route.op == "subject.import" and ctype in ("text/csv", "application/octet-stream"):
        return {"csv": base64.b64encode(raw).decode()}
    if ctype != "application/json":
        raise BadRequest(
            "send the body as application/json", "本文は application/json で送ってください。"
        )
    # Bounded before parsing: a deeply nested body or a lone surrogate is a
    # 400 here, not a RecursionError or an encoding error further on.
    body = jsonbounds.loads(raw)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", "本文は JSON オブジェクトです。")
    return body


def _query(request: web.Request, route: Route) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for name, value in request.query.items():
        kind = route.query.get(name)
        if kind is None:
            raise BadRequest(
                f"unknown query parameter {name[:32]!r}", f"不明なクエリパラメータです: {name[:32]}"
            )
        if kind is int:
            try:
                args[name] = int(value)
            except ValueError as exc:
                raise BadRequest(
                    f"{name} must be an integer", f"{name} は整数です。", field=name
                ) from exc
        else:
            args[name] = value
    return args


def make_handler(route: Route) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        token = session_token(request)
        # Without a token the vault still answers: "sealed" first, else 401.
        args: dict[str, Any] = {}
        if route.body:
            args.update(await _body(request, route))
        args.update(_query(request, route))
        for name in route.path_params:
            if name in args:
                raise BadRequest(f"{name} belongs in the path", f"{name} はパスで指定します。")
            args[name] = request.match_info[name]
        for name, value in route.fixed.items():
            if args.setdefault(name, value) != value:
                raise BadRequest(f"{name} must be {value}", f"{name} は {value} です。")
        client = request.remote or ""
        result = await request.app[VAULT].call(
            route.op,
            args,
            None if route.public and route.op != "unseal" else token,
            client,
            terminal_serial(request),
        )
        if route.respond == "export":
            charset = "Shift_JIS" if result["encoding"] == "shift_jis" else "UTF-8"
            return web.Response(
                body=base64.b64decode(result["content"]),
                headers={
                    "Content-Type": f"text/csv; charset={charset}",
                    "Content-Disposition": 'attachment; filename="{}"'.format(
                        _safe_filename(result.get("filename"), "kura-export.csv")
                    ),
                    "X-Kura-Rows": str(result["rows"]),
                    "X-Kura-SHA256": result["sha256"],
                    "X-Kura-Skipped": str(len(result["skipped_purpose"])),
                    "X-Kura-Unencodable": str(len(result["unencodable"])),
                },
            )
        if route.respond == "bundle":
            return web.Response(
                body=base64.b64decode(result["bundle"]),
                headers={
                    "Content-Type": "application/x-ndjson",
                    "Content-Disposition": 'attachment; filename="kura-audit.jsonl"',
                    "X-Kura-SHA256": result["sha256"],
                },
            )
        status = 201 if route.method == "POST" and result.get("created") is True else 200
        return web.json_response(result, status=status, dumps=_dumps)

    handler.__name__ = route.op.replace(".", "_")
    return handler


def add_routes(app: web.Application, prefix: str = "/api/v1") -> None:
    for route in ROUTES:
        app.router.add_route(route.method, prefix + route.path, make_handler(route))


def body_schema(route: Route) -> dict[str, Any]:
    """The request body's schema: the operation's arguments less what the path
    and the route itself supply."""
    schema = json.loads(json.dumps(schemas.ARGS[route.op]))
    for name in [*route.path_params, *route.fixed]:
        schema.get("properties", {}).pop(name, None)
        if name in schema.get("required", []):
            schema["required"].remove(name)
    return dict(schema)
