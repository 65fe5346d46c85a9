"""The documentation stays true: every API route is described in docs/api.md,
and the README shows the two commands."""

from __future__ import annotations

from pathlib import Path

from kura.console.api import ROUTES

TOP = Path(__file__).parent.parent


def test_every_route_is_in_the_api_page() -> None:
    page = (TOP / "docs" / "api.md").read_text()
    missing = [f"{r.method} /api/v1{r.path}" for r in ROUTES
               if f"| {r.method} | `/api/v1{r.path}` |" not in page]
    assert missing == []


def test_readme_opens_with_the_two_commands() -> None:
    readme = (TOP / "README.md").read_text()
    head = readme[: readme.index("## ")]
    assert "./build.sh run" in head and "./build.sh test" in head
    assert "build.sh test" in (TOP / ".ci" / "run").read_text()


def test_build_sh_help_lists_its_commands() -> None:
    import subprocess

    out = subprocess.run([str(TOP / "build.sh"), "help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("run", "image", "image-lock", "verify-repro", "dev", "test"):
        assert f"  {command}" in out
