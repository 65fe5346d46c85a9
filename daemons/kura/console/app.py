"""kura-console's aiohttp application: ``init_app(config)`` builds it; every
long-lived resource (the vault client) is owned by ``cleanup_ctx``."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from kura.config import Config
from kura.console import openapi
from kura.console import web as web_console
from kura.console.api import LIMITS, VAULT, add_routes, error_response
from kura.console.vaultclient import VaultClient
from kura.console.web import errors as web_errors
from kura.console.web import security
from kura.core.audit import looks_like_my_number
from kura.core.errors import BadRequest, KuraError, NotFound, PayloadTooLarge

log = logging.getLogger("kura.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def loggable_path(request: BaseRequest) -> str:
    """The path for a log line. A number pasted into the address bar must not
    reach the log, so a path that holds one is withheld whole; nor may an
    employee's one-time link, whose token is their credential."""
    path = request.rel_url.path
    if path.startswith("/r/"):
        return "/r/(token withheld)"
    return "(path withheld: looks like a number)" if looks_like_my_number(path) else path[:200]


class MethodNotAllowed(BadRequest):
    """The route exists but not with this HTTP method."""

    code = "method_not_allowed"
    status = 405
    ja = "このパスではそのメソッドは使えません。"
    en = "This path does not accept that method."


class AccessLogger(AbstractAccessLogger):
    """Method, path and status only: never a query string or a body."""

    def log(self, request: BaseRequest, response: StreamResponse, elapsed: float) -> None:
        self.logger.info(
            "%s %s %s %d %.1fms",
            request.remote,
            request.method,
            loggable_path(request),
            response.status,
            elapsed * 1000,
        )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await page_errors(request, handler)
    try:
        response = await handler(request)
    except KuraError as exc:
        response = error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(PayloadTooLarge())
    except web.HTTPNotFound:
        response = error_response(NotFound("no such API route", "そのような API はありません。"))
    except web.HTTPMethodNotAllowed as exc:
        response = error_response(MethodNotAllowed())
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    except web.HTTPException as exc:
        response = error_response(
            BadRequest(
                f"the request was refused ({exc.status} {exc.reason})",
                f"リクエストを処理できません（{exc.status}）。",
            )
        )
    except Exception:
        log.exception("internal error on %s %s", request.method, loggable_path(request))
        response = error_response(KuraError())
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def page_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The pages' errors become pages (kura.console.web.errors)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            response = await web_errors.handle(request, exc)
        else:
            for name, value in security.PAGE_HEADERS.items():
                exc.headers.setdefault(name, value)
            raise
    except Exception as exc:
        response = await web_errors.handle(request, exc)
    headers = security.PAGE_HEADERS
    if request.path.startswith("/static/") and response.status == 200:
        headers = {**headers, "Cache-Control": "max-age=3600"}
    for name, value in headers.items():
        response.headers.setdefault(name, value)
    return response


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


def init_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=config.console.max_import_bytes)
    app[LIMITS] = (config.console.max_body_bytes, config.console.max_import_bytes)

    async def vault_client(app: web.Application) -> AsyncIterator[None]:
        app[VAULT] = VaultClient(config.vault.socket, config.console.vault_connections)
        yield
        await app[VAULT].close()

    app.cleanup_ctx.append(vault_client)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    add_routes(app)
    web_console.setup(
        app,
        web_console.find_webui(config.console.webui),
        config.console.max_upload_bytes,
        config.console.cert,
    )
    return app


def access_log_args() -> dict[str, Any]:
    return {"access_log_class": AccessLogger, "access_log": logging.getLogger("kura.access")}


def now() -> float:
    return time.monotonic()
