"""Use: search, a subject's page with its reveal for a purpose, and exports
for forms with their approval.

Numbers never travel in a URL: a search is a POST (a number typed into it
never reaches the address bar or the history, and is never echoed back into
the form), a reveal answers with the page itself instead of a redirect, and
a download is a POST. The vault checks every operation and records it; these
pages only decide what each role is shown."""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any

from aiohttp import web

from kura.console.vaultclient import VaultError
from kura.console.web.menu import N_
from kura.console.web.pages import (
    call,
    form,
    gettext_for,
    message,
    page,
    redirect,
    render_page,
    text_field,
    visitor,
)
from kura.core import exports, numbers
from kura.core.audit import looks_like_my_number
from kura.core.errors import BadRequest, NotFound
from kura.core.purposes import CATALOGUE
from kura.core.roles import Role
from kura.core.subjects import to_katakana

routes = web.RouteTableDef()

MU, MA = Role.MU, Role.MA
PAGE_SIZE = 50
REVEAL_SECONDS = 30
MAX_SELECTED = 500  # subjects carried from a search into the export form
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Hiragana, katakana (full and half width), the long-vowel mark, the middle dot, spaces.
KANA = re.compile(r"[\u3041-\u3096\u309d\u309e\u30a1-\u30fe\uff66-\uff9f\u3000 ]+")

KINDS = {"employee": N_("Employee"), "dependent": N_("Dependent"), "payee": N_("Payee")}
BASES = {
    "employment": N_("End of employment"),
    "contract": N_("End of contract"),
    "last_payment": N_("Last payment"),
}
STATES = {
    "pending": (N_("Awaiting approval"), "warn"),
    "approved": (N_("Ready to download"), "ok"),
    "rejected": (N_("Not approved"), "danger"),
    "downloaded": (N_("Downloaded"), ""),
    "cancelled": (N_("Withdrawn"), ""),
}
PROBLEMS = {
    exports.PURPOSE: N_("Its purposes do not include this one"),
    exports.UNENCODABLE: N_("Cannot be written in Shift_JIS"),
    exports.OUTSIDE_JIS: N_("Outside JIS X 0208 (a vendor extension the tax office does not take)"),
}
FIELDS = {"code": N_("Code"), "name": N_("Name"), "name_kana": N_("Kana")}
ENCODINGS = {"shift_jis": N_("Shift_JIS (for the tax office and eLTAX)"),
             "utf-8-bom": N_("UTF-8 with BOM")}

LABELS = {"kinds": KINDS, "bases": BASES, "states": STATES, "problems": PROBLEMS,
          "fields": FIELDS, "encodings": ENCODINGS}


def query_shape(text: str) -> str:
    """How a search box's text is read: ``number`` (12 digits, with or without
    hyphens, spaces or full-width digits), ``kana`` (a reading), ``text`` (a
    name in kanji, or a code), or ``empty``."""
    if not text:
        return "empty"
    digits = numbers.normalise(text)
    if digits.isascii() and digits.isdigit() and len(digits) == 12:
        return "number"
    if KANA.fullmatch(text):
        return "kana"
    return "text"


def _choice(data: Any, name: str, allowed: Any) -> str:
    value = text_field(data, name, 40)
    return value if value in allowed else ""


def _path_id(request: web.Request) -> str:
    sid = request.match_info["id"]
    if not UUID.fullmatch(sid):
        raise NotFound("There is no such page.", "そのページはありません。")
    return sid


# --- search ---------------------------------------------------------------------


def _search_page(request: web.Request, status: int = 200, **context: Any) -> web.Response:
    values: dict[str, Any] = {
        "query": "", "kind": "", "results": None, "offset": 0, "has_next": False,
        "shape": "empty", "page_size": PAGE_SIZE, "labels": LABELS,
        "can_export": request["kura.visitor"].role == MU,
    }
    values.update(context)
    return render_page(request, "use/search.html", status=status, **values)


