"""Retention and disposal pages.

- ``/retention``: the retention rules; everyone who handles numbers reads
  them, the SA edits each basis's years and anchor.
- ``/disposal``: the subjects due for disposal on a day (default today),
  proposing the ticked ones as a batch (MU, MA), and the batches: an MA other
  than the proposer approves one, which destroys the subjects at once, or
  rejects it with a reason.
- ``/disposal/records``: the disposal records (廃棄記録) for a period, with a
  print layout that has signature boxes for the approvers. Never a number or
  a name: kinds, counts and who did it.

Subject ids and batch ids (UUIDs) are the only identifiers in a URL or a form.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web

from kura.console.vaultclient import VaultError
from kura.console.web.pages import (
    Visitor,
    call,
    form,
    gettext_for,
    language,
    message,
    page,
    redirect,
    render_page,
    text_field,
    visitor,
)
from kura.core import disposal
from kura.core.errors import NotFound
from kura.core.roles import Role

routes = web.RouteTableDef()

MU, MA, SA = Role.MU, Role.MA, Role.SA
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
EXAMPLE_EVENT = date(2026, 3, 31)  # the rules page shows where each rule leads from it
# The vault's refusals a page shows as a message above the form, not as an error page.
_SHOWN = frozenset(
    {
        "not_due",
        "already_proposed",
        "not_found",
        "own_proposal",
        "illegal_transition",
        "bad_request",
        "invalid_retention_rule",
    }
)


def _today() -> date:
    return disposal.tokyo_date(datetime.now(UTC))


def _parse_day(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else None
    except ValueError:
        return None


async def _rules(request: web.Request) -> dict[str, disposal.RetentionRule]:
    found = await call(request, "retention.list")
    return {r["basis"]: disposal.RetentionRule.from_row(r) for r in found["rules"]}


def _basis_label(rules: dict[str, disposal.RetentionRule], basis: str, lang: str) -> str:
    rule = rules.get(basis)
    if rule is None:
        return basis
    return rule.ja if lang == "ja" else rule.en


# --- retention rules --------------------------------------------------------------


@routes.get("/retention")
@page(MU, MA, SA)
async def retention(request: web.Request) -> web.Response:
    return await _retention_page(request)


async def _retention_page(
    request: web.Request,
    status: int = 200,
    error: str | None = None,
    typed: dict[str, tuple[str, str]] | None = None,
    invalid: frozenset[str] = frozenset(),
) -> web.Response:
    rules = await _rules(request)
    who = await visitor(request)
    lang = language(request)
    rows = []
    for rule in rules.values():
        years, anchor = (typed or {}).get(rule.basis, (str(rule.keep_years), rule.anchor))
        rows.append(
            {
                "basis": rule.basis,
                "label": _basis_label(rules, rule.basis, lang),
                "keep_years": rule.keep_years,
                "anchor_label": disposal.label(disposal.ANCHOR_LABELS, rule.anchor, lang),
                "typed_years": years,
                "typed_anchor": anchor,
                "invalid": rule.basis in invalid,
                "example_due": disposal.due_date(rule, EXAMPLE_EVENT),
                "note": rule.note,
            }
        )
    anchors = [(a, disposal.label(disposal.ANCHOR_LABELS, a, lang)) for a in disposal.ANCHORS]
    return render_page(
        request,
        "disposal/retention.html",
        status=status,
        error=error,
        rules=rows,
        anchors=anchors,
        editable=who is not None and who.role == SA,
        example_event=EXAMPLE_EVENT.isoformat(),
        max_years=disposal.MAX_KEEP_YEARS,
    )


@routes.post("/retention")
@page(SA)
async def retention_save(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    rules = await _rules(request)
    typed: dict[str, tuple[str, str]] = {}
    changes: list[dict[str, Any]] = []
    invalid: set[str] = set()
    for basis, rule in rules.items():
        years_text = text_field(data, f"keep_years-{basis}", 10)
        anchor = text_field(data, f"anchor-{basis}", 40)
        typed[basis] = (years_text, anchor)
        try:
            years, anchor = disposal.checked_rule(years_text, anchor)
        except disposal.InvalidRetentionRule:
            invalid.add(basis)
            continue
        if (years, anchor) != (rule.keep_years, rule.anchor):
            changes.append({"basis": basis, "keep_years": years, "anchor": anchor})
    if invalid:
        lang = language(request)
        bases = ("、" if lang == "ja" else ", ").join(
            _basis_label(rules, b, lang) for b in rules if b in invalid
        )
        _ = gettext_for(request)
        return await _retention_page(
            request,
            status=422,
            error=message(request, disposal.InvalidRetentionRule())
            + " "
            + _("Check: %(bases)s") % {"bases": bases},
            typed=typed,
            invalid=frozenset(invalid),
        )
    for change in changes:
        await call(request, "retention.set", change)
    if not changes:
        raise redirect("/retention", "Nothing was changed.")
    raise redirect("/retention", "The retention rules were saved.")


# --- the due list and the batches -----------------------------------------------------


@routes.get("/disposal")
@page(MU, MA)
async def due(request: web.Request) -> web.Response:
    return await _disposal_page(request, request.query.get("as_of", ""))


async def _disposal_page(
    request: web.Request, as_of_text: str = "", status: int = 200, error: str | None = None
) -> web.Response:
    _ = gettext_for(request)
    lang = language(request)
    today = _today()
    as_of = _parse_day(as_of_text) if as_of_text else today
    if as_of is None:
        error = error or _("Enter the date as YYYY-MM-DD.")
        status = 422 if status == 200 else status
        as_of = today
    who = await visitor(request)
    assert who is not None
    rules = await _rules(request)
    found = await call(request, "disposal.due", {"as_of": as_of.isoformat()})
    # The batches waiting for a decision come first, then the latest decided ones.
    listed = await call(request, "disposal.list", {"limit": 200})
    waiting = {
        s["id"]
        for b in listed["batches"]
        if b["state"] == "proposed"
        for s in b.get("subjects", [])
    }
    subjects = [
        {
            **s,
            "kind_label": disposal.label(disposal.KIND_LABELS, s["kind"], lang),
            "basis_label": _basis_label(rules, s["basis"], lang),
            "in_batch": s["id"] in waiting,
            "proposable": s["id"] not in waiting and s["due"] <= today.isoformat(),
        }
        for s in found["subjects"]
    ]
    batches = [_batch_view(b, who, rules, lang) for b in listed["batches"]]
    return render_page(
        request,
        "disposal/due.html",
        status=status,
        error=error,
        as_of=as_of.isoformat(),
        today=today.isoformat(),
        subjects=subjects,
        proposable=any(s["proposable"] for s in subjects),
        truncated=found["truncated"],
        batches=batches,
    )


def _batch_view(
    batch: dict[str, Any], who: Visitor, rules: dict[str, disposal.RetentionRule], lang: str
) -> dict[str, Any]:
    counts = [
        (disposal.label(disposal.KIND_LABELS, kind, lang), batch["counts"][kind])
        for kind in disposal.RECORD_KINDS
        if batch["counts"].get(kind)
    ]
    return {
        **batch,
        "own": batch["proposed_by"] == who.username,
        "count_labels": counts,
        "subjects": [
            {
                **s,
                "kind_label": disposal.label(disposal.KIND_LABELS, s["kind"], lang),
                "basis_label": _basis_label(rules, s["basis"], lang),
            }
            for s in batch.get("subjects", [])
        ],
    }


@routes.post("/disposal/propose")
@page(MU, MA)
async def propose(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    _ = gettext_for(request)
    as_of = text_field(data, "as_of", 10)
    ids = [v for v in data.getall("subject", []) if isinstance(v, str) and _UUID.fullmatch(v)]
    if not ids:
        return await _disposal_page(
            request, as_of, 422, _("Tick the subjects to dispose of first.")
        )
    try:
        await call(request, "disposal.propose", {"subject_ids": list(dict.fromkeys(ids))[:1000]})
    except VaultError as exc:
        if exc.vault_code not in _SHOWN:
            raise
        return await _disposal_page(request, as_of, exc.http_status, message(request, exc))
    raise redirect("/disposal", "The disposal was proposed. A MyNumber Admin must approve it.")


@routes.post("/disposal/batches/{id}/decision")
@page(MA)
async def decide(request: web.Request) -> web.StreamResponse:
    batch_id = request.match_info["id"]
    if not _UUID.fullmatch(batch_id):
        raise NotFound("no such disposal batch", "その廃棄申請はありません。")
    data = await form(request)
    _ = gettext_for(request)
    decision = text_field(data, "decision", 10)
    reason = text_field(data, "reason", disposal.REASON_MAX)
    if decision not in disposal.DECISIONS:
        return await _disposal_page(request, "", 422, _("Choose to approve or to reject."))
    if decision == "reject" and not reason:
        return await _disposal_page(request, "", 422, _("Write why the batch is rejected."))
    args: dict[str, Any] = {"id": batch_id, "decision": decision}
    if reason:
        args["reason"] = reason
    try:
        await call(request, "disposal.decide", args)
    except VaultError as exc:
        if exc.vault_code not in _SHOWN:
            raise
        return await _disposal_page(request, "", exc.http_status, message(request, exc))
    if decision == "approve":
        raise redirect(
            "/disposal", "The disposal was approved: the subjects' keys and data are destroyed."
        )
    raise redirect("/disposal", "The disposal batch was rejected.")


# --- the disposal records ---------------------------------------------------------------


@routes.get("/disposal/records")
@page(MA, SA)
async def records(request: web.Request) -> web.Response:
    _ = gettext_for(request)
    lang = language(request)
    today = _today()
    since_text = request.query.get("since", "")
    until_text = request.query.get("until", "")
    since = _parse_day(since_text) if since_text else date(today.year, 1, 1)
    until = _parse_day(until_text) if until_text else today
    error, status = None, 200
    if since is None or until is None:
        error, status = _("Enter the dates as YYYY-MM-DD."), 422
        since, until = since or date(today.year, 1, 1), until or today
    if since > until:
        error, status = _("The period ends before it starts."), 422
        since, until = until, since
    rules = await _rules(request)
    found = await call(
        request,
        "disposal.records",
        {"since": since.isoformat(), "until": until.isoformat(), "limit": 1000},
    )
    status_info = await call(request, "status")
    rows = [
        {
            **r,
            "kind_label": disposal.label(disposal.KIND_LABELS, r["kind"], lang),
            "basis_label": _basis_label(rules, r["basis"], lang),
            "method_label": disposal.label(disposal.METHOD_LABELS, r["method"], lang),
        }
        for r in found["records"]
    ]
    subjects = sum(r["count"] for r in rows if r["kind"] != "documents")
    return render_page(
        request,
        "disposal/records.html",
        status=status,
        error=error,
        records=rows,
        since=since.isoformat(),
        until=until.isoformat(),
        subjects_total=subjects,
        batches_total=len({r["batch_id"] for r in rows}),
        appliance=status_info.get("appliance", ""),
        printed_at=datetime.now(UTC).isoformat(),
    )
