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
    for command in ("run", "image", "image-lock", "verify-repro", "dev", "test", "agent-deb"):
        assert f"  {command}" in out


def _who(op: str) -> str | None:
    """Who may call ``op``, as docs/api.md writes it; kura.core.roles is the source."""
    from kura.core.roles import ALLOWED, PUBLIC, SELF

    if op in PUBLIC:
        return "anyone"
    if op in SELF:
        return "any signed-in user"
    if op in ALLOWED:
        return ", ".join(sorted(role.value for role in ALLOWED[op]))
    return None


def test_the_api_page_names_exactly_the_roles_that_may_call_each_route() -> None:
    """Each route's "who" in docs/api.md is what roles.ALLOWED says of its vault
    operation; the message gives the line to write for each route that differs
    or is missing, and names the rows whose route is gone."""
    page = (TOP / "docs" / "api.md").read_text()
    rows: dict[str, str] = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            rows[f"{cells[0]} {cells[1].strip('`')}"] = cells[2]
    problems = []
    routes = set()
    for route in ROUTES:
        key = f"{route.method} /api/v1{route.path}"
        routes.add(key)
        who = _who(route.op)
        if who is None:
            problems.append(f"{key}: its operation {route.op} is in no table of kura/core/roles.py")
            continue
        written = rows.get(key)
        # The public routes may say why anyone may ("anyone (the link's token ...)").
        if written == who or (who == "anyone" and (written or "").startswith("anyone (")):
            continue
        doing = "add" if written is None else f"change the line (now {written!r}) to"
        problems.append(
            f"docs/api.md: {doing}: | {route.method} | `/api/v1{route.path}` | {who} |"
            f" {route.summary} |"
        )
    problems += [f"docs/api.md: remove the row of {key} (no such route)"
                 for key in rows if key not in routes]
    assert problems == [], "\n".join(problems)


def test_the_ha_page_states_every_timer_the_formation_changes() -> None:
    # docs/ha.md's table of pg_auto_failover's timers is what an operator reads
    # to know how the pair behaves; it must say what kura.core.formation applies.
    from kura.core.formation import TIMERS

    text = (TOP / "docs" / "ha.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = (cells[2], cells[3])
    for group in TIMERS.values():
        for name, timer in group.items():
            assert name in rows, f"docs/ha.md does not list {name}"
            ours, default = rows[name]
            digits = "".join(ch for ch in ours if ch.isdigit())
            assert digits == "".join(ch for ch in timer.value if ch.isdigit()), (name, ours)
            assert "".join(ch for ch in default if ch.isdigit()) == "".join(
                ch for ch in timer.default if ch.isdigit()), (name, default)
    listed = {n for n in rows if "." in n or n.endswith("_timeout")}
    assert listed <= {n for g in TIMERS.values() for n in g}, listed
