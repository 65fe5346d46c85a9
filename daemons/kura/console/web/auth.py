"""Signing in and out, the second factor, password changes, the language,
the home page, and what everyone sees while the vault is sealed."""

from __future__ import annotations

import base64
import io
from typing import Any

import segno
from aiohttp import web

from kura.console.api import VAULT
from kura.console.clientcert import terminal_serial
from kura.console.vaultclient import VaultError
from kura.console.web import admin, agents, ha, i18n, security
from kura.console.web.accounts import home_context
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
from kura.core.errors import KuraError, VaultSealed
from kura.core.roles import Role

routes = web.RouteTableDef()


def qr_data_uri(text: str) -> str:
    """A QR code as an SVG data: URI (allowed by the page's CSP as an image)."""
    out = io.BytesIO()
    segno.make(text, error="m").save(out, kind="svg", scale=5, border=2)
    return "data:image/svg+xml;base64," + base64.b64encode(out.getvalue()).decode()


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


@routes.get("/")
@page()
async def home(request: web.Request) -> web.Response:
    status = await call(request, "status")
    if status["sealed"]:
        raise VaultSealed()  # → the sealed page, or the unseal page for a DA or SA
    # While the audit log's integrity is in question the vault answers little
    # but the incident: the banner says so, the work lists wait.
    stopped = status.get("audit_integrity", {}).get("state") == "fault"
    # The admins see the policy's changes and the accounts waiting for them.
    changes = None if stopped else await admin.policy_changes(request)
    who = await visitor(request)
    account_notes = {} if stopped else await home_context(request, who)
    # The DA and the SA see the HA pair's role changes.
    ha_changes = [] if stopped else await ha.home_changes(request, who)
    # The SA sees how many endpoint agents are silent or not compliant.
    agent_notes = {} if stopped else await agents.home_notes(request, who)
    return render_page(
        request, "home.html", vault=status, policy_changes=changes, account_notes=account_notes,
        ha_changes=ha_changes, agent_notes=agent_notes,
    )


@routes.get("/login")
@page(anonymous=True)
async def login_form(request: web.Request) -> web.StreamResponse:
    who = await visitor(request)
    if who is not None:
        raise web.HTTPSeeOther("/")
    status = await call(request, "status")
    if status["sealed"]:
        raise web.HTTPSeeOther("/sealed")
    notice = None
    if request.query.get("expired"):
        notice = gettext_for(request)("Your session ended. Please sign in again.")
    elif request.query.get("signed_out"):
        notice = gettext_for(request)("You have signed out.")
    return render_page(
        request,
        "auth/login.html",
        notice=notice,
        username="",
        next=_safe_next(request.query.get("next")),
        appliance=status.get("appliance", ""),
    )