@routes.get("/search")
@page(MU, MA)
async def search_form(request: web.Request) -> web.Response:
    return _search_page(request)


@routes.post("/search")
@page(MU, MA)
async def search(request: web.Request) -> web.Response:
    data = await form(request)
    query = text_field(data, "query", 100)
    kind = _choice(data, "kind", KINDS)
    try:
        offset = max(0, min(1_000_000, int(text_field(data, "offset", 7) or 0)))
    except ValueError:
        offset = 0
    shape = query_shape(query)
    # A number (or anything like one) is never written back into the page.
    shown = "" if shape == "number" or looks_like_my_number(query) else query
    context: dict[str, Any] = {"query": shown, "kind": kind, "shape": shape, "offset": offset}
    if shape == "empty":
        _ = gettext_for(request)
        return _search_page(
            request, status=422,
            error=_("Enter a name, a reading in kana, a code or a My Number."), **context,
        )
    if shape == "number":
        try:
            found = await call(request, "subject.lookup", {"number": query})
        except VaultError as exc:
            if exc.vault_code != "invalid_number":
                raise
            return _search_page(request, status=422, error=message(request, exc), **context)
        results = [s for s in found["subjects"] if not kind or s["kind"] == kind]
        return _search_page(request, results=results, **context)
    args: dict[str, Any] = {
        "query": to_katakana(query) if shape == "kana" else query,
        "offset": offset,
        "limit": PAGE_SIZE + 1,
    }
    if kind:
        args["kind"] = kind
    results = (await call(request, "subject.list", args))["subjects"]
    if not results and shape == "text" and (" " in query or "\u3000" in query):
        # Names are kept as typed, with an ASCII or an ideographic space
        # between family and given name: try the other one too.
        swapped = query.translate({0x20: 0x3000, 0x3000: 0x20})
        results = (await call(request, "subject.list", {**args, "query": swapped}))["subjects"]
    return _search_page(
        request, results=results[:PAGE_SIZE], has_next=len(results) > PAGE_SIZE, **context
    )


# --- a subject, and revealing its number ----------------------------------------


async def _subject_context(
    request: web.Request, sid: str, subject: dict[str, Any] | None = None
) -> dict[str, Any]:
    if subject is None:
        subject = (await call(request, "subject.get", {"id": sid}))["subject"]
    dependents: list[dict[str, Any]] = []
    if subject["kind"] == "employee":
        # Dependents are registered under their employee's code (or one that
        # starts with it); the employee link decides who belongs here.
        listed = await call(
            request, "subject.list", {"kind": "dependent", "query": subject["code"], "limit": 500}
        )
        dependents = [d for d in listed["subjects"] if d.get("employee_id") == sid]
    who = request["kura.visitor"]
    return {
        "subject": subject,
        "dependents": dependents,
        "can_reveal": who.role == MU,
        "can_correct": who.role == MA,
        "purposes": CATALOGUE,
        "revealed": None,
        "revealed_purpose": None,
        "reveal_seconds": REVEAL_SECONDS,
        "labels": LABELS,
    }


@routes.get("/subjects/{id}")
@page(MU, MA)
async def subject_page(request: web.Request) -> web.Response:
    context = await _subject_context(request, _path_id(request))
    return render_page(request, "use/subject.html", **context)


