"""The web console: pages for clerks and administrators in Japanese (default)
and English, next to the JSON API. Templates, static files and message
catalogs live in ``webui/``; the views live in one module per area:

- ``auth``: sign-in, second factor, password change, sign-out, language,
  the sealed and unseal pages, the home page;
- ``collect``: registration requests, the employee's one-time link, the MA's queue;
- ``payees``: registering payees one by one or from CSV;
- ``use``: search, reveal for a purpose, exports and their approval;
- ``disposal``: retention rules, the due list, batches and disposal records;
- ``reports``: the audit log, access history, the handling-status ledger,
  the audit bundle;
- ``admin``: users, the security policy, the appliance's status;
- ``pairing``: pairing an HA standby (the DA proposes, an SA approves);
- ``ha``: the HA pair's page and its planned switchover;
- ``agents``: endpoint agents (SA): the list, enrolment tokens, the
  per-profile policy with its test cases.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from aiohttp import web

from kura.console.web import i18n
from kura.console.web.pages import WEB, WebState
from kura.console.web.rendering import make_environments

AREAS = (
    "auth", "collect", "payees", "use", "disposal", "reports", "admin", "integrity", "accounts",
    "pairing", "ha", "agents",
)


def find_webui(configured: Path | None) -> Path:
    """The webui folder: the configured one, the installed one, or the checkout's."""
    candidates = [configured] if configured else []
    candidates += [Path("/usr/share/kura/webui"), Path(__file__).resolve().parents[4] / "webui"]
    for candidate in candidates:
        if candidate and (candidate / "templates").is_dir():
            return candidate
    raise FileNotFoundError("webui folder not found (set [console] webui)")


def setup(
    app: web.Application, webui: Path, max_upload_bytes: int, cert_path: Path | None = None
) -> None:
    translations = i18n.load(webui / "locale")
    app[WEB] = WebState(
        webui=webui,
        translations=translations,
        envs=make_environments(webui, translations),
        max_upload_bytes=max_upload_bytes,
        cert_path=cert_path,
    )
    app.router.add_static("/static", webui / "static", append_version=False)
    for area in AREAS:
        module = importlib.import_module(f"kura.console.web.{area}")
        app.router.add_routes(module.routes)
        # An area with long-lived state (the payees' import jobs) owns it
        # through a cleanup_ctx of its own, added by its setup(app).
        if hasattr(module, "setup"):
            module.setup(app)
