"""Collection from employees: registration requests and their one-time links.

- ``/requests``: the list; an MA sees the submitted ones first, as a queue.
- ``/requests/new``: a clerk asks for a person's number; the answer is the
  handout (link and QR code), shown once and never through a redirect, so the
  token is not in the console's own history.
- ``/r/{token}``: the employee's form (no account: the token is the
  credential). It is read as a stream: the CSRF field comes first and is
  checked before any file is read, and each file is refused as soon as it
  passes the upload limit.
- ``/requests/{id}``: the MA compares the entered numbers with the document
  images, then approves or rejects; a rejected or expired request is reissued
  with a new handout.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from kura.console.vaultclient import VaultError
from kura.console.web import security
from kura.console.web.auth import qr_data_uri
from kura.console.web.pages import (
    WEB,
    CsrfRejected,
    Visitor,
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
from kura.core import requests as core
from kura.core.errors import BadRequest, NotFound
from kura.core.purposes import CATALOGUE, DEFAULT_FOR_KIND
from kura.core.roles import Role

routes = web.RouteTableDef()

MU, MA = Role.MU, Role.MA
DEPENDENT_ROWS = 4  # rows on the form; the vault takes up to core.MAX_DEPENDENTS
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# What an employee's mistakes are called back with (the form shows them again).
_SUBMISSION_ERRORS = frozenset(
    {
        "invalid_number",
        "duplicate_in_submission",
        "bad_request",
        "document_type",
        "document_too_large",
    }
)


def _request_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not _UUID.fullmatch(value):
        raise NotFound("There is no such page.", "そのページはありません。")
    return value


def link_for(request: web.Request, token: str) -> str:
    return f"https://{request.host}/r/{token}"


def _handout(request: web.Request, summary: dict[str, Any], token: str) -> web.Response:
    link = link_for(request, token)
    return render_page(
        request, "collect/handout.html", req=summary, link=link, qr=qr_data_uri(link)
    )


# --- the clerk's pages ---------------------------------------------------------


@routes.get("/requests")
@page(MU, MA)
async def request_list(request: web.Request) -> web.Response:
    state = request.query.get("state", "")
    args: dict[str, Any] = {"limit": 200}
    if state in core.STATES:
        args["state"] = state
    else:
        state = ""
    found = (await call(request, "request.list", args))["requests"]
    who = await visitor(request)
    queue: list[dict[str, Any]] = []
    if who is not None and who.role == MA and not state:
        queue = [r for r in found if r["state"] == core.SUBMITTED]
        found = [r for r in found if r["state"] != core.SUBMITTED]
    return render_page(
        request,
        "collect/list.html",
        queue=queue,
        requests=found,
        state=state,
        states=core.STATES,
    )


def _new_form(
    request: web.Request, status: int = 200, error: str | None = None, **values: Any
) -> web.Response:
    defaults: dict[str, Any] = {
        "name": "",
        "name_kana": "",
        "employee_code": "",
        "purposes": list(DEFAULT_FOR_KIND["employee"]),
        "expires_days": core.DEFAULT_EXPIRY_DAYS,
        "purge_documents": False,
    }
    defaults.update(values)
    return render_page(
        request,
        "collect/new.html",
        status=status,
        error=error,
        form=defaults,
        catalogue=[p.code for p in CATALOGUE],
        max_days=core.MAX_EXPIRY_DAYS,
    )


@routes.get("/requests/new")
@page(MU, MA)
async def new_request_form(request: web.Request) -> web.Response:
    return _new_form(request)


@routes.post("/requests/new")
@page(MU, MA)
async def create_request(request: web.Request) -> web.Response:
    data = await form(request)
    _ = gettext_for(request)
    values: dict[str, Any] = {
        "name": text_field(data, "name", 100),
        "name_kana": text_field(data, "name_kana", 100),
        "employee_code": text_field(data, "employee_code", core.EMPLOYEE_CODE_MAX + 10),
        "purposes": [p for p in data.getall("purposes", []) if isinstance(p, str)][:20],
        "purge_documents": data.get("purge_documents") == "1",
    }
    days_text = text_field(data, "expires_days", 5) or str(core.DEFAULT_EXPIRY_DAYS)
    values["expires_days"] = days_text
    if not days_text.isdigit() or not 1 <= int(days_text) <= core.MAX_EXPIRY_DAYS:
        return _new_form(
            request,
            422,
            _("The link must expire within 1 to %(max)s days.") % {"max": core.MAX_EXPIRY_DAYS},
            **values,
        )
    if not values["name"] or not values["employee_code"] or not values["purposes"]:
        return _new_form(
            request,
            422,
            _("Enter the name and the employee code, and choose at least one purpose."),
            **values,
        )
    args = {**values, "expires_days": int(days_text)}
    if not args["name_kana"]:
        del args["name_kana"]
    try:
        created = await call(request, "request.create", args)
    except VaultError as exc:
        if exc.vault_code != "bad_request":
            raise
        return _new_form(request, exc.http_status, message(request, exc), **values)
    return _handout(request, created["request"], created["token"])


@routes.get("/requests/{id}")
@page(MU, MA)
async def request_detail(request: web.Request) -> web.Response:
    return await _detail(request)


async def _detail(
    request: web.Request, status: int = 200, error: str | None = None, reason: str = ""
) -> web.Response:
    request_id = _request_id(request)
    who: Visitor | None = await visitor(request)
    if who is not None and who.role == MA:
        found = await call(request, "request.get", {"id": request_id})
        summary, entries, documents = found["request"], found["entries"], found["documents"]
    else:
        listed = (await call(request, "request.list", {"id": request_id}))["requests"]
        if not listed:
            raise NotFound("There is no such page.", "そのページはありません。")
        summary, entries, documents = listed[0], [], []
    return render_page(
        request,
        "collect/review.html",
        status=status,
        error=error,
        req=summary,
        entries=entries,
        documents=documents,
        reason=reason,
        reviewer=who is not None and who.role == MA,
    )


async def _act(
    request: web.Request, op: str, args: dict[str, Any] | None = None, reason: str = ""
) -> dict[str, Any] | web.Response:
    """Call ``op`` on the request; a refusal the MA can act on comes back as
    the review page with the message."""
    try:
        return await call(request, op, {"id": _request_id(request), **(args or {})})
    except VaultError as exc:
        if exc.vault_code not in (
            "illegal_transition",
            "duplicate_number",
            "conflict",
            "bad_request",
        ):
            raise
        return await _detail(request, exc.http_status, message(request, exc), reason)


@routes.post("/requests/{id}/approve")
@page(MA)
async def approve(request: web.Request) -> web.StreamResponse:
    await form(request)
    done = await _act(request, "request.approve")
    if isinstance(done, web.Response):
        return done
    raise redirect(
        f"/requests/{_request_id(request)}",
        "The request was approved and the numbers are registered.",
    )


@routes.post("/requests/{id}/reject")
@page(MA)
async def reject(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    reason = text_field(data, "reason", 1000)
    if not reason:
        _ = gettext_for(request)
        return await _detail(request, 422, _("Write why the request is sent back."))
    done = await _act(request, "request.reject", {"reason": reason}, reason)
    if isinstance(done, web.Response):
        return done
    raise redirect(f"/requests/{_request_id(request)}", "The request was sent back.")


@routes.post("/requests/{id}/reissue")
@page(MU, MA)
async def reissue(request: web.Request) -> web.StreamResponse:
    await form(request)
    done = await _act(request, "request.reissue")
    if isinstance(done, web.Response):
        return done
    return _handout(request, done["request"], done["token"])


@routes.post("/requests/{id}/cancel")
@page(MU, MA)
async def cancel(request: web.Request) -> web.StreamResponse:
    await form(request)
    done = await _act(request, "request.cancel")
    if isinstance(done, web.Response):
        return done
    raise redirect(f"/requests/{_request_id(request)}", "The request was cancelled.")


@routes.get("/requests/{id}/documents/{document_id}")
@page(MA)
async def document(request: web.Request) -> web.Response:
    document_id = request.match_info["document_id"]
    if not _UUID.fullmatch(document_id):
        raise NotFound("There is no such page.", "そのページはありません。")
    found = await call(
        request, "request.document", {"id": _request_id(request), "document_id": document_id}
    )
    content_type = found["content_type"]
    if content_type not in core.CONTENT_TYPES:  # stored types are detected ones; be sure
        raise NotFound()
    extension = {"image/jpeg": "jpg", "image/png": "png", "application/pdf": "pdf"}[content_type]
    return web.Response(
        body=base64.b64decode(found["content"]),
        headers={
            "Content-Type": content_type,
            "Cache-Control": "no-store",
            "Content-Disposition": f'inline; filename="{found["kind"]}-document.{extension}"',
            "X-Content-Type-Options": "nosniff",
            # A document is shown, never run: no script; a PDF may use the viewer.
            "Content-Security-Policy": "default-src 'none'; img-src 'self'; object-src 'self';"
            " frame-ancestors 'none'",
        },
    )


# --- the employee's pages (no account; the token is the credential) ------------


async def _open_link(request: web.Request, token: str) -> dict[str, Any] | None:
    """What the link is for, or None when it is no longer valid."""
    if not core.well_formed_token(token):
        return None
    try:
        return await call(request, "request.open", {"token": token})
    except VaultError as exc:
        if exc.vault_code == "link_invalid":
            return None
        raise


def _link_invalid(request: web.Request) -> web.Response:
    return render_page(request, "collect/link_invalid.html", status=410)


def _link_form(
    request: web.Request,
    opened: dict[str, Any],
    token: str,
    status: int = 200,
    error: str | None = None,
    posted: SubmittedForm | None = None,
    wrong: tuple[int, str] | None = None,
) -> web.Response:
    values = posted.fields if posted else {}
    return render_page(
        request,
        "collect/link.html",
        status=status,
        problem=error,
        opened=opened,
        token=token,
        values=values,
        rows=range(1, DEPENDENT_ROWS + 1),
        relations=core.RELATIONS,
        wrong=wrong,
        max_mib=request.app[WEB].max_upload_bytes // (1 << 20),
    )


@routes.get("/r/{token}")
@page(anonymous=True)
async def link_page(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    opened = await _open_link(request, token)
    if opened is None:
        return _link_invalid(request)
    return _link_form(request, opened, token)


@dataclass
class SubmittedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


FILE_FIELDS = {"number_document": "number", "identity_document": "identity"}
TEXT_LIMIT = 400  # bytes of one text field
MAX_PARTS = 64


async def _read_text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(1024):
        data += chunk
        if len(data) > TEXT_LIMIT:
            raise BadRequest("a field is too long", "入力が長すぎます。", field=part.name or "")
    return data.decode("utf-8", "replace")


async def _read_file(part: BodyPartReader, limit: int) -> bytes:
    """The file, read chunk by chunk and refused the moment it passes ``limit``."""
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        core.check_size(len(data), limit)
    return bytes(data)


async def read_streamed_form(request: web.Request) -> SubmittedForm:
    """The employee's multipart form. Nothing is read before the CSRF field,
    which the form sends first; files never wait whole in memory past the limit."""
    if not security.same_origin(request):
        raise CsrfRejected()
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:  # not multipart at all
        raise CsrfRejected() from exc
    first = await reader.next()
    if not isinstance(first, BodyPartReader) or first.name != security.CSRF_FIELD:
        raise CsrfRejected()
    if not security.csrf_valid(request, await _read_text(first)):
        raise CsrfRejected()
    limit = min(request.app[WEB].max_upload_bytes, core.MAX_DOCUMENT_BYTES)
    posted = SubmittedForm()
    for _ in range(MAX_PARTS):
        part = await reader.next()
        if part is None:
            return posted
        if not isinstance(part, BodyPartReader) or not part.name:
            raise BadRequest("the form is malformed", "フォームの形式が正しくありません。")
        if part.name in FILE_FIELDS:
            content = await _read_file(part, limit)
            if content or part.filename:
                posted.files[FILE_FIELDS[part.name]] = content
        else:
            posted.fields[part.name] = (await _read_text(part)).strip()
    raise BadRequest("the form has too many fields", "フォームの項目が多すぎます。")


DEPENDENT_FIELDS = ("relation", "name", "kana", "birth", "number")


def _entries(posted: SubmittedForm) -> tuple[list[dict[str, Any]], list[int]]:
    """The people on the form (the employee first, blank rows left out) and,
    for each, the form's row (0 for the employee) to point at a mistake."""
    fields = posted.fields
    entries: list[dict[str, Any]] = [{"relation": core.SELF, "number": fields.get("number", "")}]
    if fields.get("birth"):
        entries[0]["birth_date"] = fields["birth"]
    rows = [0]
    for n in range(1, DEPENDENT_ROWS + 1):
        row = {k: fields.get(f"dep-{n}-{k}", "") for k in DEPENDENT_FIELDS}
        if not any(row.values()):
            continue
        entries.append(
            {
                "relation": row["relation"],
                "name": row["name"],
                "name_kana": row["kana"],
                "birth_date": row["birth"] or None,
                "number": row["number"],
            }
        )
        rows.append(n)
    return entries, rows


