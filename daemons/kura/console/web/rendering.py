"""Pages are rendered by jinja2 from ``webui/templates``: one environment per
language, autoescaped, strict about undefined names, with ``_()``/
``ngettext()`` and the filters the templates share."""

from __future__ import annotations

import gettext
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

from kura.console.web import i18n
from kura.core.purposes import BY_CODE
from kura.core.roles import Role

TOKYO = ZoneInfo("Asia/Tokyo")


def local_time(value: str | datetime | None, with_seconds: bool = False) -> str:
    """An ISO time from the vault, shown in Japan's time (the appliance's users
    are there whatever the server's zone)."""
    if not value:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is not None:
        moment = moment.astimezone(TOKYO)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M")


def local_date(value: str | date | None) -> str:
    if not value:
        return ""
    if isinstance(value, str):
        return value[:10]
    return value.isoformat()


def make_environments(
    webui: Path, translations: dict[str, gettext.NullTranslations]
) -> dict[str, jinja2.Environment]:
    envs: dict[str, jinja2.Environment] = {}
    for language in i18n.LANGUAGES:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(webui / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            extensions=["jinja2.ext.i18n"],
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.install_gettext_translations(translations[language], newstyle=True)  # type: ignore[attr-defined]
        env.filters["time"] = local_time
        env.filters["date"] = local_date
        env.filters["role_label"] = lambda role, lang=language: _role_label(role, lang)
        env.filters["purpose_label"] = lambda code, lang=language: _purpose_label(code, lang)
        env.globals["lang"] = language
        env.globals["other_lang"] = "en" if language == "ja" else "ja"
        envs[language] = env
    return envs


def _role_label(role: str, language: str) -> str:
    try:
        r = Role(role)
    except ValueError:
        return role
    return r.label_ja if language == "ja" else r.label_en


def _purpose_label(code: str, language: str) -> str:
    purpose = BY_CODE.get(code)
    if purpose is None:
        return code
    return purpose.ja if language == "ja" else purpose.en


def render(env: jinja2.Environment, template: str, context: dict[str, Any]) -> str:
    return env.get_template(template).render(context)
