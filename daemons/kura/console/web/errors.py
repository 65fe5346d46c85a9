"""Errors on the pages: every one becomes a page in the visitor's language,
with the vault's message and never a traceback or an internal detail.
Missing sign-in, a pending password change and a sealed vault send the
visitor where they can act instead."""

from __future__ import annotations

import logging
from urllib.parse import quote

from aiohttp import web

from kura.console.vaultclient import VaultError
from kura.console.web import pages
from kura.core.audit import looks_like_my_number
from kura.core.errors import KuraError, NotFound, PayloadTooLarge

log = logging.getLogger("kura.console")


def _login_redirect(request: web.Request) -> web.HTTPSeeOther:
    target = "/login"
    expired = request.get("kura.session_expired")
    nxt = request.path if request.method == "GET" and request.path != "/" else ""
    query = []
    if expired:
        query.append("expired=1")
    if nxt and not looks_like_my_number(nxt):
        query.append("next=" + quote(nxt, safe="/"))
    if query:
        target += "?" + "&".join(query)
    response = web.HTTPSeeOther(target)
    if request.cookies.get("kura_session"):
        response.del_cookie("kura_session", path="/")
    return response


def error_page(request: web.Request, exc: KuraError) -> web.Response:
    status = exc.http_status if isinstance(exc, VaultError) else exc.status
    return pages.render_page(
        request, "error.html", status=status, message=pages.message(request, exc),
        status_code=status,
    )


async def handle(request: web.Request, exc: BaseException) -> web.StreamResponse:
    """The page for ``exc``, raised while serving a page."""
    code = exc.vault_code if isinstance(exc, VaultError) else getattr(exc, "code", "")
    if code == "not_authenticated":
        request["kura.session_expired"] = request.get("kura.session_expired") or bool(
            isinstance(exc, KuraError) and exc.detail.get("why")
        )
        return _login_redirect(request)
    if code == "action_required" and isinstance(exc, KuraError):
        required = exc.detail.get("required")
        return web.HTTPSeeOther("/account/totp" if required == "mfa" else "/account/password")
    if code == "sealed":
        return web.HTTPSeeOther("/sealed")
    if isinstance(exc, KuraError):
        return error_page(request, exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_page(request, PayloadTooLarge())
    if isinstance(exc, web.HTTPNotFound):
        return error_page(request, NotFound("There is no such page.", "そのページはありません。"))
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return error_page(
            request, KuraError("This page does not accept that request.", "この操作はできません。")
        )
    log.error("internal error on a page: %s", type(exc).__name__, exc_info=exc)
    return error_page(request, KuraError())
