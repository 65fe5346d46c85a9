"""Subjects and their numbers: register, look up, list, reveal for a
purpose, correct, bulk import and export for forms. A number is decrypted
only to mask it, to reveal it for a declared purpose, or to export it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from kura.core import exports, importer, numbers, subjects
from kura.core.disposal import Rules, parse_date, summary_fields
from kura.core.errors import (
    BadRequest,
    DuplicateNumber,
    KuraError,
    NotFound,
    PurposeRequired,
)
from kura.core.purposes import BY_CODE
from kura.vault.base import Caller, VaultBase, operation, record
from kura.vault.exports import write_file as write_export
from kura.vault.store import COPY_COLUMNS, Row

IMPORT_BATCH = 2000  # rows per transaction: a crash loses at most one unacknowledged batch


class SubjectOperations(VaultBase):
    retention_rules: Rules  # kept in memory by kura.vault.disposals

    def _summary(self, row: Row) -> dict[str, Any]:
        keys = self._keys()
        sid = str(row["id"])
        dk = keys.open_data_key(sid, row["kek_version"], bytes(row["wrapped_key"]))
        number = dk.decrypt("number", bytes(row["number_ct"])).decode()
        return {
            "id": sid,
            "kind": row["kind"],
            "code": row["code"],
            "name": row["name"],
            "name_kana": row["name_kana"],
            "number_masked": numbers.mask(number),
            "employee_id": str(row["employee_id"]) if row["employee_id"] else None,
            "birth_date": row["birth_date"].isoformat() if row["birth_date"] else None,
            "purposes": list(row["purposes"]),
            "retention_basis": row["retention_basis"],
            "retention_event": row["retention_event"].isoformat()
            if row["retention_event"]
            else None,
            "created_at": row["created_at"].isoformat(),
            **summary_fields(
                self.retention_rules, row["kind"], row["retention_basis"], row["retention_event"]
            ),
        }

    @operation("subject.register")
    async def subject_register(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        subject = subjects.subject_from_json(args)
        keys = self._keys()
        bidx = keys.blind_index("my_number", subject.number)
        async with self.store.transaction() as tx:
            employee_id = None
            if subject.kind == "dependent":
                employee = await tx.subject_by_code("employee", subject.employee_code)
                if employee is None:
                    raise NotFound(
                        "no employee with that code",
                        "その社員コードの社員がいません。",
                        field="employee_code",
                    )
                employee_id = employee["id"]
            same_number = await tx.subject_by_bidx(bidx)
            same_code = (
                None
                if subject.kind == "dependent"
                else await tx.subject_by_code(subject.kind, subject.code)
            )
            refusal: DuplicateNumber | None = None
            try:
                if subjects.already_registered(subject, employee_id, same_number, same_code):
                    assert same_number is not None
                    return {"subject": self._summary(same_number), "created": False}
            except DuplicateNumber as exc:
                # Raised only after this transaction commits the refusal's record.
                refusal = exc
                await record(
                    tx,
                    caller,
                    "subject.register",
                    outcome="denied",
                    detail={"reason": "duplicate_number"},
                )
            else:
                values = self._sealed_row(subject, employee_id, caller.actor)
                await tx.insert_subject(values)
                await record(
                    tx,
                    caller,
                    "subject.register",
                    target=values["id"],
                    detail={"kind": subject.kind},
                )
                row = await tx.subject(values["id"])
        if refusal is not None:
            raise refusal
        assert row is not None
        return {"subject": self._summary(row), "created": True}

    @operation("subject.lookup")
    async def subject_lookup(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        if ("number" in args) == ("code" in args):
            raise BadRequest(
                "give exactly one of number or code",
                "番号またはコードのどちらか一方を指定してください。",
            )
        async with self.store.transaction() as tx:
            if "number" in args:
                number = numbers.parse_my_number(args["number"])
                row = await tx.subject_by_bidx(self._keys().blind_index("my_number", number))
                by = "number"
            else:
                row = await tx.subject_by_code(args.get("kind", "payee"), args["code"])
                by = "code"
            await record(
                tx,
                caller,
                "subject.lookup",
                target=str(row["id"]) if row else "",
                detail={"by": by, "found": row is not None},
            )
        return {"subjects": [self._summary(row)] if row else []}

    @operation("subject.get")
    async def subject_get(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            row = await tx.subject(args["id"])
            if row is None:
                raise NotFound()
            await record(tx, caller, "subject.get", target=args["id"])
        return {"subject": self._summary(row)}

    @operation("subject.list")
    async def subject_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        offset, limit = args.get("offset", 0), args.get("limit", 50)
        async with self.store.transaction() as tx:
            rows = await tx.list_subjects(args.get("kind"), args.get("query"), offset, limit)
            await record(tx, caller, "subject.list", detail={"count": len(rows)})
        return {"subjects": [self._summary(r) for r in rows], "offset": offset, "limit": limit}

    @operation("subject.reveal")
    async def subject_reveal(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        purpose = args["purpose"]
        async with self.store.transaction() as tx:
            row = await tx.subject(args["id"])
            if row is None:
                raise NotFound()
            allowed = list(row["purposes"])
            if purpose not in allowed:
                # Raised only after this transaction commits the refusal's record.
                await record(
                    tx,
                    caller,
                    "subject.reveal",
                    outcome="denied",
                    target=args["id"],
                    purpose=_safe_purpose(purpose),
                    detail={"reason": "purpose"},
                )
            else:
                dk = self._keys().open_data_key(
                    str(row["id"]), row["kek_version"], bytes(row["wrapped_key"])
                )
                number = dk.decrypt("number", bytes(row["number_ct"])).decode()
                await record(tx, caller, "subject.reveal", target=args["id"], purpose=purpose)
        if purpose not in allowed:
            raise PurposeRequired(allowed=allowed)
        # The subject's (masked) record too, so a page can show both at once.
        return {"id": args["id"], "number": number, "purpose": purpose,
                "subject": self._summary(row)}

    @operation("subject.correct")
    async def subject_correct(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        refusal: DuplicateNumber | None = None
        async with self.store.transaction() as tx:
            row = await tx.subject(args["id"], lock=True)
            if row is None:
                raise NotFound()
            changes: dict[str, Any] = {}
            for field in ("name", "name_kana"):
                if field in args:
                    changes[field] = subjects.clean_text_field(field, args[field])
            if "purposes" in args:
                unknown = [p for p in args["purposes"] if p not in BY_CODE]
                if unknown or not args["purposes"]:
                    raise BadRequest(
                        "unknown or no purposes", "利用目的が正しくありません。", field="purposes"
                    )
                changes["purposes"] = list(dict.fromkeys(args["purposes"]))
            if "retention_event" in args:
                changes["retention_event"] = (
                    parse_date(args["retention_event"], "retention_event")
                    if args["retention_event"]
                    else None
                )
            if "number" in args:
                number = numbers.parse_my_number(args["number"])
                bidx = keys.blind_index("my_number", number)
                other = await tx.subject_by_bidx(bidx)
                if other is not None and other["id"] != row["id"]:
                    # Correcting is not a way to ask "is this number registered?":
                    # the answer names no one (no id, code or name), nothing is
                    # changed, and the attempt is on the record — raised only
                    # after this transaction commits that record.
                    refusal = DuplicateNumber()
                else:
                    dk = keys.open_data_key(
                        str(row["id"]), row["kek_version"], bytes(row["wrapped_key"])
                    )
                    changes["number_ct"] = dk.encrypt("number", number.encode())
                    changes["number_bidx"] = bidx
            if refusal is not None:
                await record(
                    tx,
                    caller,
                    "subject.correct",
                    outcome="denied",
                    target=args["id"],
                    detail={"reason": "duplicate_number"},
                )
            else:
                if changes:
                    await tx.update_subject(args["id"], changes)
                await record(
                    tx,
                    caller,
                    "subject.correct",
                    target=args["id"],
                    detail={"fields": sorted(k for k in changes if k != "number_bidx")},
                )
            row = await tx.subject(args["id"])
        if refusal is not None:
            raise refusal
        assert row is not None
        return {"subject": self._summary(row)}

    @operation("subject.import")
    async def subject_import(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        if "csv" in args:
            try:
                raw = base64.b64decode(args["csv"], validate=True)
            except ValueError as exc:
                raise BadRequest("csv must be base64", "csv は base64 で送ってください。") from exc
            parsed = importer.parse_csv(raw)
        else:
            parsed = importer.parse_rows(args.get("rows", []))
        self._keys()
        rejections = [_rejection_json(r) for r in parsed.rejections]
        # Rows refused while reading the file (here, or by the console, which
        # parses an uploaded file itself and says how many it refused) are
        # counted in the first batch's audit entry — or in an entry of their
        # own when no row was left to store.
        refused_reading = len(parsed.rejections) + args.get("refused_on_parse", 0)
        created = existing = 0
        records = sorted(parsed.records, key=lambda r: r.subject.kind != "employee")
        if not records and refused_reading:
            async with self.store.transaction() as tx:
                await record(tx, caller, "subject.import", detail=_import_counts(refused_reading))
        for start in range(0, len(records), IMPORT_BATCH):
            batch = records[start : start + IMPORT_BATCH]
            for attempt in range(3):
                try:
                    c, e, rej = await self._import_batch(
                        caller, batch, refused_reading if start == 0 else 0
                    )
                    break
                except psycopg.errors.UniqueViolation:
                    # Someone registered one of these numbers meanwhile: classify again.
                    if attempt == 2:
                        raise
            created += c
            existing += e
            rejections += rej
            await asyncio.sleep(0)
        rejections.sort(key=lambda r: r["line"])
        return {
            "created": created,
            "existing": existing,
            "rejected": rejections,
            "total": len(parsed.records) + len(parsed.rejections),
        }

    async def _import_batch(
        self, caller: Caller, batch: Sequence[importer.ImportRecord], refused_reading: int = 0
    ) -> tuple[int, int, list[dict[str, Any]]]:
        keys = self._keys()
        bidxs = [keys.blind_index("my_number", r.subject.number) for r in batch]
        rejections: list[dict[str, Any]] = []
        existing = 0
        async with self.store.transaction() as tx:
            found = await tx.subjects_matching(bidxs, [r.subject.code for r in batch])
            by_bidx = {bytes(f["number_bidx"]): f for f in found}
            by_code = {(f["kind"], f["code"]): f for f in found}
            employees = await tx.employee_ids(
                [r.subject.employee_code for r in batch if r.subject.kind == "dependent"]
            )
            created = 0

            def sealed_rows() -> Iterator[list[Any]]:
                # Sealed one by one as COPY takes them, so that PostgreSQL stores
                # the first rows while the vault still encrypts the next ones.
                nonlocal created, existing
                for record, bidx in zip(batch, bidxs, strict=True):
                    s = record.subject
                    employee_id = None
                    if s.kind == "dependent":
                        employee_id = employees.get(s.employee_code)
                        if employee_id is None:
                            rejections.append(
                                _reject(
                                    record.line,
                                    "employee_code",
                                    NotFound(
                                        "no employee with that code",
                                        "その社員コードの社員がいません。",
                                    ),
                                )
                            )
                            continue
                    same_code = None if s.kind == "dependent" else by_code.get((s.kind, s.code))
                    try:
                        if subjects.already_registered(
                            s, employee_id, by_bidx.get(bidx), same_code
                        ):
                            existing += 1
                            continue
                    except KuraError as exc:
                        field = "number" if isinstance(exc, DuplicateNumber) else "code"
                        rejections.append(_reject(record.line, field, exc))
                        continue
                    values = self._sealed_row(s, employee_id, caller.actor, bidx)
                    if s.kind == "employee":
                        employees[s.code] = uuid.UUID(values["id"])
                    by_code[(s.kind, s.code)] = values
                    by_bidx[bidx] = values
                    created += 1
                    yield [values[c] for c in COPY_COLUMNS]

            await tx.copy_subjects(sealed_rows())
            await record(
                tx,
                caller,
                "subject.import",
                detail=_import_counts(refused_reading, created, existing, len(rejections)),
            )
        return created, existing, rejections

    @operation("subject.export")
    async def subject_export(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        purpose = args["purpose"]
        if purpose not in BY_CODE:
            raise PurposeRequired()
        encoding = args.get("encoding", "shift_jis")
        keys = self._keys()
        threshold = self.policy.export_approval_threshold
        refusal: exports.ApprovalRequired | None = None
        async with self.store.transaction() as tx:
            rows = await tx.list_subjects(args.get("kind"), None, 0, 1_000_000, args.get("ids"))
            if "ids" in args and len(rows) != len(set(args["ids"])):
                raise NotFound("some subjects do not exist", "存在しない対象者が含まれています。")
            # The same choice and the same file as an export request's download
            # (kura.vault.exports), but without an MA: so never over the threshold.
            chosen = exports.select(
                [exports.Candidate.from_row(r) for r in rows], purpose, encoding
            )
            if chosen.rows > threshold:
                # Raised only after this transaction commits the refusal's record.
                refusal = exports.ApprovalRequired(chosen.rows, threshold)
                await record(
                    tx,
                    caller,
                    "subject.export",
                    outcome="denied",
                    purpose=purpose,
                    detail={
                        "reason": "approval_required",
                        "rows": chosen.rows,
                        "threshold": threshold,
                    },
                )
            else:
                data = write_export(keys, rows, chosen.included, encoding)
                digest = hashlib.sha256(data).hexdigest()
                await record(
                    tx,
                    caller,
                    "subject.export",
                    purpose=purpose,
                    detail={
                        "rows": chosen.rows,
                        "sha256": digest,
                        "encoding": encoding,
                        "skipped": len(chosen.skipped_purpose),
                        "unencodable": len(chosen.unencodable),
                    },
                )
        if refusal is not None:
            raise refusal
        return {
            "rows": chosen.rows,
            "sha256": digest,
            "encoding": encoding,
            "content": base64.b64encode(data).decode(),
            "skipped_purpose": list(chosen.skipped_purpose),
            "unencodable": list(chosen.unencodable),
            "report": [issue.to_json() for issue in chosen.issues],
        }


def _safe_purpose(purpose: str) -> str:
    return purpose if purpose in BY_CODE else "(unknown)"


def _reject(line: int, field: str, error: KuraError) -> dict[str, Any]:
    return {
        "line": line,
        "field": field,
        "code": error.code,
        "message": error.message_ja,
        "message_en": error.message_en,
    }


def _rejection_json(r: importer.Rejection) -> dict[str, Any]:
    return {"line": r.line, "field": r.field, "code": r.code, "message": r.ja, "message_en": r.en}


def _import_counts(
    refused_reading: int, created: int = 0, existing: int = 0, refused_storing: int = 0
) -> dict[str, int]:
    """An import batch's audit detail: ``rejected`` counts every refused row,
    those refused while reading the file included (``rejected_reading``)."""
    return {
        "created": created,
        "existing": existing,
        "rejected": refused_reading + refused_storing,
        "rejected_reading": refused_reading,
    }
