"""Bounds on JSON that comes from outside (the console's API, the vault's
socket), checked before anything else reads it.

- **Nesting.** Python's JSON parser recurses once per level and raises
  RecursionError (a 500 and a traceback) somewhere past a thousand levels;
  jsonschema and the encoder recurse too. No Kura body needs more than a few
  levels, so the text is measured first (``check_nesting``), without
  recursion and at C speed: strings are cut out, only brackets are kept, and
  innermost pairs are peeled off one level at a time, at most ``MAX_DEPTH``
  times.
- **Lone surrogates.** JSON may spell ``"\\ud800"``, which Python decodes to a
  str that cannot be encoded as UTF-8 — it would fail later, in PostgreSQL, a
  log line or the reply. ``check_text`` refuses any string or key holding
  one, naming the field, never the value.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kura.core.errors import BadRequest

MAX_DEPTH = 32

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_STRING = re.compile(rb'"[^"]*"')
# How a surrogate can reach a parsed str: a \ud800-\udfff escape, or its
# UTF-8-like bytes (json.loads decodes bytes with "surrogatepass").
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_INNERMOST = re.compile(rb"\[\]|\{\}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")


class TooDeep(BadRequest):
    """JSON nested deeper than any Kura request needs."""

    ja = f"JSON の入れ子が深すぎます（{MAX_DEPTH} 段まで）。"
    en = f"The JSON is nested too deeply (at most {MAX_DEPTH} levels)."

    def __init__(self) -> None:
        super().__init__(reason="too_deep", max_depth=MAX_DEPTH)


class LoneSurrogate(BadRequest):
    """A string holds half of a UTF-16 surrogate pair: not Unicode text."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path}: contains a lone surrogate (\\ud800-\\udfff), which is not valid text.",
            f"{path}: 文字として正しくないコード（単独のサロゲート）が含まれています。",
            field=path,
            reason="surrogate",
        )


def check_nesting(raw: bytes | str, max_depth: int = MAX_DEPTH) -> None:
    """TooDeep if the JSON text ``raw`` nests arrays/objects deeper than ``max_depth``."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    # Drop escaped backslashes, then escaped quotes (so \\" ends no string),
    # keep only quotes and brackets, then drop the strings (so a bracket in a
    # name counts for nothing).
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = unescaped.translate(None, _NOT_STRUCTURE)
    brackets = _STRING.sub(b"", structure).replace(b'"', b"")
    for _ in range(max_depth):
        if not brackets:
            return
        peeled = _INNERMOST.sub(b"", brackets)
        if peeled == brackets:
            return  # unbalanced: not JSON, which the parser will say
        brackets = peeled
    if brackets:
        raise TooDeep()


def loads(raw: bytes | str) -> Any:
    """The JSON value in ``raw``, or BadRequest: not JSON, too deep, or a lone surrogate."""
    check_nesting(raw)
    try:
        value = json.loads(raw)
    except RecursionError:  # check_nesting makes this unreachable; kept as a guard
        raise TooDeep() from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(
            "the body is not valid JSON", "本文が正しい JSON ではありません。"
        ) from None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _MAYBE_SURROGATE.search(data):
        check_text(value)
    return value


def check_text(value: Any) -> None:
    """LoneSurrogate naming the field if any string or key in ``value`` holds
    one. The value is written out once by the C encoder (much faster than a
    walk in Python over a large import) and searched; only a hit is walked."""
    try:
        written = json.dumps(value, ensure_ascii=False, default=str)
    except RecursionError:
        raise TooDeep() from None
    if _SURROGATE.search(written):
        raise LoneSurrogate(_path_to_surrogate(value))


def _path_to_surrogate(value: Any) -> str:
    """Where the first lone surrogate in ``value`` is, as field names and
    indexes (keys that are not plain names show as "?")."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        item, parts = stack.pop()
        if isinstance(item, str) and _SURROGATE.search(item):
            return ".".join(parts) or "(body)"
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return ".".join((*parts, "(key)"))
                shown = key if isinstance(key, str) and _SAFE_KEY.fullmatch(key) else "?"
                stack.append((child, (*parts, shown)))
        elif isinstance(item, list | tuple):
            stack.extend((child, (*parts, str(i))) for i, child in enumerate(item))
    return "(body)"
