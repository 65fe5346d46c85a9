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


class MethodNotAllowed(KuraError):
    """The page exists, but not for this HTTP method (e.g. a POST to a page)."""

    code = "method_not_allowed"
    status = 405
    ja = "この操作はできません。"
    en = "This page does not accept that request."


class RequestRefused(KuraError):
    """aiohttp refused the request itself (malformed, a missing length …);
    the page keeps aiohttp's status."""

    code = "bad_request"
    status = 400
    ja = "リクエストを処理できません。"
    en = "The request could not be processed."


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


def error_page(request: web.Request, exc: KuraError, status: int | None = None) -> web.Response:
    if status is None:
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
    if code == "standby":
        request["kura.standby"] = True  # the banner says where to go instead
    if code == "sealed":
        return web.HTTPSeeOther("/sealed")
    if code == "audit_integrity" and request.path != "/audit-integrity":
        return web.HTTPSeeOther("/audit-integrity")
    if isinstance(exc, KuraError):
        return error_page(request, exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_page(request, PayloadTooLarge())
    if isinstance(exc, web.HTTPNotFound):
        return error_page(request, NotFound("There is no such page.", "そのページはありません。"))
    if isinstance(exc, web.HTTPMethodNotAllowed):
        response = error_page(request, MethodNotAllowed())
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return error_page(request, RequestRefused(), exc.status)
    log.error("internal error on a page: %s", type(exc).__name__, exc_info=exc)
    return error_page(request, KuraError())