@routes.post("/subjects/{id}/reveal")
@page(MU)
async def reveal(request: web.Request) -> web.Response:
    sid = _path_id(request)
    data = await form(request)
    purpose = text_field(data, "purpose", 40)
    try:
        shown = await call(request, "subject.reveal", {"id": sid, "purpose": purpose or "-"})
    except VaultError as exc:
        # The form offers only allowed purposes: this is a stale or forged one,
        # refused and recorded by the vault.
        if exc.vault_code not in ("purpose_required", "bad_request"):
            raise
        _ = gettext_for(request)
        context = await _subject_context(request, sid)
        context["path"] = f"/subjects/{sid}"
        return render_page(
            request, "use/subject.html", status=422,
            error=_("Choose one of the purposes this subject allows."), **context,
        )
    # The reveal's answer carries the record: one vault call for the page.
    context = await _subject_context(request, sid, shown["subject"])
    # The language switch and the like come back to the subject's page (a GET),
    # where the number is hidden again.
    context["path"] = f"/subjects/{sid}"
    number = str(shown["number"])
    context.update(
        revealed=f"{number[:4]}-{number[4:8]}-{number[8:]}", revealed_purpose=purpose
    )
    # Answered as the page itself: no redirect, so the number is in no URL,
    # and every page is sent with Cache-Control: no-store.
    return render_page(request, "use/subject.html", **context)


@routes.post("/subjects/{id}/correct")
@page(MA)
async def correct(request: web.Request) -> web.StreamResponse:
    """The MA corrects a record: names, purposes, and the retention event (the
    day employment, the contract or the payments ended) that starts the
    retention period. The number itself is corrected through the API."""
    sid = _path_id(request)
    data = await form(request)
    event = text_field(data, "retention_event", 10)
    changes: dict[str, Any] = {
        "id": sid,
        "name": text_field(data, "name", 100),
        "name_kana": text_field(data, "name_kana", 100),
        "purposes": [p for p in data.getall("purposes", []) if isinstance(p, str)],
        "retention_event": event or None,
    }
    try:
        await call(request, "subject.correct", changes)
    except VaultError as exc:
        if exc.vault_code != "bad_request":
            raise
        context = await _subject_context(request, sid)
        return render_page(
            request, "use/subject.html", status=422, error=message(request, exc), **context
        )
    raise redirect(f"/subjects/{sid}", N_("The record was corrected."))


# --- exports ----------------------------------------------------------------------


def _form_defaults(selected: list[str]) -> dict[str, Any]:
    return {
        "purpose": "",
        "tax_year": str(exports.default_tax_year(datetime.now(exports.TOKYO).date())),
        "kind": "",
        "subjects": selected,
        "encoding": "shift_jis",
    }


async def _exports_page(
    request: web.Request, values: dict[str, Any] | None = None, status: int = 200,
    error: str | None = None,
) -> web.Response:
    who = request["kura.visitor"]
    context: dict[str, Any] = {
        "labels": LABELS, "purposes": CATALOGUE, "error": error,
        "years": (exports.EARLIEST_TAX_YEAR, exports.LATEST_TAX_YEAR),
    }
    if who.role == MU:
        mine = await call(request, "export.list", {"limit": 100})
        context.update(form=values or _form_defaults([]), requests=mine["requests"], queue=[],
                       threshold=mine["threshold"])
    else:
        listed = await call(request, "export.list", {"limit": 200})
        everything = listed["requests"]
        context.update(
            form=None,
            queue=[r for r in everything if r["state"] == "pending"],
            requests=[r for r in everything if r["state"] != "pending"][:50],
            threshold=listed["threshold"],
        )
    return render_page(request, "use/exports.html", status=status, **context)


@routes.get("/exports")
@page(MU, MA)
async def exports_page(request: web.Request) -> web.Response:
    selected = [s for s in request.query.getall("subject", []) if UUID.fullmatch(s)]
    values = _form_defaults(list(dict.fromkeys(selected))[:MAX_SELECTED])
    return await _exports_page(request, values)