@routes.post("/login")
@page(anonymous=True)
async def login(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    username = text_field(data, "username", 64)
    nxt = _safe_next(text_field(data, "next", 200))
    state = request.app[WEB]
    address = client_address(request)
    _ = gettext_for(request)
    context: dict[str, Any] = {"username": username, "next": nxt, "notice": None,
                               "appliance": ""}
    if not state.login_limiter.allow(address):
        response = render_page(
            request,
            "auth/login.html",
            status=429,
            error=_("Too many sign-in attempts from this computer. Wait a minute and try again."),
            **context,
        )
        response.headers["Retry-After"] = str(state.login_limiter.retry_after(address))
        return response
    password = data.get("password", "")
    code = text_field(data, "totp", 20)
    if not username or not isinstance(password, str) or not password:
        return render_page(
            request, "auth/login.html", status=422,
            error=_("Enter your user name and password."), **context,
        )
    args: dict[str, Any] = {"username": username, "password": password[:256]}
    if code:
        args["totp"] = code
    try:
        result = await call(request, "login", args)
    except VaultError as exc:
        if exc.vault_code == "sealed":
            raise web.HTTPSeeOther("/sealed") from exc
        if exc.vault_code not in ("login_failed", "account_locked", "permission_denied",
                                  "terminal_not_enrolled"):
            raise
        return render_page(
            request,
            "auth/login.html",
            status=exc.http_status,
            error=message(request, exc),
            totp_required=bool(exc.detail.get("totp_required")),
            **context,
        )
    response = web.HTTPSeeOther(nxt)
    if result["must_change_password"]:
        response = web.HTTPSeeOther("/account/password")
    elif result["mfa_setup_required"]:
        response = web.HTTPSeeOther("/account/totp")
    security.set_cookie(response, security.SESSION_COOKIE, result["token"], None)
    response.del_cookie(security.PRE_COOKIE, path="/")
    # The user's own language from now on, also on the pages before sign-in.
    me = await request.app[VAULT].call(
        "whoami", {}, result["token"], address, terminal_serial(request)
    )
    security.set_cookie(
        response, security.LANG_COOKIE, i18n.pick_language(me.get("language")), 365 * 86400
    )
    raise response


@routes.post("/logout")
@page(restricted_ok=True)
async def logout(request: web.Request) -> web.StreamResponse:
    await form(request)
    try:
        await call(request, "logout")
    except VaultError as exc:
        if exc.vault_code != "not_authenticated":
            raise
    response = web.HTTPSeeOther("/login?signed_out=1")
    response.del_cookie(security.SESSION_COOKIE, path="/")
    raise response


@routes.get("/account/password")
@page(restricted_ok=True)
async def password_form(request: web.Request) -> web.Response:
    policy_hint = await _policy_hint(request)
    return render_page(request, "auth/password.html", policy=policy_hint)


async def _policy_hint(request: web.Request) -> dict[str, Any]:
    # The rules are the SA's; the page only repeats the minimum length it was told.
    me = await visitor(request)
    return {"expired": bool(me and me.restriction == "password")}


@routes.post("/account/password")
@page(restricted_ok=True)
async def password_change(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    _ = gettext_for(request)
    current, new, again = (data.get(n, "") for n in ("current", "new", "again"))
    if not all(isinstance(v, str) and v for v in (current, new, again)):
        return render_page(
            request, "auth/password.html", status=422, policy=await _policy_hint(request),
            error=_("Fill in all three fields."),
        )
    if new != again:
        return render_page(
            request, "auth/password.html", status=422, policy=await _policy_hint(request),
            error=_("The two new passwords are not the same."),
        )
    try:
        result = await call(
            request, "change_password",
            {"current_password": str(current)[:256], "new_password": str(new)[:256]},
        )
    except VaultError as exc:
        if exc.vault_code not in ("password_rejected", "login_failed", "bad_request"):
            raise
        return render_page(
            request, "auth/password.html", status=exc.http_status,
            policy=await _policy_hint(request), error=message(request, exc),
        )
    if result.get("mfa_setup_required"):
        raise redirect("/account/totp", "Your password was changed.")
    raise redirect("/", "Your password was changed.")


@routes.get("/account/totp")
@page(restricted_ok=True)
async def totp_form(request: web.Request) -> web.Response:
    try:
        begun = await call(request, "totp_begin")
    except VaultError as exc:
        if exc.vault_code != "conflict":
            raise
        return render_page(request, "auth/totp.html", enrolled=True, qr="", secret="")
    return render_page(
        request, "auth/totp.html", enrolled=False, qr=qr_data_uri(begun["uri"]),
        secret=begun["secret"],
    )


@routes.post("/account/totp")
@page(restricted_ok=True)
async def totp_confirm(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    code = text_field(data, "code", 20)
    try:
        await call(request, "totp_confirm", {"code": code or "-"})
    except VaultError as exc:
        if exc.vault_code not in ("login_failed", "conflict", "bad_request"):
            raise
        begun = await call(request, "totp_begin")
        return render_page(
            request, "auth/totp.html", status=422, enrolled=False,
            qr=qr_data_uri(begun["uri"]), secret=begun["secret"], error=message(request, exc),
        )
    raise redirect("/", "The second factor is set up.")


@routes.get("/account")
@page(restricted_ok=True)
async def account(request: web.Request) -> web.Response:
    return render_page(request, "auth/account.html")


@routes.post("/language")
@page(anonymous=True)
async def set_language(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    chosen = i18n.pick_language(text_field(data, "language", 5))
    back = _safe_next(text_field(data, "next", 200))
    who: Visitor | None = await visitor(request)
    if who is not None:
        await call(request, "preferences.set", {"language": chosen})
    response = web.HTTPSeeOther(back)
    security.set_cookie(response, security.LANG_COOKIE, chosen, 365 * 86400)
    raise response


# --- the sealed vault ---------------------------------------------------------


@routes.get("/sealed")
@page(anonymous=True)
async def sealed(request: web.Request) -> web.StreamResponse:
    status = await call(request, "status")
    if not status["sealed"]:
        raise web.HTTPSeeOther("/")
    who = await visitor(request)
    if who is not None and who.role in (Role.DA, Role.SA) and status.get("seal_mode") == "shamir":
        raise web.HTTPSeeOther("/unseal")
    return render_page(request, "auth/sealed.html", vault=status)


@routes.get("/unseal")
@page(anonymous=True)
async def unseal_form(request: web.Request) -> web.StreamResponse:
    status = await call(request, "status")
    if not status["sealed"]:
        raise redirect("/", "The vault is open.")
    return render_page(request, "auth/unseal.html", vault=status)


@routes.post("/unseal")
@page(anonymous=True)
async def unseal(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    share = text_field(data, "share", 2000)
    try:
        status = await call(request, "unseal", {"share": " ".join(share.split()) or "-"})
    except KuraError as exc:
        code = exc.vault_code if isinstance(exc, VaultError) else exc.code
        if code not in ("unseal_failed", "bad_request"):
            raise
        status = await call(request, "status")
        return render_page(
            request, "auth/unseal.html", status=422, vault=status, error=message(request, exc),
        )
    if not status["sealed"]:
        raise redirect("/login", "The vault is open.")
    raise redirect("/unseal", "The share was accepted.")


__all__ = ["language", "qr_data_uri", "routes"]
