"""The Security Admin's audit pages and the reports: the searchable audit
log, the access history per period and per user, the handling-status ledger
(取扱状況, also the MA's), and the audit bundle — downloaded, verified in the
vault, and an exported bundle uploaded to be verified here, offline, with the
public key inside it (the console holds no keys).

Every report prints: a print button, and a header shown only on paper with
the appliance, the period, when and by whom it was printed.

Searches are GET forms (bookmarkable, and none of their fields is a number);
a value that looks like a My Number is refused before it goes anywhere."""

from __future__ import annotations

import asyncio
import base64
import tempfile
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

from aiohttp import BodyPartReader, web

from kura.console.web import security
from kura.console.web.pages import (
    CsrfRejected,
    Visitor,
    call,
    form,
    gettext_for,
    language,
    message,
    page,
    render_page,
    visitor,
)
from kura.console.web.rendering import TOKYO
from kura.core import audit, reports
from kura.core.errors import BadRequest, KuraError, PayloadTooLarge
from kura.core.roles import Role

routes = web.RouteTableDef()

SA, MA = Role.SA, Role.MA
PAGE_SIZE = 50
FILTERED_BATCH = 500  # entries read per page when the outcome is filtered here
UPLOAD_CHUNK = 256 << 10
MAX_BUNDLE_BYTES = 1 << 30  # an exported bundle: a few hundred bytes per entry
OUTCOMES = ("ok", "denied", "error")


class NumberInQuery(BadRequest):
    """A search field held what looks like a My Number: refused unread."""

    code = "number_in_query"
    status = 422
    ja = (
        "検索条件に個人番号のような数字が含まれています。個人番号では検索できません。"
        "利用者・操作・期間で検索してください。"
    )
    en = (
        "The search holds what looks like a My Number. The audit log cannot be searched "
        "by number: search by user, action or period."
    )


class BadDate(BadRequest):
    """A period's date is not a calendar date."""

    code = "bad_date"
    status = 422
    ja = "日付は 2025-04-01 の形式で入力してください。"
    en = "Enter dates as 2025-04-01."


# --- what the pages share ------------------------------------------------------------


def refuse_numbers(query: Mapping[str, str]) -> None:
    if any(audit.looks_like_my_number(v) for v in query.values()):
        raise NumberInQuery()