@routes.post("/exports")
@page(MU)
async def prepare(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    _ = gettext_for(request)
    values: dict[str, Any] = {
        "purpose": _choice(data, "purpose", {p.code for p in CATALOGUE}),
        "tax_year": text_field(data, "tax_year", 10),
        "kind": _choice(data, "kind", KINDS),
        "subjects": [
            s for s in dict.fromkeys(data.getall("subject", []))
            if isinstance(s, str) and UUID.fullmatch(s)
        ][:MAX_SELECTED],
        "encoding": _choice(data, "encoding", ENCODINGS),
    }
    problem = None
    year = numbers.normalise(values["tax_year"])
    if not values["purpose"]:
        problem = _("Choose the purpose of the export.")
    elif not values["encoding"]:
        problem = _("Choose the file's encoding.")
    elif year and not (
        year.isascii() and year.isdigit()
        and exports.EARLIEST_TAX_YEAR <= int(year) <= exports.LATEST_TAX_YEAR
    ):
        problem = _("The tax year is a year from 2016 on, such as 2026, or empty for all.")
    if problem:
        return await _exports_page(request, values, status=422, error=problem)
    args: dict[str, Any] = {"purpose": values["purpose"], "encoding": values["encoding"]}
    if year:
        args["tax_year"] = int(year)
    if values["kind"]:
        args["kind"] = values["kind"]
    if values["subjects"]:
        args["ids"] = values["subjects"]
    try:
        result = await call(request, "export.prepare", args)
    except VaultError as exc:
        if exc.vault_code not in ("bad_request", "not_found", "purpose_required"):
            raise
        return await _exports_page(
            request, values, status=exc.http_status, error=message(request, exc)
        )
    prepared = result["request"]
    if prepared["state"] == "approved":
        raise redirect(f"/exports/{prepared['id']}", "The export is ready to download.")
    raise redirect(f"/exports/{prepared['id']}", "The export is waiting for an MA's approval.")


async def _export_page(
    request: web.Request, request_id: str, status: int = 200, error: str | None = None
) -> web.Response:
    found = await call(request, "export.list", {"id": request_id})
    [export] = found["requests"]
    who = await visitor(request)
    assert who is not None
    own = export["requested_by"] == who.username
    return render_page(
        request,
        "use/export.html",
        status=status,
        error=error,
        path=f"/exports/{request_id}",  # also for the answers to its POSTs
        export=export,
        own=own,
        can_download=who.role == MU and own and export["state"] == "approved",
        can_decide=who.role == MA and not own and export["state"] == "pending",
        labels=LABELS,
    )


@routes.get("/exports/{id}")
@page(MU, MA)
async def export_page(request: web.Request) -> web.Response:
    return await _export_page(request, _path_id(request))


@routes.post("/exports/{id}/download")
@page(MU)
async def download(request: web.Request) -> web.StreamResponse:
    request_id = _path_id(request)
    await form(request)
    try:
        taken = await call(request, "export.download", {"id": request_id})
    except VaultError as exc:
        if exc.vault_code not in ("export_state", "permission_denied"):
            raise
        return await _export_page(
            request, request_id, status=exc.http_status, error=message(request, exc)
        )
    return web.Response(
        body=base64.b64decode(taken["content"]),
        headers={
            "Content-Type": f"text/csv; charset={exports.charset(taken['encoding'])}",
            "Content-Disposition": f'attachment; filename="{taken["filename"]}"',
            "X-Kura-Rows": str(taken["rows"]),
            "X-Kura-SHA256": taken["sha256"],
        },
    )


@routes.post("/exports/{id}/decision")
@page(MA)
async def decide(request: web.Request) -> web.StreamResponse:
    request_id = _path_id(request)
    data = await form(request)
    decision = _choice(data, "decision", ("approve", "reject"))
    reason = text_field(data, "reason", exports.REASON_MAX)
    if not decision:
        raise BadRequest("decision must be approve or reject", "承認か却下を選んでください。")
    args: dict[str, Any] = {"id": request_id, "decision": decision}
    if reason:
        args["reason"] = reason
    try:
        await call(request, "export.decide", args)
    except VaultError as exc:
        if exc.vault_code not in ("bad_request", "export_state", "own_request"):
            raise
        return await _export_page(
            request, request_id, status=exc.http_status, error=message(request, exc)
        )
    if decision == "approve":
        raise redirect("/exports", "The export was approved.")
    raise redirect("/exports", "The export was rejected.")
