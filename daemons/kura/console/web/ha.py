"""The HA pair's page (DA; read-only for an SA), the planned switchover (DA),
and the pair's role changes on the DA's and SA's home pages.

Everything shown comes from the vault's ``ha.status`` (kura.vault.hastatus),
which keeps apart what the vault's own database says, what kura-hasync last
said (and whether it still speaks) and what the audit log recorded. The
switchover asks for a ticked confirmation: it interrupts every clerk's work
for a few seconds. The degraded banner on every page comes from ``whoami``
(kura.console.web.pages)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kura.console.vaultclient import VaultError
from kura.console.web.pages import (
    Visitor,
    call,
    form,
    gettext_for,
    message,
    page,
    redirect,
    render_page,
)
from kura.core.roles import Role

routes = web.RouteTableDef()

SA, DA = Role.SA, Role.DA
HOME_CHANGES = 5  # the newest role changes on the home page


def N_(text: str) -> str:
    """Marks a message id for the catalogs; translated where it is shown."""
    return text


# kura-hasync's roles (kura.core.ha.Role) and the vault's own.
ROLE_LABELS = {
    "single": N_("Single appliance"),
    "primary": N_("Primary"),
    "primary-degraded": N_("Primary, running alone (degraded)"),
    "standby": N_("Standby"),
    "fenced": N_("Fenced: cut off, the floating address given up"),
    "demoted": N_("Demoted: rejoining as the standby"),
    "maintenance": N_("Maintenance"),
    "unknown": N_("Unknown"),
}
ACTION_LABELS = {
    "ha.promoted": N_("Promoted to primary"),
    "ha.switchover": N_("Planned switchover"),
    "ha.paired": N_("Standby paired"),
    "ha.degraded": N_("Primary running without its standby (degraded)"),
    "ha.in_step": N_("Standby back in step"),
}
REFUSALS = {
    "single": N_("this appliance is not one of an HA pair"),
    "hasync": N_("kura-hasync is not running, so the pair's state is not known"),
    "not_primary": N_("this appliance is not the primary"),
    "degraded": N_("the pair is degraded: the standby may not hold every write"),
    "monitor": N_("the witness refused or did not answer"),
}


def _shown(request: web.Request, found: dict[str, Any]) -> dict[str, Any]:
    _ = gettext_for(request)

    def label(table: dict[str, str], key: Any) -> str:
        text = table.get(str(key))
        return _(text) if text else str(key)

    changes = []
    for change in found["role_changes"]:
        reason = change["detail"].get("reason")
        changes.append({
            **change,
            "label": label(ACTION_LABELS, change["action"]),
            "refusal": label(REFUSALS, reason) if reason else None,
        })
    report = found.get("hasync")
    switch = found.get("switchover") or {}
    return {
        **found,
        "role_label": label(ROLE_LABELS, found["role"]),
        "hasync_role_label": label(ROLE_LABELS, report["role"]) if report and
        "role" in report else None,
        "changes": changes,
        "refusal_label": label(REFUSALS, switch["refusal"]) if switch.get("refusal") else None,
    }


async def _page(request: web.Request, status: int = 200, error: str | None = None,
                ) -> web.Response:
    found = await call(request, "ha.status")
    return render_page(request, "ha/health.html", status=status, error=error,
                       ha=_shown(request, found))


@routes.get("/admin/ha")
@page(DA, SA)
async def health(request: web.Request) -> web.Response:
    return await _page(request)


@routes.post("/admin/ha/switchover")
@page(DA)
async def switchover(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    _ = gettext_for(request)
    if data.get("confirm") != "yes":
        return await _page(request, 422, _("Tick the box to confirm the switchover."))
    try:
        await call(request, "ha.switchover")
    except VaultError as exc:
        if exc.vault_code != "switchover_refused":
            raise
        return await _page(request, 409, message(request, exc))
    return redirect("/admin/ha", N_("The switchover has started: the standby becomes the "
                                    "primary within seconds. This console may not answer "
                                    "for a moment."))


async def home_changes(request: web.Request, who: Visitor | None) -> list[dict[str, Any]]:
    """The pair's newest role changes, for the DA's and SA's home pages."""
    if who is None or who.restriction or who.role not in (DA, SA):
        return []
    found = await call(request, "ha.status")
    return list(_shown(request, found)["changes"][:HOME_CHANGES])