def _date(value: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise BadDate() from exc


def today() -> date:
    return datetime.now(TOKYO).date()


def period(query: Mapping[str, str]) -> tuple[date, date]:
    """The period of a report: the dates typed (inclusive), by default this
    month up to today."""
    now = today()
    start = _date(query.get("since", "")) or now.replace(day=1)
    end = _date(query.get("until", "")) or now
    if start > end:
        raise BadRequest(
            "The period's start must come before its end.",
            "期間の開始日は終了日より前にしてください。",
        )
    return start, end


def period_args(start: date, end: date) -> dict[str, str]:
    """The vault's arguments for the whole of both days, in Japan's time."""
    return {
        "since": datetime.combine(start, time(), TOKYO).isoformat(),
        "until": datetime.combine(end + timedelta(days=1), time(), TOKYO).isoformat(),
    }


def entry_rows(entries: list[dict[str, Any]], lang: str) -> list[dict[str, Any]]:
    """Audit entries with their action's label, for the tables."""
    return [{**e, "label": reports.action_label(str(e["action"]), lang)} for e in entries]


def action_choices(lang: str) -> list[tuple[str, str]]:
    return sorted(
        ((a, reports.action_label(a, lang)) for a in reports.ACTION_LABELS),
        key=lambda c: (c[1], c[0]),
    )


async def printed_by(request: web.Request) -> dict[str, Any]:
    """What the print-only header says besides the period."""
    status = await call(request, "status")
    who: Visitor | None = await visitor(request)
    name = (who.display_name or who.username) if who else ""
    return {
        "appliance": status.get("appliance", ""),
        "printed_at": datetime.now(TOKYO).isoformat(),
        "printed_by": f"{name} ({who.username})" if who and who.display_name else name,
    }


async def _error_page(
    request: web.Request, template: str, exc: KuraError, **context: Any
) -> web.Response:
    values = {**await printed_by(request), **context}
    return render_page(request, template, status=exc.status, error=message(request, exc), **values)


# --- the audit log ---------------------------------------------------------------------


@routes.get("/audit")
@page(SA)
async def audit_log(request: web.Request) -> web.Response:
    lang = language(request)
    query = request.query
    blank = {"actor": "", "action": "", "outcome": "", "since": "", "until": ""}
    base = {
        "actions": action_choices(lang),
        "outcomes": OUTCOMES,
        "entries": [],
        "next_url": None,
        "prev_url": None,
        "first_url": None,
    }
    try:
        refuse_numbers(query)
        shown = {k: query.get(k, "").strip() for k in blank}
        start, end = _date(shown["since"]), _date(shown["until"])
        offset = _offset(query.get("from", "0"))
        asof = _moment(query.get("asof", "")) if offset else None
    except BadRequest as exc:
        kept = {} if isinstance(exc, NumberInQuery) else {k: query.get(k, "") for k in blank}
        return await _error_page(request, "reports/audit.html", exc, form={**blank, **kept}, **base)
    args: dict[str, Any] = {"offset": offset}
    if shown["actor"]:
        args["actor"] = shown["actor"][:64]
    if shown["action"]:
        args["action"] = shown["action"][:64]
    if start:
        args["since"] = period_args(start, start)["since"]
    # Every search adds an entry of its own, so the pages after the first
    # read the log as it was when the first was shown: rows do not shift.
    asof = asof or datetime.now(UTC)
    limit = datetime.fromisoformat(period_args(end, end)["until"]) if end else asof
    args["until"] = min(limit, asof).isoformat()
    paging = {**shown, "asof": asof.isoformat()}
    outcome = shown["outcome"] if shown["outcome"] in OUTCOMES else ""
    entries, next_offset = await _search(request, args, outcome)
    context = {
        **base,
        **await printed_by(request),
        "form": {**shown, "outcome": outcome},
        "entries": entry_rows(entries, lang),
        "next_url": page_url("/audit", paging, next_offset),
        "prev_url": page_url("/audit", paging, _previous(offset, outcome)),
        "first_url": page_url("/audit", shown, 0) if offset else None,
    }
    return render_page(request, "reports/audit.html", **context)


def page_url(path: str, fields: Mapping[str, str], offset: int | None) -> str | None:
    """A link to another page of the same search (None: there is none)."""
    if offset is None:
        return None
    query = {k: v for k, v in fields.items() if v}
    if offset:
        query["from"] = str(offset)
    return path + ("?" + urlencode(query) if query else "")


def _previous(offset: int, outcome: str) -> int | None:
    # With the outcome filtered here, pages are uneven: only the first is known.
    if offset == 0 or outcome:
        return None
    return max(0, offset - PAGE_SIZE)


def _moment(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def _offset(value: str) -> int:
    try:
        offset = int(value or 0)
    except ValueError:
        offset = 0
    return min(max(offset, 0), 1_000_000)


async def _search(
    request: web.Request, args: dict[str, Any], outcome: str
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of entries and where the next one starts. The vault's search
    has no outcome filter, so with one the console reads a larger batch and
    keeps the entries that match (at most one vault call per page)."""
    offset = int(args["offset"])
    if not outcome:
        found = (await call(request, "audit.list", {**args, "limit": PAGE_SIZE + 1}))["entries"]
        more = len(found) > PAGE_SIZE
        return found[:PAGE_SIZE], (offset + PAGE_SIZE if more else None)
    batch = (await call(request, "audit.list", {**args, "limit": FILTERED_BATCH}))["entries"]
    kept: list[dict[str, Any]] = []
    for index, entry in enumerate(batch):
        if entry["outcome"] != outcome:
            continue
        kept.append(entry)
        if len(kept) == PAGE_SIZE:
            rest = batch[index + 1 :]
            if rest or len(batch) == FILTERED_BATCH:
                return kept, offset + index + 1
            return kept, None
    return kept, (offset + FILTERED_BATCH if len(batch) == FILTERED_BATCH else None)


# --- the access history --------------------------------------------------------------


@routes.get("/reports/access")
@page(SA)
async def access_report(request: web.Request) -> web.Response:
    lang = language(request)
    query = request.query
    try:
        refuse_numbers(query)
        start, end = period(query)
    except BadRequest as exc:
        start, end = today().replace(day=1), today()
        return await _error_page(
            request,
            "reports/access.html",
            exc,
            report=None,
            since=start,
            until=end,
            user="",
            entries=[],
            next_url=None,
            prev_url=None,
            user_url=None,
            categories=reports.CATEGORIES,
        )
    user = query.get("user", "").strip()[:64]
    offset = _offset(query.get("from", "0"))
    fields = {"since": start.isoformat(), "until": end.isoformat(), "user": user}
    args: dict[str, Any] = period_args(start, end)
    if user:
        args.update(user=user, offset=offset, limit=PAGE_SIZE + 1)
    report = await call(request, "report.access", args)
    entries = report.get("entries", [])
    return render_page(
        request,
        "reports/access.html",
        report=report,
        since=start,
        until=end,
        user=user,
        entries=entry_rows(entries[:PAGE_SIZE], lang),
        next_url=page_url("/reports/access", fields, offset + PAGE_SIZE)
        if len(entries) > PAGE_SIZE
        else None,
        prev_url=page_url("/reports/access", fields, max(0, offset - PAGE_SIZE))
        if offset
        else None,
        user_url=lambda name: page_url("/reports/access", {**fields, "user": name}, 0),
        categories=reports.CATEGORIES,
        **await printed_by(request),
    )


# --- the handling-status ledger ------------------------------------------------------


@routes.get("/reports/ledger")
@page(SA, MA)
async def ledger(request: web.Request) -> web.Response:
    query = request.query
    try:
        refuse_numbers(query)
        start, end = period(query)
    except BadRequest as exc:
        start, end = today().replace(day=1), today()
        return await _error_page(
            request, "reports/ledger.html", exc, ledger=None, since=start, until=end
        )
    found = await call(request, "report.ledger", period_args(start, end))
    return render_page(
        request,
        "reports/ledger.html",
        ledger=found,
        since=start,
        until=end,
        **await printed_by(request),
    )


# --- the audit bundle --------------------------------------------------------------------


@routes.get("/audit/export")
@page(SA)
async def audit_export_page(request: web.Request) -> web.Response:
    chain = await call(request, "audit.verify")
    return render_page(
        request, "reports/export.html", chain=chain, uploaded=None, **await printed_by(request)
    )


@routes.post("/audit/export/download")
@page(SA)
async def audit_export_download(request: web.Request) -> web.StreamResponse:
    await form(request)
    exported = await call(request, "audit.export")
    body = base64.b64decode(exported["bundle"])
    status = await call(request, "status")
    name = "".join(c for c in str(status.get("appliance", "kura")) if c.isalnum() or c in "-_.")
    stamp = datetime.now(TOKYO).strftime("%Y%m%d-%H%M%S")
    return web.Response(
        body=body,
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="{name or "kura"}-audit-{stamp}.jsonl"',
            "X-Kura-SHA256": exported["sha256"],
        },
    )


@routes.post("/audit/export/verify")
@page(SA)
async def audit_bundle_verify(request: web.Request) -> web.Response:
    _ = gettext_for(request)
    with tempfile.NamedTemporaryFile(prefix="kura-bundle-") as spool:
        try:
            size, filename = await _receive_bundle(request, spool)
        except (BadRequest, PayloadTooLarge) as exc:
            return await _error_page(
                request,
                "reports/export.html",
                exc,
                chain=None,
                uploaded=None,
            )
        if size == 0:
            return render_page(
                request,
                "reports/export.html",
                status=422,
                chain=None,
                uploaded=None,
                error=_("Choose an exported audit bundle (.jsonl) to verify."),
                **await printed_by(request),
            )
        spool.flush()
        # Streamed from the file: 32 bytes of memory per entry, whatever its size.
        result = await asyncio.to_thread(audit.verify_bundle, Path(spool.name))
    lang = language(request)
    chain = await call(request, "audit.verify")
    uploaded = {
        "filename": Path(filename).name[:200],
        "size": size,
        "ok": result.ok,
        "entries": result.entries,
        "checkpoints": result.checkpoints,
        "first_bad_seq": result.first_bad_seq,
        "bad_line": result.bad_line,
        "problem": result.problem_ja if lang == "ja" else result.problem_en,
        "exported_at": result.exported_at.isoformat() if result.exported_at else None,
        "fingerprints": result.public_key_fingerprints,
        "sha256": result.bundle_sha256,
        # Verified with the key inside the bundle: is that this appliance's?
        "this_appliance": chain["public_key_fingerprint"] in result.public_key_fingerprints,
    }
    return render_page(
        request,
        "reports/export.html",
        chain=chain,
        uploaded=uploaded,
        **await printed_by(request),
    )


async def _receive_bundle(request: web.Request, spool: IO[bytes]) -> tuple[int, str]:
    """Stream the uploaded bundle into ``spool`` after checking the form's
    token (the first field); returns its size and file name."""
    if request.content_type != "multipart/form-data":
        raise BadRequest("Send the bundle from the form.", "フォームからバンドルを送ってください。")
    if not security.same_origin(request):
        raise CsrfRejected()
    try:
        reader = await request.multipart()
        part = await reader.next()
        if not isinstance(part, BodyPartReader) or part.name != security.CSRF_FIELD:
            raise CsrfRejected()
        token = (await part.read_chunk(512)).decode("ascii", "replace")
        if not security.csrf_valid(request, token):
            raise CsrfRejected()
        part = await reader.next()
        if not isinstance(part, BodyPartReader) or part.name != "bundle":
            return 0, ""
        size = 0
        while chunk := await part.read_chunk(UPLOAD_CHUNK):
            size += len(chunk)
            if size > MAX_BUNDLE_BYTES:
                raise PayloadTooLarge(limit=MAX_BUNDLE_BYTES)
            await asyncio.to_thread(spool.write, chunk)
    except ValueError as exc:  # aiohttp's word for a malformed multipart body
        raise BadRequest("The upload is malformed.", "送信内容の形式が正しくありません。") from exc
    return size, part.filename or ""
