"""Every message the console shows has its Japanese translation: the
messages are extracted from the templates and the views with Babel (as a
translator's tool would) and each must be translated in webui/locale/ja."""

from __future__ import annotations

from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir

from kura.console.web import i18n

ROOT = Path(__file__).resolve().parent.parent
WEBUI = ROOT / "webui"
VIEWS = ROOT / "daemons" / "kura" / "console" / "web"
# _() and N_() mark messages; redirect(path, flash) takes a message id second.
KEYWORDS = {"_": None, "N_": None, "gettext": None, "ngettext": (1, 2), "redirect": (2,)}


def extracted() -> dict[str, str]:
    """Message id → where it was first found."""
    found: dict[str, str] = {}
    sources = [
        (WEBUI / "templates", [("**.html", "jinja2")], {"extensions": "jinja2.ext.i18n"}),
        (VIEWS, [("**.py", "python")], {}),
    ]
    for folder, method_map, options in sources:
        for filename, line, message, _comments, _context in extract_from_dir(
            str(folder), method_map, options_map={pattern: options for pattern, _ in method_map},
            keywords=KEYWORDS,
        ):
            ids = message if isinstance(message, tuple) else (message,)
            for msgid in ids:
                if msgid:
                    found.setdefault(msgid, f"{folder.name}/{filename}:{line}")
    return found


def test_messages_are_found_at_all() -> None:
    messages = extracted()
    assert "Sign in" in messages and "Audit log" in messages  # templates and menu.py
    assert "Your password was changed." in messages  # a flash message given to redirect()


def test_every_message_has_a_japanese_translation() -> None:
    catalog = i18n.read_catalog(WEBUI / "locale", "ja")
    missing = [
        f"{where}: {msgid!r}"
        for msgid, where in sorted(extracted().items(), key=lambda kv: kv[1])
        if not (catalog.get(msgid) and catalog[msgid].string)
    ]
    assert not missing, "untranslated messages:\n" + "\n".join(missing)


def test_catalogs_load_and_agree() -> None:
    translations = i18n.load(WEBUI / "locale")
    assert translations["ja"].gettext("Sign in") == "ログイン"
    assert translations["en"].gettext("Sign in") == "Sign in"


def test_a_message_translated_two_ways_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ja" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    for name, text in (("a.po", "ログイン"), ("b.po", "サインイン")):
        (folder / name).write_text(f'msgid ""\nmsgstr ""\n\nmsgid "Sign in"\nmsgstr "{text}"\n')
    with pytest.raises(i18n.CatalogError, match="translated differently"):
        i18n.read_catalog(tmp_path, "ja")
