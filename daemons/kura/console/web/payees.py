"""Collecting individual payees (個人支払先: freelancers, landlords,
lecturers): an MU registers one directly (no request, no document, as the
seed says), or many from a CSV file (UTF-8 or Shift_JIS) through a background
import job with a progress bar, a table of the rejected rows and a report to
download (see ``importjobs``).

A number typed into these pages goes to the vault and nowhere else: it is
never put back into a page (a refused form comes back without it), a
message, a URL or a log line; the rejected-rows report names the line, the
field and the reason, never a value."""

from __future__ import annotations

import asyncio
import codecs
import unicodedata
from typing import Any

from aiohttp import BodyPartReader, web

from kura.console.api import LIMITS
from kura.console.vaultclient import VaultError
from kura.console.web import importjobs, security
from kura.console.web.importjobs import ImportJob
from kura.console.web.pages import (
    CsrfRejected,
    call,
    form,
    gettext_for,
    language,
    message,
    page,
    redirect,
    render_page,
    session_token,
    text_field,
    visitor,
)
from kura.console.web.rendering import TOKYO
from kura.core import importer, subjects
from kura.core.audit import looks_like_my_number
from kura.core.errors import BadRequest, KuraError, NotFound, PayloadTooLarge, PermissionDenied
from kura.core.purposes import CATALOGUE
from kura.core.roles import Role

routes = web.RouteTableDef()
setup = importjobs.setup

MU = Role.MU
JOB = "{job:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}}"
UPLOAD_CHUNK = 64 << 10
SHOWN_REJECTIONS = 1000  # rows in the page's table; the report has them all


def N_(text: str) -> str:
    """Marks a message id for the catalogs; translated where it is shown."""
    return text


# What a rejection's field is called on the page (the report uses the core's labels).
FIELD_LABELS: dict[str, str] = {
    "kind": N_("Kind"),
    "code": N_("Code"),
    "name": N_("Name"),
    "name_kana": N_("Reading (katakana)"),
    "number": N_("My Number"),
    "purposes": N_("Purposes"),
    "employee_code": N_("Employee's code"),
    "birth_date": N_("Birth date"),
    "retention_basis": N_("Retention basis"),
}
# A payee's retention runs from the end of the contract or from the last payment.
RETENTION_CHOICES: tuple[tuple[str, str], ...] = (
    ("last_payment", N_("From the last payment")),
    ("contract", N_("From the end of the contract")),
)
ENCODING_LABELS = {
    "utf-8": N_("UTF-8"),
    "utf-8-sig": N_("UTF-8 (with BOM)"),
    "cp932": N_("Shift_JIS (CP932)"),
}
# The columns a file may have, in the order the template uses (kura.core.importer
# reads them by name, in any order, in Japanese or in English).
COLUMN_NOTES: tuple[tuple[str, str], ...] = (
    ("code", N_("Letters A–Z, digits, hyphens and underscores; up to 32.")),
    ("name", N_("Up to 100 characters.")),
    ("name_kana", N_("Katakana; hiragana and half-width kana are converted.")),
    ("number", N_("12 digits. In Excel, format the column as text so that leading zeros stay.")),
    ("birth_date", N_("YYYY-MM-DD or YYYY/MM/DD.")),
    ("purposes", N_("Codes or Japanese names, separated by ; (default: 支払調書作成事務).")),
    ("retention_basis", N_("契約 (end of contract) or 最終支払 (last payment, the default).")),
    ("kind", N_("Without it every row is a payee; 社員 and 扶養親族 import employees and "
                "their dependents.")),
    ("employee_code", N_("Dependents only: the code of their employee.")),
)
TEMPLATE_COLUMNS = ("code", "name", "name_kana", "number", "birth_date", "purposes",
                    "retention_basis")
TEMPLATE_HEADER = ["支払先コード" if c == "code" else importer.COLUMN_ALIASES[c][0]
                   for c in TEMPLATE_COLUMNS]


class ImportTooLarge(PayloadTooLarge):
    """The uploaded file is over the console's import limit."""


def _too_large(limit: int) -> ImportTooLarge:
    mib = max(1, limit >> 20)
    return ImportTooLarge(
        f"The file is larger than {mib} MB, the most one import takes. "
        "Split it into smaller files.",
        f"ファイルが大きすぎます（1回に取り込めるのは{mib}MBまでです）。ファイルを分けてください。",
        limit=limit,
    )


# --- one payee -------------------------------------------------------------------


def _purposes() -> list[dict[str, str]]:
    return [{"code": p.code} for p in CATALOGUE]


def _form_page(
    request: web.Request, values: dict[str, Any], status: int = 200,
    error: str | None = None, field: str = "",
) -> web.Response:
    return render_page(
        request,
        "payees/new.html",
        status=status,
        values=values,
        error=error,
        error_field=field,
        purposes=_purposes(),
        retention_choices=RETENTION_CHOICES,
    )


