"""The audit-integrity state (kura.vault.integrity): the page that says why
the vault has stopped, and where an SA and a DA acknowledge the incident.

While the vault is in that state every other page of a clerk ends here (the
vault answers ``audit_integrity``); an SA or a DA sees a banner on every page
(base.html includes audit/integrity_banner.html) that leads here."""

from __future__ import annotations

from aiohttp import web

from kura.console.web.pages import call, form, page, redirect, render_page, visitor
from kura.core.roles import Role

routes = web.RouteTableDef()


@routes.get("/audit-integrity")
@page(anonymous=True)
async def integrity(request: web.Request) -> web.StreamResponse:
    status = await call(request, "status")
    state = status.get("audit_integrity") or {"state": "ok"}
    if state["state"] == "ok":
        raise web.HTTPSeeOther("/")
    who = await visitor(request)  # None for a clerk: the vault refuses even "who am I"
    admin = who is not None and who.role in (Role.SA, Role.DA)
    return render_page(
        request, "audit/integrity.html", status=503 if not admin else 200,
        state=state, admin=admin, mine=bool(who and str(who.role) in state["acknowledged"]),
    )


@routes.post("/audit-integrity/acknowledge")
@page(Role.SA, Role.DA)
async def acknowledge(request: web.Request) -> web.StreamResponse:
    await form(request)
    result = await call(request, "audit.acknowledge")
    if result["resumed"]:
        return redirect("/", "The incident is acknowledged. Kura has resumed.")
    return redirect("/audit-integrity", "Your acknowledgement is recorded.")
