"""docs/threat-model.md is checked against the tests: every line of its
tables names the test that shows it, and every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "threat-model.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")

ACTORS = (
    "MU",
    "MA",
    "SA",
    "DA",
    "An employee with a link",
    "Root on the appliance's console",
    "The database owner",
    "A disk thief",
    "A thief of the whole appliance",
    "A network attacker",
)


def _rows() -> list[tuple[str, str]]:
    """(section, row) for every body row of every table under an actor's heading."""
    rows, section = [], ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("|") and section and not re.fullmatch(r"\|[\s|:-]+\|", line):
            if line.startswith("| Actor can") or line.startswith("| What"):
                continue  # the header
            rows.append((section, line))
    return rows


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_every_actor_of_the_issue_has_a_section() -> None:
    headings = [line[3:].strip() for line in DOC.read_text("utf-8").splitlines()
                if line.startswith("## ")]
    for actor in ACTORS:
        assert any(h.startswith(actor) for h in headings), f"no section for {actor!r}"


def test_every_line_of_the_tables_names_a_test() -> None:
    rows = _rows()
    assert len(rows) >= 3 * len(ACTORS), "the tables are shorter than the model"
    bare = [f"{section}: {row[:80]}" for section, row in rows if not REFERENCE.search(row)]
    assert not bare, "lines without a test:\n" + "\n".join(bare)


def test_every_named_test_exists() -> None:
    missing = []
    cache: dict[str, set[str]] = {}
    for _, row in _rows():
        for file, name in REFERENCE.findall(row):
            path = ROOT / file
            if not path.is_file():
                missing.append(f"{file} (no such file)")
                continue
            if file not in cache:
                cache[file] = _test_functions(path)
            if name not in cache[file]:
                missing.append(f"{file}::{name}")
    assert not missing, "the threat model names tests that do not exist:\n" + "\n".join(missing)