EMPTY_FORM: dict[str, Any] = {
    "code": "",
    "name": "",
    "name_kana": "",
    "birth_date": "",
    "purposes": ["payment_record"],
    "retention_basis": "last_payment",
}


@routes.get("/payees/new")
@page(MU)
async def new_payee_form(request: web.Request) -> web.Response:
    return _form_page(request, dict(EMPTY_FORM))


def _typed(data: Any) -> dict[str, Any]:
    """What the clerk typed, to put back into a refused form: never the number,
    nor any box that holds something like one."""
    values: dict[str, Any] = {}
    for name in ("code", "name", "name_kana", "birth_date", "retention_basis"):
        value = data.get(name, "")
        value = value.strip()[:200] if isinstance(value, str) else ""
        values[name] = "" if looks_like_my_number(value) else value
    values["purposes"] = [p for p in data.getall("purposes", []) if isinstance(p, str)][:20]
    return values


def _payee_from_form(data: Any) -> subjects.SubjectInput:
    """The payee as the form gives it, checked by the same rules as the vault's
    (which checks it again); BadRequest or InvalidNumber naming the field."""
    # The limits here only stop absurd input; the core says what is too long.
    code = unicodedata.normalize("NFKC", text_field(data, "code", 1000))
    basis = text_field(data, "retention_basis", 40)
    if basis not in dict(RETENTION_CHOICES):
        raise subjects.field_error(
            "retention_basis", "unknown_basis",
            "契約終了または最終支払から選んでください。",
            "choose the end of the contract or the last payment.",
        )
    number = data.get("number", "")
    if not isinstance(number, str) or len(number) > 40:
        number = "?"  # refused by the core's number rules, which name no value
    return subjects.make_subject(
        kind="payee",
        code=code,
        name=text_field(data, "name", 1000),
        name_kana=text_field(data, "name_kana", 1000),
        number=number,
        purposes=[p for p in data.getall("purposes", []) if isinstance(p, str)],
        birth_date=subjects.parse_birth_date(text_field(data, "birth_date", 40), lenient=True),
        retention_basis=basis,
    )


@routes.post("/payees/new")
@page(MU)
async def register_payee(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    values = _typed(data)
    try:
        payee = _payee_from_form(data)
        result = await call(request, "subject.register", importjobs.subject_json(payee))
    except KuraError as exc:
        refused = isinstance(exc, VaultError) and exc.vault_code not in (
            "bad_request", "invalid_number", "conflict", "duplicate_number", "not_found",
        )
        if refused:
            raise  # sealed, signed out, not allowed: the error pages handle those
        return _form_page(
            request, values, status=422, error=message(request, exc),
            field=str(exc.detail.get("field", "")),
        )
    subject_id = result["subject"]["id"]
    if result.get("created"):
        raise redirect(f"/subjects/{subject_id}", "The payee was registered.")
    raise redirect(
        f"/subjects/{subject_id}",
        "This payee was already registered with the same code and number; nothing was changed.",
    )


# --- many payees from a CSV file ---------------------------------------------------


def _upload_page(
    request: web.Request, status: int = 200, error: str | None = None
) -> web.Response:
    who = request["kura.visitor"]
    limit = request.app[LIMITS][1]
    columns = [
        {
            "name": "支払先コード" if name == "code" else importer.COLUMN_ALIASES[name][0],
            "aliases": [a for a in importer.COLUMN_ALIASES[name] if a != "支払先コード"],
            "required": name in importer.REQUIRED_COLUMNS,
            "note": note,
        }
        for name, note in COLUMN_NOTES
    ]
    return render_page(
        request,
        "payees/import.html",
        status=status,
        error=error,
        columns=columns,
        header=",".join(TEMPLATE_HEADER),
        limit_mb=max(1, limit >> 20),
        max_rows=importer.MAX_ROWS,
        jobs=[_job_view(job) for job in request.app[importjobs.IMPORT_JOBS].of(who.username)],
    )


@routes.get("/payees/import")
@page(MU)
async def import_form(request: web.Request) -> web.Response:
    return _upload_page(request)


@routes.get("/payees/import/template.csv")
@page(MU)
async def import_template(request: web.Request) -> web.Response:
    text = ",".join(TEMPLATE_HEADER) + "\r\n"
    return web.Response(
        body=codecs.BOM_UTF8 + text.encode("utf-8"),
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="kura-payees-template.csv"',
        },
    )


