"""Pairing a standby from the primary's console (docs/ha-pairing.md).

The DA types the standby's address and the code its screen shows; the
console fetches the standby's offer from its pairing port (kura.pairingserver,
``kura ha offer --serve``) and hands offer and code to the vault
(``ha.pair``). An SA compares the proposal's name, address and fingerprint
with the standby's screen and approves or rejects it; on approval the vault
makes the envelope, and the DA delivers it to the standby from here.

The console does not verify the standby's TLS certificate: it was made for
this one pairing, and nothing the console sends or receives needs it — the
offer is public, and the envelope opens only for the standby that holds the
code (a changed offer changes nothing but the fingerprint the SA compares).
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
from aiohttp import web

from kura import pairingserver
from kura.console.web.pages import call, form, page, redirect, render_page, visitor
from kura.core.errors import BadRequest, KuraError
from kura.core.roles import Role

routes = web.RouteTableDef()

TIMEOUT = aiohttp.ClientTimeout(total=10)


class StandbyUnreachable(KuraError):
    """The standby's pairing port did not answer as a pairing standby does."""

    code = "standby_unreachable"
    status = 502
    ja = ("待機系のペアリング用ポートに接続できません。待機系で `kura ha offer --serve` が"
          "動いていること、アドレスが正しいことを確かめてください。")
    en = ("The standby's pairing port did not answer. Check that `kura ha offer --serve` "
          "runs on the standby and that the address is right.")


def _unverified() -> ssl.SSLContext:
    # See the module's docstring: the code, not the certificate, authenticates.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def fetch_offer(address: str) -> dict[str, Any]:
    host, port = pairingserver.endpoint(address)
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(
            pairingserver.url(host, port, pairingserver.OFFER_PATH), ssl=_unverified()
        ) as answer:
            body: Any = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise StandbyUnreachable() from exc
    if not isinstance(body, dict):
        raise StandbyUnreachable()
    if "error" in body:
        raise StandbyUnreachable(
            en="The standby has no pending offer (expired or used): run "
               "`kura ha offer --new --serve` on it.",
            ja="待機系に有効なペアリング申し出がありません（期限切れまたは使用済み）。"
               "待機系で `kura ha offer --new --serve` を実行してください。",
        )
    return body


async def deliver(address: str, envelope: dict[str, Any]) -> dict[str, Any]:
    host, port = pairingserver.endpoint(address)
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.post(
            pairingserver.url(host, port, pairingserver.ENVELOPE_PATH), json=envelope,
            ssl=_unverified()
        ) as answer:
            return pairingserver.envelope_answer(answer.status, await answer.text())
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise StandbyUnreachable() from exc


@routes.get("/admin/ha/pair")
@page(Role.DA, Role.SA)
async def pair_page(request: web.Request) -> web.StreamResponse:
    who = await visitor(request)
    found = await call(request, "ha.pairings")
    return render_page(request, "admin/pairing.html", pairings=found["pairings"],
                       requires_approval=found["requires_approval"],
                       is_da=who is not None and who.role == Role.DA,
                       is_sa=who is not None and who.role == Role.SA,
                       port=pairingserver.PORT)


@routes.post("/admin/ha/pair")
@page(Role.DA)
async def pair(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    offer = await fetch_offer(str(data.get("address", "")))
    args: dict[str, Any] = {"offer": offer, "code": str(data.get("code", ""))}
    result = await call(request, "ha.pair", args)
    if result.get("state") == "approved":
        return redirect("/admin/ha/pair", "The envelope is ready: deliver it to the standby.")
    return redirect("/admin/ha/pair",
                    "The pairing is proposed. A Security Admin must approve it.")


@routes.post("/admin/ha/pairings/{id}/approve")
@page(Role.SA)
async def approve(request: web.Request) -> web.StreamResponse:
    await form(request)
    await call(request, "ha.approve", {"id": request.match_info["id"]})
    return redirect("/admin/ha/pair",
                    "Approved. The appliance admin can now deliver the envelope.")


@routes.post("/admin/ha/pairings/{id}/reject")
@page(Role.SA)
async def reject(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    await call(request, "ha.reject", {"id": request.match_info["id"],
                                      "reason": str(data.get("reason", ""))[:500]})
    return redirect("/admin/ha/pair", "The pairing is rejected.")


@routes.post("/admin/ha/pairings/{id}/deliver")
@page(Role.DA)
async def deliver_envelope(request: web.Request) -> web.StreamResponse:
    await form(request)
    found = await call(request, "ha.pairings")
    wanted = request.match_info["id"]
    proposal = next((p for p in found["pairings"] if p.get("id") == wanted), None)
    if proposal is None or not proposal.get("envelope"):
        raise BadRequest(en="There is no approved pairing with an envelope to deliver.",
                         ja="届けられる封筒のある承認済みのペアリングがありません。")
    answer = await deliver(str(proposal["address"]), proposal["envelope"])
    if answer.get("paired") is not True:
        error = answer.get("error") or {}
        raise StandbyUnreachable(
            en=f"The standby refused the envelope ({error.get('code', 'unknown')}).",
            ja=f"待機系が封筒を受け取りませんでした（{error.get('code', 'unknown')}）。",
        )
    return redirect("/admin/ha/pair", "The standby is paired and has sealed the root key.")
