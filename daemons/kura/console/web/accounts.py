"""Two people for accounts that see numbers or approve: the SA's and MA's
approvals page, the holder's public activation page (/activate), and the
parts of the home page that show pending proposals and first sign-ins.

A half of an activation code is shown once, on the page that answers the
POST that made it (never in a redirect, a flash or a URL); pages are not
cached. The vault checks every rule again (kura.core.account_approvals)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kura.console.vaultclient import VaultError
from kura.console.web.pages import (
    Visitor,
    call,
    form,
    gettext_for,
    message,
    page,
    redirect,
    render_page,
    text_field,
)
from kura.core.roles import Role

routes = web.RouteTableDef()

SA, MA, DA = Role.SA, Role.MA, Role.DA
DECISION_ERRORS = ("conflict", "not_found", "permission_denied")


# --- the approvers' page -------------------------------------------------------------------


async def _approvals_page(
    request: web.Request, status: int = 200, error: str | None = None
) -> web.Response:
    pending = await call(request, "user.proposals")
    return render_page(
        request, "admin/approvals.html", status=status, error=error,
        proposals=pending["proposals"],
    )


@routes.get("/admin/approvals")
@page(SA, MA)
async def approvals(request: web.Request) -> web.Response:
    return await _approvals_page(request)


@routes.post("/admin/approvals/approve")
@page(SA, MA)
async def approve(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    try:
        done = await call(request, "user.approve", {"id": text_field(data, "id", 36)})
    except VaultError as exc:
        if exc.vault_code not in (*DECISION_ERRORS, "bad_request"):
            raise
        return await _approvals_page(request, exc.http_status, message(request, exc))
    if not done.get("half_b"):
        raise redirect("/admin/approvals", "The change was approved.")
    return render_page(request, "admin/approved.html", done=done)


@routes.post("/admin/approvals/reject")
@page(SA, MA)
async def reject(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    try:
        await call(request, "user.reject", {"id": text_field(data, "id", 36)})
    except VaultError as exc:
        if exc.vault_code not in (*DECISION_ERRORS, "bad_request"):
            raise
        return await _approvals_page(request, exc.http_status, message(request, exc))
    raise redirect("/admin/approvals", "The change was rejected.")


@routes.post("/admin/users/cancel")
@page(DA)
async def cancel(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    try:
        await call(request, "user.cancel", {"id": text_field(data, "id", 36)})
    except VaultError as exc:
        if exc.vault_code not in (*DECISION_ERRORS, "bad_request"):
            raise
        raise redirect("/admin/users", "The proposal could not be cancelled.") from exc
    raise redirect("/admin/users", "The proposal was cancelled.")


# --- the holder's activation ------------------------------------------------------------


@routes.get("/activate")
@page(anonymous=True)
async def activate_form(request: web.Request) -> web.Response:
    return render_page(request, "auth/activate.html", username="")


@routes.post("/activate")
@page(anonymous=True)
async def activate(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    _ = gettext_for(request)
    username = text_field(data, "username", 64)
    half_a, half_b = text_field(data, "half_a", 40), text_field(data, "half_b", 40)
    new, again = (data.get(n, "") for n in ("new", "again"))
    context: dict[str, Any] = {"username": username}
    if not (username and half_a and half_b and isinstance(new, str) and new):
        return render_page(
            request, "auth/activate.html", status=422,
            error=_("Fill in your user name, both halves of the code and a new password."),
            **context,
        )
    if new != again:
        return render_page(
            request, "auth/activate.html", status=422,
            error=_("The two new passwords are not the same."), **context,
        )
    try:
        await call(request, "user.activate", {"username": username, "half_a": half_a,
                                              "half_b": half_b, "new_password": new[:256]})
    except VaultError as exc:
        if exc.vault_code == "sealed":
            raise web.HTTPSeeOther("/sealed") from exc
        if exc.vault_code not in ("login_failed", "account_locked", "password_rejected",
                                  "bad_request", "permission_denied"):
            raise
        return render_page(
            request, "auth/activate.html", status=exc.http_status,
            error=message(request, exc), **context,
        )
    raise redirect("/login", "Your account is active. Sign in, then set up your second factor.")


# --- the home page's part -------------------------------------------------------------------


async def home_context(request: web.Request, who: Visitor | None) -> dict[str, Any]:
    """What the home page shows about accounts: proposals waiting for this
    approver, and (to an SA) new number handlers' first sign-ins."""
    if who is None or who.restriction:
        return {}
    found: dict[str, Any] = {}
    if who.role in (SA, MA):
        pending = await call(request, "user.proposals")
        found["pending_proposals"] = [
            p for p in pending["proposals"] if p["username"] != who.username
        ]
    if who.role == SA:
        found["first_logins"] = (await call(request, "user.first_logins", {"limit": 10}))[
            "first_logins"
        ]
    return found
