"""Export requests: an MU prepares an export for a form, an MA approves it
when it is over the SA's threshold, and the requester downloads it once —
the take-out (持出し) the audit log records with its row count and the file's
SHA-256. The rules and the state machine are kura.core.exports'; this module
reads and writes the requests and decrypts the numbers for the file."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from kura.core import exports
from kura.core.errors import KuraError, NotFound, PurposeRequired
from kura.core.keys import KeyHierarchy
from kura.core.purposes import BY_CODE
from kura.core.roles import Role
from kura.vault.base import Caller, VaultBase, jsonable, operation, record
from kura.vault.store import Row, Tx

REPORT_LIMIT = 1000  # report entries kept with a request (all are counted)


def write_file(
    keys: KeyHierarchy, rows: Sequence[Row], included: Sequence[str], encoding: str
) -> bytes:
    """The CSV of the ``included`` subjects among ``rows`` (full subject rows),
    in the order given: the one place an export decrypts numbers."""
    by_id = {str(r["id"]): r for r in rows}
    lines = []
    for sid in included:
        row = by_id[sid]
        dk = keys.open_data_key(sid, row["kek_version"], bytes(row["wrapped_key"]))
        number = dk.decrypt("number", bytes(row["number_ct"])).decode()
        lines.append((row["kind"], row["code"], row["name"], row["name_kana"], number))
    return exports.csv_bytes(lines, encoding)


async def subjects_or_not_found(
    tx: Tx, kind: str | None, ids: Sequence[str] | None
) -> list[exports.Candidate]:
    rows = await tx.export_candidates(None if ids is not None else kind, ids)
    if ids is not None and len(rows) != len(set(ids)):
        raise NotFound("some subjects do not exist", "存在しない対象者が含まれています。")
    return [exports.Candidate.from_row(r) for r in rows if not kind or r["kind"] == kind]


def request_json(row: Row) -> dict[str, Any]:
    """An export request as the API shows it: counts and the report, no ids
    (list_export_requests reads no id lists)."""
    return jsonable(row)


class ExportOperations(VaultBase):
    @operation("export.prepare")
    async def export_prepare(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        purpose = args["purpose"]
        if purpose not in BY_CODE:
            raise PurposeRequired()
        encoding = args.get("encoding", "shift_jis")
        kind, ids, tax_year = args.get("kind"), args.get("ids"), args.get("tax_year")
        threshold = self.policy.export_approval_threshold
        request_id = str(uuid.uuid4())
        async with self.store.transaction() as tx:
            candidates = await subjects_or_not_found(tx, kind, ids)
            chosen = exports.select(candidates, purpose, encoding, tax_year)
            state = exports.initial_state(chosen.rows, threshold)
            await tx.insert_export_request(
                {
                    "id": request_id,
                    "requested_by": caller.actor,
                    "purpose": purpose,
                    "kind": kind,
                    "subject_ids": list(dict.fromkeys(ids)) if ids is not None else None,
                    "encoding": encoding,
                    "tax_year": tax_year,
                    "rows": chosen.rows,
                    "state": state.value,
                    "selected_ids": list(chosen.included),
                    "skipped": len(chosen.skipped_purpose),
                    "report": _report(chosen.issues),
                    "report_total": len(chosen.issues),
                    "threshold": threshold,
                }
            )
            await record(
                tx,
                caller,
                "export.prepare",
                target=request_id,
                purpose=purpose,
                detail={
                    "rows": chosen.rows,
                    "state": state.value,
                    "threshold": threshold,
                    "encoding": encoding,
                    "tax_year": tax_year,
                    "skipped": len(chosen.skipped_purpose),
                    "unencodable": len(chosen.unencodable),
                },
            )
            row = await self._request_row(tx, request_id)
        return {"request": request_json(row), "created": True}

    @operation("export.list")
    async def export_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        # An MU sees their own requests; an MA sees everyone's, pending first.
        mine = caller.actor if caller.role == Role.MU else None
        offset, limit = args.get("offset", 0), args.get("limit", 50)
        async with self.store.transaction() as tx:
            rows = await tx.list_export_requests(
                mine, args.get("state"), args.get("id"), offset, limit
            )
        if "id" in args and not rows:
            raise NotFound()
        return {
            "requests": [request_json(r) for r in rows],
            "offset": offset,
            "limit": limit,
            "threshold": self.policy.export_approval_threshold,
        }

    @operation("export.decide")
    async def export_decide(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        event = exports.decision_event(args["decision"])
        reason = exports.clean_reason(event, args.get("reason", ""))
        refusal: KuraError | None = None
        async with self.store.transaction() as tx:
            row = await tx.export_request(args["id"], lock=True)
            if row is None:
                raise NotFound()
            if row["requested_by"] == caller.actor:
                # Raised only after this transaction commits the refusal's record.
                refusal = exports.OwnRequest()
                await record(
                    tx,
                    caller,
                    "export.decide",
                    outcome="denied",
                    target=args["id"],
                    purpose=row["purpose"],
                    detail={"reason": "own_request", "decision": event.value},
                )
            else:
                state = exports.transition(row["state"], event)
                await tx.update_export_request(
                    args["id"],
                    {
                        "state": state.value,
                        "decided_by": caller.actor,
                        "decided_at": self.clock(),
                        "reason": reason,
                    },
                )
                await record(
                    tx,
                    caller,
                    "export.decide",
                    target=args["id"],
                    purpose=row["purpose"],
                    detail={
                        "decision": event.value,
                        "rows": row["rows"],
                        "requested_by": row["requested_by"],
                    },
                )
                row = await self._request_row(tx, args["id"])
        if refusal is not None:
            raise refusal
        return {"request": request_json(row)}

    @operation("export.download")
    async def export_download(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        refusal: KuraError | None = None
        async with self.store.transaction() as tx:
            row = await tx.export_request(args["id"], lock=True)
            if row is None:
                raise NotFound()
            purpose, encoding = row["purpose"], row["encoding"]
            try:
                if row["requested_by"] != caller.actor:
                    raise exports.NotRequester()
                after = exports.transition(row["state"], exports.Event.DOWNLOAD)
            except KuraError as exc:
                # A refused take-out is a security event: recorded, then raised
                # once this transaction has committed the record.
                refusal = exc
                await record(
                    tx,
                    caller,
                    "export.download",
                    outcome="denied",
                    target=args["id"],
                    purpose=purpose,
                    detail={"reason": exc.code, "state": row["state"]},
                )
            else:
                ids = [str(i) for i in row["selected_ids"]]
                subjects = await tx.list_subjects(None, None, 0, max(1, len(ids)), ids)
                # Chosen again: a subject disposed of or corrected since is left
                # out; never more than the approved rows.
                chosen = exports.select(
                    [exports.Candidate.from_row(r) for r in subjects], purpose, encoding
                )
                still = set(chosen.included)
                included = [i for i in ids if i in still]
                data = write_file(keys, subjects, included, encoding)
                digest = hashlib.sha256(data).hexdigest()
                await tx.update_export_request(
                    args["id"],
                    {
                        "state": after.value,
                        "downloaded_at": self.clock(),
                        "downloaded_rows": len(included),
                        "sha256": digest,
                    },
                )
                await record(
                    tx,
                    caller,
                    "export.download",
                    target=args["id"],
                    purpose=purpose,
                    detail={
                        "takeout": True,
                        "rows": len(included),
                        "sha256": digest,
                        "encoding": encoding,
                        "approved_by": row["decided_by"] or "(under threshold)",
                    },
                )
        if refusal is not None:
            raise refusal
        return {
            "id": args["id"],
            "rows": len(included),
            "sha256": digest,
            "encoding": encoding,
            "content": base64.b64encode(data).decode(),
            "filename": exports.filename(purpose, row["tax_year"], args["id"]),
            "skipped_purpose": list(chosen.skipped_purpose),
            "unencodable": list(chosen.unencodable),
        }

    async def _request_row(self, tx: Tx, request_id: str) -> Row:
        rows = await tx.list_export_requests(None, None, request_id, 0, 1)
        return rows[0]


def _report(issues: Sequence[exports.Issue]) -> Jsonb:
    # Characters first: what the clerk must correct matters more than the
    # subjects the purpose leaves out, should the report be cut short.
    ordered = sorted(issues, key=lambda i: i.problem == exports.PURPOSE)
    return Jsonb([i.to_json() for i in ordered[:REPORT_LIMIT]])