async def _read_part(part: BodyPartReader, limit: int) -> bytes | None:
    """The part's bytes, read chunk by chunk; None once it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(UPLOAD_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: web.Request, limit: int) -> tuple[bytes, str]:
    """The uploaded file and its name, streamed: the CSRF field must come first
    and is checked before a byte of the file is read; the file is refused as
    soon as it passes ``limit``."""
    if not security.same_origin(request):
        raise CsrfRejected()
    if request.content_type != "multipart/form-data":
        raise BadRequest(
            "Send the file from the import form.", "取込画面からファイルを送ってください。"
        )
    try:
        reader = await request.multipart()
        part = await reader.next()
        if not isinstance(part, BodyPartReader) or part.name != security.CSRF_FIELD:
            raise CsrfRejected()
        token = await _read_part(part, 256)
        if token is None or not security.csrf_valid(request, token.decode("ascii", "replace")):
            raise CsrfRejected()
        # Only now is the size worth a look: a forged form learns nothing.
        if request.content_length is not None and request.content_length > limit + (64 << 10):
            raise _too_large(limit)
        part = await reader.next()
        if not isinstance(part, BodyPartReader) or part.name != "file":
            raise BadRequest("Choose a CSV file.", "CSVファイルを選んでください。")
        content = await _read_part(part, limit)
    except ValueError as exc:  # aiohttp's word for a malformed multipart body
        raise BadRequest("The upload is malformed.", "送信内容の形式が正しくありません。") from exc
    if content is None:
        raise _too_large(limit)
    return content, part.filename or ""


@routes.post("/payees/import")
@page(MU)
async def start_import(request: web.Request) -> web.StreamResponse:
    limit = request.app[LIMITS][1]
    try:
        content, filename = await read_upload(request, limit)
    except ImportTooLarge as exc:
        # The upload page again, so that the clerk can choose a smaller file.
        return _upload_page(request, exc.status, message(request, exc))
    _ = gettext_for(request)
    if not content and not filename:
        return _upload_page(request, 422, _("Choose a CSV file to import."))
    try:
        # Reading a large file takes a moment: off the event loop.
        parsed = await asyncio.to_thread(importer.parse_csv, content)
    except KuraError as exc:
        return _upload_page(request, 422, message(request, exc))
    finally:
        del content
    who = request["kura.visitor"]
    try:
        job = importjobs.start_job(request, who.username, parsed, session_token(request) or "")
    except importjobs.ImportBusy as exc:
        return _upload_page(request, exc.status, message(request, exc))
    del parsed
    raise web.HTTPSeeOther(f"/payees/import/{job.id}")


async def _own_job(request: web.Request) -> ImportJob:
    """The job in the path, if the visitor started it (403 if someone else did)."""
    job = request.app[importjobs.IMPORT_JOBS].get(request.match_info["job"])
    if job is None:
        raise NotFound(
            "There is no such import (reports are kept for an hour).",
            "該当する一括登録はありません（結果は1時間保存されます）。",
        )
    who = await visitor(request)
    if who is None or who.username != job.owner:
        raise PermissionDenied(
            "Only the user who started this import can see it.",
            "この一括登録は、開始したユーザーだけが見られます。",
        )
    return job


def _job_view(job: ImportJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "started_at": job.started_at,
        "encoding": ENCODING_LABELS.get(job.encoding, job.encoding),
        "total": job.total,
        "done": job.done,
        "finished": job.finished,
        "created": job.created,
        "existing": job.existing,
        "rejected": len(job.rejections),
        "failed": job.failure is not None,
    }


@routes.get(f"/payees/import/{JOB}")
@page(MU)
async def import_job(request: web.Request) -> web.Response:
    job = await _own_job(request)
    english = language(request) == "en"
    rows = [
        {
            "line": r.line,
            "field": FIELD_LABELS.get(r.field, ""),
            "reason": r.en if english else r.ja,
        }
        for r in job.rejections[:SHOWN_REJECTIONS]
    ]
    failure = message(request, job.failure) if job.failure is not None else None
    return render_page(
        request,
        "payees/job.html",
        job=_job_view(job),
        rejections=rows,
        more_rejections=max(0, len(job.rejections) - SHOWN_REJECTIONS),
        failure=failure,
        unsent=job.total - job.done,
    )


@routes.get(f"/payees/import/{JOB}/progress")
@page(MU)
async def import_progress(request: web.Request) -> web.Response:
    job = await _own_job(request)
    return web.json_response(job.progress())


@routes.get(f"/payees/import/{JOB}/report.csv")
@page(MU)
async def import_report(request: web.Request) -> web.Response:
    job = await _own_job(request)
    if not job.finished:
        raise NotFound(
            "The report is ready when the import has finished.",
            "レポートは一括登録が終わると取り出せます。",
        )
    stamp = job.started_at.astimezone(TOKYO).strftime("%Y%m%d-%H%M%S")
    return web.Response(
        body=importer.rejection_report_csv(job.rejections, "utf-8-sig"),
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="kura-import-rejected-{stamp}.csv"',
        },
    )


__all__ = ["routes", "setup"]
