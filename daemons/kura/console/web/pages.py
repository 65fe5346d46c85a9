"""What every page handler shares: who is visiting (their vault session),
calling the vault on their behalf, reading a form with its CSRF token, and
rendering a template in their language.

A handler is declared with ``@page(MU, MA)`` (the roles that may open it) or
``@page(anonymous=True)``; the decorator signs the visitor in or sends them to
the sign-in, password-change or second-factor page first. The vault checks
every operation again: the console only decides what to show."""

from __future__ import annotations

import gettext
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import jinja2
from aiohttp import web
from multidict import MultiDictProxy

from kura.console.api import VAULT
from kura.console.clientcert import terminal_serial
from kura.console.vaultclient import VaultError
from kura.console.web import i18n, security
from kura.console.web.menu import menu_for
from kura.console.web.rendering import render
from kura.core.errors import (
    BadRequest,
    KuraError,
    NotAuthenticated,
    PermissionDenied,
    Standby,
)
from kura.core.roles import Role

log = logging.getLogger("kura.console")

FLASH_COOKIE = "kura_flash"


class CsrfRejected(BadRequest):
    """A form arrived without the token the console gave it (or from another site)."""

    code = "csrf"
    status = 403
    ja = "フォームの有効期限が切れたか、別のサイトから送信されました。もう一度操作してください。"
    en = "The form expired or was sent from another site. Please try again."


@dataclass
class WebState:
    webui: Path
    translations: dict[str, gettext.NullTranslations]
    envs: dict[str, jinja2.Environment]
    login_limiter: security.RateLimiter = field(default_factory=security.RateLimiter)
    max_upload_bytes: int = 10 << 20
    cert_path: Path | None = None  # the TLS certificate, shown on the status page


WEB: web.AppKey[WebState] = web.AppKey("web", WebState)


@dataclass(frozen=True)
class Visitor:
    """The signed-in person, as the vault knows them."""

    username: str
    role: Role
    language: str
    display_name: str
    restriction: str | None  # "password" | "mfa" | None
    idle_minutes: int

    @classmethod
    def from_whoami(cls, me: dict[str, Any]) -> Visitor:
        restriction = None
        if me.get("must_change_password"):
            restriction = "password"
        elif me.get("mfa_setup_required"):
            restriction = "mfa"
        return cls(
            username=str(me["username"]),
            role=Role(me["role"]),
            language=i18n.pick_language(me.get("language")),
            display_name=str(me.get("display_name") or ""),
            restriction=restriction,
            idle_minutes=int(me.get("idle_minutes") or 15),
        )


def client_address(request: web.Request) -> str:
    return request.remote or ""


def session_token(request: web.Request) -> str | None:
    return request.cookies.get(security.SESSION_COOKIE) or None