@routes.post("/r/{token}")
@page(anonymous=True)
async def submit_link(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    if not core.well_formed_token(token):
        return _link_invalid(request)
    try:
        posted = await read_streamed_form(request)
    except core.DocumentTooLarge as exc:
        opened = await _open_link(request, token)
        if opened is None:
            return _link_invalid(request)
        return _link_form(request, opened, token, 413, message(request, exc))
    entries, rows = _entries(posted)
    documents = [
        {"kind": kind, "content": base64.b64encode(content).decode()}
        for kind, content in posted.files.items()
        if content
    ]
    # The vault checks everything (the people first, then the documents).
    problem: VaultError | None = None
    try:
        result = await call(
            request, "request.submit", {"token": token, "entries": entries, "documents": documents}
        )
    except VaultError as exc:
        if exc.vault_code == "link_invalid":
            return _link_invalid(request)
        if exc.vault_code not in _SUBMISSION_ERRORS:
            raise
        problem = exc
    if problem is not None:
        opened = await _open_link(request, token)
        if opened is None:
            return _link_invalid(request)
        entry = problem.detail.get("entry")
        wrong = None
        if isinstance(entry, int) and 0 <= entry < len(rows):
            wrong = (rows[entry], str(problem.detail.get("field", "")))
        return _link_form(
            request, opened, token, problem.http_status, message(request, problem), posted, wrong
        )
    return render_page(request, "collect/thanks.html", dependents=result["dependents"])
