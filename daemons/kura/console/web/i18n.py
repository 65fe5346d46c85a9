"""Message catalogs: Japanese is the default, English the other choice.

Message ids in the templates and views are English; ``webui/locale/ja/
LC_MESSAGES/*.po`` hold the Japanese (one file per area of the console, so
each area owns its own). They are read with Babel at start-up and merged into
one gettext catalog per language; a message id translated differently in two
files is refused, so the console cannot say two things for one."""

from __future__ import annotations

import gettext
import io
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from kura.core.errors import KuraError

LANGUAGES = ("ja", "en")
DEFAULT_LANGUAGE = "ja"


class CatalogError(KuraError):
    """A message catalog cannot be read or contradicts another."""

    code = "catalog"
    status = 500
    ja = "メッセージカタログが正しくありません。"
    en = "A message catalog is wrong."


def pick_language(*choices: str | None) -> str:
    """The first of ``choices`` that the console speaks, else Japanese."""
    for choice in choices:
        if choice in LANGUAGES:
            return choice
    return DEFAULT_LANGUAGE


def read_catalog(folder: Path, language: str) -> Catalog:
    merged = Catalog(locale=language)
    for path in sorted((folder / language / "LC_MESSAGES").glob("*.po")):
        with path.open("rb") as f:
            try:
                part = read_po(f, locale=language)
            except Exception as exc:  # babel raises plain errors for broken files
                raise CatalogError(f"{path.name}: {exc}", f"{path.name}: {exc}") from exc
        for message in part:
            if not message.id:
                continue
            known = merged.get(message.id)
            if known is not None and known.string != message.string:
                raise CatalogError(
                    f"{path.name}: {message.id!r} is translated differently elsewhere",
                    f"{path.name}: {message.id!r} の訳が他のファイルと異なります。",
                )
            merged[message.id] = message
    return merged


def load(folder: Path) -> dict[str, gettext.NullTranslations]:
    """One translation object per language (English: the message ids)."""
    found: dict[str, gettext.NullTranslations] = {"en": gettext.NullTranslations()}
    for language in LANGUAGES:
        if language == "en":
            continue
        buffer = io.BytesIO()
        write_mo(buffer, read_catalog(folder, language))
        buffer.seek(0)
        found[language] = gettext.GNUTranslations(buffer)
    return found
