"""Administration: user accounts (DA), the security policy (SA) and its
changes that wait for a second person (approved by another SA, or by an MA
where there is one SA), and the appliance's status with the console's TLS
certificate (DA).

A one-time password is shown once, on the page that answers the POST that
made it (never in a redirect, a flash or a URL); pages are not cached. The
user an action aims at travels in the form body, not in the path. The vault
checks every rule again; the policy form is also checked here first, with
the same core rules, so a mistake is named next to its field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID
from multidict import MultiDictProxy

from kura.console.vaultclient import VaultError
from kura.console.web.pages import (
    WEB,
    Visitor,
    call,
    client_address,
    form,
    gettext_for,
    language,
    message,
    page,
    redirect,
    render_page,
    text_field,
    visitor,
)
from kura.core import accounts
from kura.core.errors import BadRequest, KuraError
from kura.core.reports import days_left
from kura.core.roles import Role

routes = web.RouteTableDef()

MA, SA, DA = Role.MA, Role.SA, Role.DA
ROLES: tuple[Role, ...] = (Role.MU, Role.MA, Role.SA, Role.DA)
CERT_WARNING_DAYS = 30
USER_ERRORS = ("conflict", "bad_request", "not_found")


def N_(text: str) -> str:
    """Marks a message id for the catalogs; translated where it is shown."""
    return text


# --- users -----------------------------------------------------------------------------


async def _users_page(
    request: web.Request, status: int = 200, error: str | None = None, **context: Any
) -> web.Response:
    listed = await call(request, "user.list")
    now = datetime.now(UTC)
    users = [
        {
            **u,
            "locked": bool(u.get("locked_until"))
            and datetime.fromisoformat(u["locked_until"]) > now,
        }
        for u in listed["users"]
    ]
    values: dict[str, Any] = {"new": {"username": "", "display_name": "", "role": "MU"}}
    values.update(context)
    pending = await call(request, "user.proposals")
    return render_page(
        request,
        "admin/users.html",
        status=status,
        error=error,
        users=users,
        roles=ROLES,
        proposals=pending["proposals"],
        **values,
    )


def _proposed(request: web.Request, done: dict[str, Any]) -> web.Response:
    """The answer to a change that waits for a second person (or the first
    SA's creation): half A of the activation code, shown only here."""
    return render_page(request, "admin/proposed.html", done=done)


@routes.get("/admin/users")
@page(DA)
async def users(request: web.Request) -> web.Response:
    return await _users_page(request)


def _role(data: MultiDictProxy[Any]) -> str:
    role = text_field(data, "role", 4)
    if role not in {r.value for r in ROLES}:
        raise BadRequest("Choose a role.", "ロールを選んでください。", field="role")
    return role


@routes.post("/admin/users")
@page(DA)
async def user_create(request: web.Request) -> web.Response:
    data = await form(request)
    typed = {
        "username": text_field(data, "username", 64),
        "display_name": text_field(data, "display_name", 100),
        "role": text_field(data, "role", 4),
    }
    _ = gettext_for(request)
    if not typed["username"]:
        return await _users_page(request, 422, _("Enter a user name."), new=typed, focus="username")
    args = {"username": typed["username"], "role": typed["role"]}
    if typed["display_name"]:
        args["display_name"] = typed["display_name"]
    try:
        _role(data)
        created = await call(request, "user.create", args)
    except (VaultError, BadRequest) as exc:
        code = exc.vault_code if isinstance(exc, VaultError) else exc.code
        if code not in USER_ERRORS:
            raise
        return await _users_page(request, _status(exc), _user_error(request, exc), new=typed)
    if "password" not in created:
        return _proposed(request, created)
    return render_page(
        request,
        "admin/one_time.html",
        username=created["username"],
        role=created["role"],
        password=created["password"],
        created=True,
    )


def _status(exc: KuraError) -> int:
    return exc.http_status if isinstance(exc, VaultError) else exc.status


def _user_error(request: web.Request, exc: KuraError) -> str:
    code = exc.vault_code if isinstance(exc, VaultError) else exc.code
    if code == "bad_request" and "username" in str(exc.detail.get("field", "")):
        _ = gettext_for(request)
        return str(_("A user name may use letters, digits and . _ @ - only (at most 64)."))
    return message(request, exc)


async def _update(request: web.Request, changes: dict[str, Any], done: str) -> web.StreamResponse:
    data = await form(request)
    username = text_field(data, "username", 64)
    try:
        if "role" in changes:
            changes = {"role": _role(data)}
        result = await call(request, "user.update", {"username": username, **changes})
    except (VaultError, BadRequest) as exc:
        code = exc.vault_code if isinstance(exc, VaultError) else exc.code
        if code not in USER_ERRORS:
            raise
        return await _users_page(request, _status(exc), _user_error(request, exc))
    if result.get("proposal"):
        return _proposed(request, result["proposal"])
    raise redirect("/admin/users", done)


@routes.post("/admin/users/role")
@page(DA)
async def user_role(request: web.Request) -> web.StreamResponse:
    return await _update(request, {"role": None}, N_("The role was changed."))


@routes.post("/admin/users/disable")
@page(DA)
async def user_disable(request: web.Request) -> web.StreamResponse:
    return await _update(request, {"disabled": True}, N_("The account was disabled."))


@routes.post("/admin/users/enable")
@page(DA)
async def user_enable(request: web.Request) -> web.StreamResponse:
    return await _update(request, {"disabled": False}, N_("The account was enabled."))


@routes.post("/admin/users/reset")
@page(DA)
async def user_reset(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    username = text_field(data, "username", 64)
    with_totp = text_field(data, "totp", 1) == "1"
    try:
        reset = await call(
            request, "user.reset_password", {"username": username, "reset_totp": with_totp}
        )
    except VaultError as exc:
        if exc.vault_code not in USER_ERRORS:
            raise
        return await _users_page(request, exc.http_status, _user_error(request, exc))
    if "password" not in reset:
        return _proposed(request, reset)
    return render_page(
        request,
        "admin/one_time.html",
        username=reset["username"],
        role="",
        password=reset["password"],
        created=False,
        totp_reset=with_totp,
    )


# --- the security policy -----------------------------------------------------------------

INT_FIELDS = tuple(
    name
    for name, schema in accounts.POLICY_SCHEMA["properties"].items()
    if schema.get("type") == "integer"
)


POLICY_LABELS: dict[str, str] = {
    "min_length": N_("Minimum length"),
    "required_classes": N_("Character classes required"),
    "history": N_("Earlier passwords that may not be reused"),
    "max_age_days": N_("Password lifetime (days)"),
    "lockout_threshold": N_("Failed sign-ins before lockout"),
    "lockout_base_seconds": N_("First lockout (seconds)"),
    "lockout_max_seconds": N_("Longest lockout (seconds)"),
    "mfa_roles": N_("Second factor (TOTP) required for"),
    "session_idle_minutes": N_("Idle timeout (minutes)"),
    "session_absolute_hours": N_("Longest session (hours)"),
    "export_approval_threshold": N_("Rows an export may have without approval"),
    "allowed_networks": N_("Allowed client networks"),
    "audit_checkpoint_seconds": N_("Audit chain signed every (seconds)"),
    "require_enrolled_terminal": N_("MU and MA only from enrolled, compliant clerk PCs"),
}


def _policy_form(policy: dict[str, Any]) -> dict[str, Any]:
    """The stored policy as the form shows it."""
    shown: dict[str, Any] = {name: str(policy[name]) for name in INT_FIELDS}
    shown["mfa_roles"] = list(policy["mfa_roles"])
    shown["allowed_networks"] = "\n".join(policy["allowed_networks"])
    shown["require_enrolled_terminal"] = bool(policy.get("require_enrolled_terminal", False))
    return shown


def _bounds() -> dict[str, tuple[int, int]]:
    props = accounts.POLICY_SCHEMA["properties"]
    return {name: (props[name]["minimum"], props[name]["maximum"]) for name in INT_FIELDS}


CHANGE_STATES: dict[str, str] = {
    "applied": N_("Applied at once (stronger)"),
    "approved": N_("Approved"),
    "rejected": N_("Rejected"),
    "cancelled": N_("Cancelled"),
}


def _shown_value(request: web.Request, name: str, value: Any) -> str:
    """A policy value as a person reads it."""
    _ = gettext_for(request)
    if name == "mfa_roles":
        english = language(request) == "en"
        labels = [Role(r).label_en if english else Role(r).label_ja for r in value]
        return ", ".join(labels) if labels else str(_("nobody"))
    if name == "allowed_networks":
        return ", ".join(value) if value else str(_("any network"))
    if name == "require_enrolled_terminal":
        return str(_("required") if value else _("not required"))
    if name == "max_age_days" and value == 0:
        return str(_("never expires"))
    return str(value)


def _shown_change(request: web.Request, change: dict[str, Any]) -> dict[str, Any]:
    _ = gettext_for(request)
    rows = [
        {
            "field": f["field"],
            "label": _(POLICY_LABELS.get(f["field"], f["field"])),
            "old": _shown_value(request, f["field"], f["old"]),
            "new": _shown_value(request, f["field"], f["new"]),
            "weaker": f["weaker"],
        }
        for f in change["fields"]
    ]
    state = CHANGE_STATES.get(change["state"])
    return {**change, "rows": rows, "state_label": _(state) if state else change["state"]}


async def policy_changes(request: web.Request) -> dict[str, Any] | None:
    """The policy change waiting for a second person and those of the last
    days, for the policy page and the admins' home page; None for an MU."""
    who = await visitor(request)
    if who is None or who.role not in (MA, SA, DA):
        return None
    found = await call(request, "policy.pending")
    pending = found["pending"]
    return {
        **found,
        "pending": _shown_change(request, pending) if pending else None,
        "recent": [_shown_change(request, c) for c in found["recent"]],
    }


def _policy_page(
    request: web.Request,
    shown: dict[str, Any] | None,
    changes: dict[str, Any] | None,
    status: int = 200,
    error: str | None = None,
    field: str = "",
) -> web.Response:
    return render_page(
        request,
        "admin/policy.html",
        status=status,
        error=error,
        policy=shown,
        changes=changes,
        bad_field=field,
        bounds=_bounds(),
        labels=POLICY_LABELS,
        roles=ROLES,
        address=client_address(request),
    )


@routes.get("/admin/policy")
@page(SA, MA)
async def policy(request: web.Request) -> web.Response:
    changes = await policy_changes(request)
    who = await visitor(request)
    assert who is not None and changes is not None
    if who.role == MA:
        # An MA decides on a weakening only where the appliance has one SA
        # (the vault checks it; the page offers the buttons only then). They
        # see the waiting change, never the form.
        return _policy_page(request, None, changes)
    current = await call(request, "policy.get")
    return _policy_page(request, _policy_form(current["policy"]), changes)


class PolicyFormError(BadRequest):
    """A policy field as typed cannot be read (not a whole number, …)."""

    code = "policy_form"
    status = 422


def _read_policy(data: MultiDictProxy[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what was typed, the policy to send). Raises PolicyFormError naming the
    field when a value cannot be read."""
    shown: dict[str, Any] = {name: text_field(data, name, 20) for name in INT_FIELDS}
    shown["mfa_roles"] = [r for r in data.getall("mfa_roles", []) if r in Role.__members__]
    shown["allowed_networks"] = text_field(data, "allowed_networks", 64 * 50)
    body: dict[str, Any] = {}
    for name in INT_FIELDS:
        value = shown[name].translate(_FULL_WIDTH_DIGITS)
        if not value.isdigit() or len(value) > 9:
            raise PolicyFormError(
                f"{name}: enter a whole number.", f"{name}: 整数で入力してください。", field=name
            )
        body[name] = int(value)
    body["mfa_roles"] = sorted(set(shown["mfa_roles"]))
    lines = [line.strip() for line in shown["allowed_networks"].splitlines() if line.strip()]
    if len(set(lines)) != len(lines):
        raise PolicyFormError(
            "allowed_networks: a network is listed twice.",
            "allowed_networks: 同じネットワークが2回書かれています。",
            field="allowed_networks",
        )
    body["allowed_networks"] = lines
    shown["require_enrolled_terminal"] = data.get("require_enrolled_terminal") == "on"
    body["require_enrolled_terminal"] = shown["require_enrolled_terminal"]
    return shown, body


_FULL_WIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")


@routes.post("/admin/policy")
@page(SA)
async def policy_save(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    _ = gettext_for(request)
    shown: dict[str, Any] = {}
    try:
        shown, body = _read_policy(data)
        # The vault's own rules, checked here first for a message by the field;
        # the vault checks them again.
        proposed = accounts.SecurityPolicy.from_json(body)
        if not accounts.is_allowed_address(proposed, client_address(request)):
            return _policy_page(
                request,
                shown,
                await policy_changes(request),
                422,
                _(
                    "These networks do not include your own address (%(address)s): saving "
                    "them would lock you out. Add your network first."
                )
                % {"address": client_address(request)},
                "allowed_networks",
            )
        result = await call(request, "policy.set", {"policy": body})
    except (VaultError, BadRequest) as exc:
        code = exc.vault_code if isinstance(exc, VaultError) else exc.code
        if code not in ("bad_request", "policy_form"):
            raise
        if not shown:
            shown = _policy_form((await call(request, "policy.get"))["policy"])
        field = str(exc.detail.get("field", "")).removeprefix("policy.").split(".")[0]
        text = message(request, exc)
        if field in POLICY_LABELS:
            # The rules name the setting by its key; the page calls it by its label.
            text = text.replace(f"{field}: ", f"{_(POLICY_LABELS[field])}: ", 1)
        return _policy_page(request, shown, await policy_changes(request), 422, text, field)
    if result["pending"] is None:
        raise redirect("/admin/policy", N_("The security policy was saved."))
    if result["applied"]:
        raise redirect(
            "/admin/policy",
            N_(
                "The stronger settings apply now. The weaker ones wait for a second "
                "person's approval (below)."
            ),
        )
    raise redirect(
        "/admin/policy",
        N_("Your change weakens the policy: it waits for a second person's approval (below)."),
    )


async def _change_decision(request: web.Request, op: str, flash: str) -> web.StreamResponse:
    data = await form(request)
    change_id = text_field(data, "change", 40)
    args: dict[str, Any] = {"id": change_id}
    if op != "policy.cancel":
        args["reason"] = text_field(data, "reason", 500)
    try:
        await call(request, op, args)
    except VaultError as exc:
        if exc.vault_code not in (
            "bad_request",
            "not_found",
            "policy_change_closed",
            "policy_change_stale",
            "not_eligible_approver",
        ):
            raise
        changes = await policy_changes(request)
        who: Visitor | None = await visitor(request)
        shown = None
        if who is not None and who.role == SA:
            shown = _policy_form((await call(request, "policy.get"))["policy"])
        return _policy_page(request, shown, changes, exc.vault_status, message(request, exc))
    raise redirect("/admin/policy", flash)


@routes.post("/admin/policy/approve")
@page(SA, MA)
async def policy_approve(request: web.Request) -> web.StreamResponse:
    return await _change_decision(
        request, "policy.approve", N_("The policy change was approved and applies now.")
    )


@routes.post("/admin/policy/reject")
@page(SA, MA)
async def policy_reject(request: web.Request) -> web.StreamResponse:
    return await _change_decision(
        request, "policy.reject", N_("The policy change was rejected; it never applies.")
    )


@routes.post("/admin/policy/cancel")
@page(SA)
async def policy_cancel(request: web.Request) -> web.StreamResponse:
    return await _change_decision(
        request, "policy.cancel", N_("Your policy change was cancelled.")
    )


# --- the appliance's status --------------------------------------------------------------


def served_certificate(request: web.Request) -> x509.Certificate | None:
    """The certificate this console serves (the file it loaded at start-up;
    a renewed file shows here once the console restarts and serves it).
    None without TLS or if the file cannot be read."""
    path = request.app[WEB].cert_path
    if path is None:
        return None
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def certificate_facts(cert: x509.Certificate, now: datetime) -> dict[str, Any]:
    expires = cert.not_valid_after_utc
    names: list[str] = []
    try:
        alt = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        names = [str(n.value) for n in alt]  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        pass
    left = days_left(expires, now)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "self_signed": cert.subject == cert.issuer,
        "names": names,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "expires": expires.isoformat(),
        "days_left": left,
        "state": "expired" if left < 0 else "soon" if left < CERT_WARNING_DAYS else "ok",
        "fingerprint": ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256())),
    }


def human_size(size: int | None) -> str:
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


@routes.get("/admin/status")
@page(DA)
async def status(request: web.Request) -> web.Response:
    found = await call(request, "appliance.status")
    cert = served_certificate(request)
    storage = []
    for s in found["storage"]:
        used = None
        if s["total"]:
            used = round(100 * (s["total"] - s["free"]) / s["total"])
        storage.append(
            {
                **s,
                "free_text": human_size(s["free"]),
                "total_text": human_size(s["total"]),
                "used_percent": used,
                "low": s["total"] is not None and s["free"] < s["total"] // 10,
            }
        )
    return render_page(
        request,
        "admin/status.html",
        appliance=found,
        storage=storage,
        database_size=human_size(found["database_size"]),
        certificate=certificate_facts(cert, datetime.now(UTC)) if cert else None,
        warning_days=CERT_WARNING_DAYS,
    )