async def call(request: web.Request, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call the vault as the visitor (their session, their address). What the
    vault says of its role (an HA pair's standby) is noted for the banner."""
    try:
        result = await request.app[VAULT].call(
            op,
            args or {},
            session_token(request),
            client_address(request),
            terminal_serial(request),
        )
    except VaultError as exc:
        if exc.vault_code == "standby":
            request["kura.standby"] = True
        raise
    if op == "status":
        request["kura.standby"] = result.get("role") == "standby"
    return result


async def visitor(request: web.Request) -> Visitor | None:
    """The signed-in visitor, or None (asked of the vault once per request)."""
    if "kura.visitor" in request:
        found: Visitor | None = request["kura.visitor"]
        return found
    found = None
    if session_token(request):
        try:
            me = await call(request, "whoami")
            found = Visitor.from_whoami(me)
            # The vault's audit-integrity state: a banner on every page (SA, DA).
            request["kura.audit_integrity"] = me.get("audit_integrity") == "fault"
            # An HA primary going on without its standby: a banner for everyone.
            request["kura.ha_degraded"] = bool(me.get("ha_degraded"))
        except VaultError as exc:
            # In the audit-integrity state the vault refuses a clerk even this:
            # no visitor, and their pages lead to the "stopped" page.
            request["kura.stopped"] = exc.vault_code == "audit_integrity"
            # A standby answers no one (not even "who am I"): no visitor, and
            # every page but the anonymous ones says where to go instead.
            # An MU's or MA's session away from its enrolled clerk PC (the
            # policy's require_enrolled_terminal): no visitor, so sign-in again,
            # where the vault says why.
            if exc.vault_code not in ("not_authenticated", "audit_integrity", "standby",
                                      "terminal_not_enrolled"):
                raise
            request["kura.session_expired"] = exc.detail.get("why") is not None
    request["kura.visitor"] = found
    return found


def language(request: web.Request) -> str:
    who: Visitor | None = request.get("kura.visitor")
    return i18n.pick_language(
        who.language if who else None, request.cookies.get(security.LANG_COOKIE)
    )


def gettext_for(request: web.Request) -> Callable[[str], str]:
    return request.app[WEB].translations[language(request)].gettext


def message(request: web.Request, exc: KuraError) -> str:
    """A user-facing error message in the visitor's language."""
    return exc.message_ja if language(request) == "ja" else exc.message_en


def render_page(
    request: web.Request, template: str, status: int = 200, **context: Any
) -> web.Response:
    state = request.app[WEB]
    lang = language(request)
    who: Visitor | None = request.get("kura.visitor")
    response = web.Response(status=status, content_type="text/html", charset="utf-8")
    secret = security.csrf_secret(request)
    if secret is None:
        secret = security.ensure_pre_cookie(request, response)
    flash = request.cookies.get(FLASH_COOKIE)
    if flash:
        response.del_cookie(FLASH_COOKIE, path="/")
    menu = menu_for(who.role if who and not who.restriction else None)
    # The deepest menu entry the page is under (/disposal/records, not /disposal).
    here = request.path
    under = [m.path for m in menu if here == m.path or here.startswith(m.path + "/")]
    values = {
        "visitor": who,
        "menu": menu,
        "active_path": max(under, key=len) if under else request.path,
        "csrf": security.csrf_token(secret),
        "csrf_field": security.CSRF_FIELD,
        "path": request.path,
        "flash": unquote(flash) if flash else None,
        "error": None,
        "audit_integrity_fault": request.get("kura.audit_integrity", False),
        "standby": request.get("kura.standby", False),
        "ha_degraded": request.get("kura.ha_degraded", False),
        **context,
    }
    response.text = render(state.envs[lang], template, values)
    return response


def redirect(location: str, flash: str | None = None) -> web.HTTPSeeOther:
    """A redirect after a successful POST; ``flash`` (an English message id,
    never data) is shown once on the next page."""
    response = web.HTTPSeeOther(location)
    if flash:
        security.set_cookie(response, FLASH_COOKIE, quote(flash), 60)
    return response


async def form(request: web.Request) -> MultiDictProxy[str | bytes | web.FileField]:
    """The posted form, once its CSRF token and origin are checked."""
    if not security.same_origin(request):
        raise CsrfRejected()
    try:
        data = await request.post()
    except (ValueError, AssertionError) as exc:
        # How aiohttp refuses a malformed body (a multipart without a boundary,
        # a part without a name, undecodable text): the sender's fault, not ours.
        raise BadRequest("the form is malformed", "フォームの形式が正しくありません。") from exc
    token = data.get(security.CSRF_FIELD)
    if not isinstance(token, str) or not security.csrf_valid(request, token):
        raise CsrfRejected()
    return data


def text_field(data: MultiDictProxy[Any], name: str, limit: int = 200) -> str:
    """A text field, stripped; over ``limit`` characters it is refused."""
    value = data.get(name, "")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be text", f"{name} は文字で入力してください。", field=name)
    value = value.strip()
    if len(value) > limit:
        raise BadRequest(
            f"{name} is too long (at most {limit} characters)",
            f"{name} が長すぎます（{limit}文字以内）。",
            field=name,
        )
    return value


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page(*roles: Role, anonymous: bool = False, restricted_ok: bool = False) -> Callable[
    [Handler], Handler
]:
    """Declare who may open a page: the listed roles (any signed-in role when
    none are listed), or anyone with ``anonymous=True``."""
    allowed = frozenset(roles)

    def wrap(handler: Handler) -> Handler:
        @wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            who = await visitor(request)
            if anonymous:
                return await handler(request)
            if who is None:
                if request.get("kura.stopped"):
                    raise web.HTTPSeeOther("/audit-integrity")
                if request.get("kura.standby"):
                    raise Standby()
                raise NotAuthenticated()
            if who.restriction and not restricted_ok:
                target = "/account/password" if who.restriction == "password" else "/account/totp"
                raise web.HTTPSeeOther(target)
            if allowed and who.role not in allowed:
                raise PermissionDenied()
            return await handler(request)

        guarded.kura_roles = allowed  # type: ignore[attr-defined]
        guarded.kura_anonymous = anonymous  # type: ignore[attr-defined]
        return guarded

    return wrap
