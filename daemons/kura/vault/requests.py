"""Registration requests in the vault: a clerk creates one and gets its link
once; the employee opens and submits through the link (no session: the token
is the credential); an MA reviews the entries beside the documents, then
approves (the numbers become subjects) or rejects; a rejected or expired
request is reissued with a new link. The state machine and every rule about
what may be submitted live in kura.core.requests.

Each entry and each document is a record with its own data key (associated
data: the record's id and the field), like a subject. On approval the numbers
are decrypted and sealed again under each new subject's own key, and the
entries are deleted; the documents move to the employee's subject, or are
deleted when the request said so. No audit entry carries a number, a name or
a code a clerk typed (any of which could be a number typed by mistake)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from kura.core import numbers, subjects
from kura.core import requests as core
from kura.core.audit import looks_like_my_number
from kura.core.errors import BadRequest, Conflict, DuplicateNumber, KuraError, NotFound
from kura.core.purposes import BY_CODE
from kura.vault.base import Caller, VaultBase, operation, record
from kura.vault.store import Row, Tx


class RequestOperations(VaultBase):
    # --- what a request looks like from outside --------------------------------

    def _request_summary(self, row: Row, now: datetime) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        state = core.effective_state(row["state"], row["expires_at"], now)
        summary: dict[str, Any] = {
            "id": str(row["id"]),
            "name": row["name"],
            "name_kana": row["name_kana"],
            "employee_code": row["employee_code"],
            "purposes": list(row["purposes"]),
            "state": state,
            "actions": sorted(core.allowed_events(state)),
            "expires_at": when(row["expires_at"]),
            "expires_days": row["expires_days"],
            "issued_at": when(row["issued_at"]),
            "links_issued": row["links_issued"],
            "purge_documents": row["purge_documents"],
            "documents_purged_at": when(row["documents_purged_at"]),
            "created_by": row["created_by"],
            "created_at": when(row["created_at"]),
            "submitted_at": when(row["submitted_at"]),
            "decided_by": row["decided_by"],
            "decided_at": when(row["decided_at"]),
            "reason": row["reason"],
            "subject_id": str(row["subject_id"]) if row["subject_id"] else None,
        }
        if "entry_count" in row:
            summary["entry_count"] = int(row["entry_count"])
        return summary

    async def _request_or_404(self, tx: Tx, request_id: str, lock: bool = False) -> Row:
        row = await tx.request(request_id, lock=lock)
        if row is None:
            raise NotFound("no such registration request", "その登録依頼はありません。")
        return row

    # --- the clerk's side ---------------------------------------------------------

    @operation("request.create")
    async def request_create(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        draft = core.make_draft(
            name=args["name"],
            name_kana=args.get("name_kana", ""),
            employee_code=args["employee_code"],
            purposes=args["purposes"],
            expires_days=args.get("expires_days", core.DEFAULT_EXPIRY_DAYS),
            purge_documents=args.get("purge_documents", False),
        )
        self._keys()
        token, digest = core.new_token()
        now = self.clock()
        request_id = str(uuid.uuid4())
        async with self.store.transaction() as tx:
            await tx.insert_request(
                {
                    "id": request_id,
                    "employee_code": draft.employee_code,
                    "name": draft.name,
                    "name_kana": draft.name_kana,
                    "purposes": list(draft.purposes),
                    "token_digest": digest,
                    "state": core.OPEN,
                    "expires_at": core.expiry(now, draft.expires_days),
                    "expires_days": draft.expires_days,
                    "issued_at": now,
                    "created_by": caller.actor,
                    "created_at": now,
                    "purge_documents": draft.purge_documents,
                }
            )
            await record(
                tx,
                caller,
                "request.create",
                target=request_id,
                detail={
                    "purposes": list(draft.purposes),
                    "expires_days": draft.expires_days,
                    "purge_documents": draft.purge_documents,
                },
            )
            row = await self._request_or_404(tx, request_id)
        # The token leaves the vault this once; only its digest is kept.
        return {"request": self._request_summary(row, now), "token": token}

    @operation("request.list")
    async def request_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        offset, limit = args.get("offset", 0), args.get("limit", 100)
        now = self.clock()
        async with self.store.transaction() as tx:
            rows = await tx.list_requests(args.get("state"), args.get("id"), now, offset, limit)
            await record(tx, caller, "request.list", detail={"count": len(rows)})
        return {
            "requests": [self._request_summary(r, now) for r in rows],
            "offset": offset,
            "limit": limit,
        }

    @operation("request.get")
    async def request_get(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """The request with what the employee entered, numbers in full, so that
        the MA can compare them with the documents (recorded as a review)."""
        keys = self._keys()
        now = self.clock()
        async with self.store.transaction() as tx:
            row = await self._request_or_404(tx, args["id"])
            entry_rows = await tx.request_entries(args["id"])
            documents = await tx.request_documents(args["id"], row["subject_id"])
            entries = []
            for e in entry_rows:
                dk = keys.open_data_key(str(e["id"]), e["kek_version"], bytes(e["wrapped_key"]))
                number = dk.decrypt("number", bytes(e["number_ct"])).decode()
                entries.append(
                    {
                        "position": e["position"],
                        "relation": e["relation"],
                        "name": e["name"],
                        "name_kana": e["name_kana"],
                        "birth_date": e["birth_date"].isoformat() if e["birth_date"] else None,
                        "number": number,
                        "number_masked": numbers.mask(number),
                    }
                )
            await record(
                tx,
                caller,
                "request.get",
                target=args["id"],
                detail={"entries": len(entries), "documents": len(documents)},
            )
        return {
            "request": self._request_summary(row, now),
            "entries": entries,
            "documents": [
                {
                    "id": str(d["id"]),
                    "kind": d["kind"],
                    "content_type": d["content_type"],
                    "size": d["size"],
                    "created_at": d["created_at"].isoformat(),
                }
                for d in documents
            ],
        }

    @operation("request.document")
    async def request_document(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        async with self.store.transaction() as tx:
            row = await self._request_or_404(tx, args["id"])
            doc = await tx.document(args["document_id"])
            belongs = doc is not None and (
                str(doc["request_id"]) == args["id"]
                or (row["subject_id"] is not None and doc["subject_id"] == row["subject_id"])
            )
            if doc is None or not belongs:
                raise NotFound("no such document", "その書類はありません。")
            dk = keys.open_data_key(str(doc["id"]), doc["kek_version"], bytes(doc["wrapped_key"]))
            content = dk.decrypt("content", bytes(doc["content_ct"]))
            await record(
                tx,
                caller,
                "request.document",
                target=args["id"],
                detail={"document": str(doc["id"]), "kind": doc["kind"]},
            )
        return {
            "id": str(doc["id"]),
            "kind": doc["kind"],
            "content_type": doc["content_type"],
            "size": len(content),
            "content": base64.b64encode(content).decode(),
        }

    @operation("request.approve")
    async def request_approve(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        self._keys()
        now = self.clock()
        refusal: KuraError | None = None
        try:
            async with self.store.transaction() as tx:
                row = await self._request_or_404(tx, args["id"], lock=True)
                state = core.effective_state(row["state"], row["expires_at"], now)
                new_state = core.next_state(state, core.APPROVE)
                entries = await tx.request_entries(args["id"])
                people = [self._entry_subject(row, e) for e in entries]
                if not people or people[0].kind != "employee":
                    raise Conflict(
                        "the request holds no entry for the employee",
                        "この依頼には本人の入力がありません。",
                    )
                refusal = await self._approval_refusal(tx, row, people)
                if refusal is not None:
                    # Raised only after this transaction commits the refusal's record.
                    await record(
                        tx,
                        caller,
                        "request.approve",
                        outcome="denied",
                        target=args["id"],
                        detail={"reason": refusal.code, **_safe_detail(refusal)},
                    )
                else:
                    employee = self._sealed_row(people[0], None, caller.actor)
                    await tx.insert_subject(employee)
                    for person in people[1:]:
                        await tx.insert_subject(
                            self._sealed_row(person, employee["id"], caller.actor)
                        )
                    changes: dict[str, Any] = {
                        "state": new_state,
                        "decided_by": caller.actor,
                        "decided_at": now,
                        "subject_id": employee["id"],
                    }
                    if row["purge_documents"]:
                        documents = await tx.delete_request_documents(args["id"])
                        changes["documents_purged_at"] = now
                    else:
                        documents = await tx.move_documents_to_subject(args["id"], employee["id"])
                    # The numbers live on in the subjects, under their own keys.
                    await tx.delete_request_entries(args["id"])
                    await tx.update_request(args["id"], changes)
                    await record(
                        tx,
                        caller,
                        "request.approve",
                        target=args["id"],
                        detail={
                            "subject": employee["id"],
                            "dependents": len(people) - 1,
                            "documents": documents,
                            "documents_purged": bool(row["purge_documents"]),
                        },
                    )
                    row = await self._request_or_404(tx, args["id"])
        except psycopg.errors.UniqueViolation as exc:
            # Someone registered one of these numbers or the code meanwhile.
            raise DuplicateNumber(
                "a number or the employee code was registered meanwhile; open the request again",
                "番号または社員コードがその間に登録されました。依頼を開き直してください。",
            ) from exc
        if refusal is not None:
            raise refusal
        return {"request": self._request_summary(row, now), "subject_id": str(row["subject_id"])}

    def _entry_subject(self, request: Row, entry: Row) -> subjects.SubjectInput:
        keys = self._keys()
        dk = keys.open_data_key(str(entry["id"]), entry["kek_version"], bytes(entry["wrapped_key"]))
        number = dk.decrypt("number", bytes(entry["number_ct"])).decode()
        employee = entry["relation"] == core.SELF
        return subjects.make_subject(
            kind="employee" if employee else "dependent",
            code=request["employee_code"]
            if employee
            else core.dependent_code(request["employee_code"], entry["position"]),
            name=entry["name"],
            name_kana=entry["name_kana"],
            number=number,
            purposes=list(request["purposes"]),
            employee_code="" if employee else request["employee_code"],
            birth_date=entry["birth_date"],
            retention_basis="employment",
        )

    async def _approval_refusal(
        self, tx: Tx, request: Row, people: Sequence[subjects.SubjectInput]
    ) -> KuraError | None:
        """Why these people cannot become subjects, or None: a number that is
        already registered, or an employee code that is taken."""
        keys = self._keys()
        for position, person in enumerate(people):
            other = await tx.subject_by_bidx(keys.blind_index("my_number", person.number))
            if other is not None:
                who_en = "the employee's" if position == 0 else f"dependent {position}'s"
                who_ja = "本人" if position == 0 else f"扶養親族{position}"
                return DuplicateNumber(
                    f"{who_en} number is already registered for another person"
                    f" ({other['kind']} {other['code']}); reject the request or correct the"
                    " existing record first",
                    f"{who_ja}の個人番号は別の人（{other['kind']} {other['code']}）に登録済みです。"
                    "依頼を差し戻すか、既存の登録を先に訂正してください。",
                    entry=position,
                    subject=str(other["id"]),
                )
        if await tx.subject_by_code("employee", request["employee_code"]) is not None:
            return Conflict(
                "an employee with this employee code is already registered",
                "この社員コードの社員はすでに登録されています。",
                field="employee_code",
            )
        return None

    @operation("request.reject")
    async def request_reject(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        reason = " ".join(args["reason"].split())
        if not reason:
            raise BadRequest("give a reason", "差戻しの理由を入力してください。", field="reason")
        if looks_like_my_number(reason):
            raise BadRequest(
                "the reason must not contain a number",
                "理由に個人番号を書かないでください。",
                field="reason",
            )
        return await self._transition(caller, args["id"], core.REJECT, reason=reason)

    @operation("request.cancel")
    async def request_cancel(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return await self._transition(caller, args["id"], core.CANCEL)

    async def _transition(
        self, caller: Caller, request_id: str, event: str, reason: str = ""
    ) -> dict[str, Any]:
        now = self.clock()
        async with self.store.transaction() as tx:
            row = await self._request_or_404(tx, request_id, lock=True)
            state = core.effective_state(row["state"], row["expires_at"], now)
            new_state = core.next_state(state, event)
            changes: dict[str, Any] = {"state": new_state}
            detail: dict[str, Any] = {"from": state}
            if event == core.REJECT:
                changes.update(decided_by=caller.actor, decided_at=now, reason=reason)
            if event == core.CANCEL:
                # A cancelled request keeps nothing an employee sent, and no live link.
                changes["token_digest"] = core.burnt_digest()
                detail["entries_deleted"] = await tx.delete_request_entries(request_id)
                detail["documents_deleted"] = await tx.delete_request_documents(request_id)
            await tx.update_request(request_id, changes)
            await record(tx, caller, f"request.{event}", target=request_id, detail=detail)
            row = await self._request_or_404(tx, request_id)
        return {"request": self._request_summary(row, now)}

    @operation("request.reissue")
    async def request_reissue(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        self._keys()
        now = self.clock()
        token, digest = core.new_token()
        async with self.store.transaction() as tx:
            row = await self._request_or_404(tx, args["id"], lock=True)
            state = core.effective_state(row["state"], row["expires_at"], now)
            new_state = core.next_state(state, core.REISSUE)
            days = args.get("expires_days", row["expires_days"])
            entries = await tx.delete_request_entries(args["id"])
            documents = await tx.delete_request_documents(args["id"])
            await tx.update_request(
                args["id"],
                {
                    "state": new_state,
                    "token_digest": digest,
                    "expires_at": core.expiry(now, days),
                    "expires_days": days,
                    "issued_at": now,
                    "submitted_at": None,
                    "links_issued": row["links_issued"] + 1,
                },
            )
            await record(
                tx,
                caller,
                "request.reissue",
                target=args["id"],
                detail={
                    "from": state,
                    "links_issued": row["links_issued"] + 1,
                    "entries_deleted": entries,
                    "documents_deleted": documents,
                },
            )
            row = await self._request_or_404(tx, args["id"])
        return {"request": self._request_summary(row, now), "token": token}

    # --- the employee's side: the token is the credential --------------------------

    async def _live_request(
        self, caller: Caller, op: str, token: str, record_opening: bool = False
    ) -> Row:
        """The open request this token belongs to, or LinkInvalid (recorded):
        used, expired, cancelled and unknown links get the same answer.
        ``record_opening`` records that the link was opened, and from where."""
        now = self.clock()
        async with self.store.transaction() as tx:
            row = await tx.request_by_token(core.token_digest(token))
            if (
                row is not None
                and core.effective_state(row["state"], row["expires_at"], now) == core.OPEN
            ):
                if record_opening:
                    await record(tx, caller, op, target=str(row["id"]), detail={"via": "link"})
                return row
            await record(
                tx,
                caller,
                op,
                outcome="denied",
                target=str(row["id"]) if row else "",
                detail={"reason": "link_invalid", "via": "link"},
            )
        raise core.LinkInvalid()

    @operation("request.open")
    async def request_open(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        self._keys()
        row = await self._live_request(caller, "request.open", args["token"], True)
        return {
            "name": row["name"],
            "purposes": [
                {"code": code, "ja": BY_CODE[code].ja, "en": BY_CODE[code].en}
                for code in row["purposes"]
                if code in BY_CODE
            ],
            "expires_at": row["expires_at"].isoformat(),
            "max_dependents": core.MAX_DEPENDENTS,
            "max_document_bytes": core.MAX_DOCUMENT_BYTES,
        }

    @operation("request.submit")
    async def request_submit(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        row = await self._live_request(caller, "request.submit", args["token"])
        try:
            submission = core.make_submission(
                args["entries"], args["documents"], row["name"], row["name_kana"]
            )
        except KuraError as exc:
            async with self.store.transaction() as tx:
                await record(
                    tx,
                    caller,
                    "request.submit",
                    outcome="denied",
                    target=str(row["id"]),
                    detail={"reason": exc.code, "via": "link", **_safe_detail(exc)},
                )
            raise
        request_id = str(row["id"])
        # Sealed before the transaction: encrypting a few megabytes should not hold locks.
        entry_rows = []
        for entry in submission.entries:
            eid = str(uuid.uuid4())
            dk, version, wrapped = keys.new_data_key(eid)
            entry_rows.append(
                {
                    "id": eid,
                    "request_id": request_id,
                    "position": entry.position,
                    "relation": entry.relation,
                    "name": entry.name,
                    "name_kana": entry.name_kana,
                    "birth_date": entry.birth_date,
                    "kek_version": version,
                    "wrapped_key": wrapped,
                    "number_ct": dk.encrypt("number", entry.number.encode()),
                    "number_bidx": keys.blind_index("my_number", entry.number),
                }
            )
        document_rows = []
        for document in submission.documents:
            did = str(uuid.uuid4())
            dk, version, wrapped = keys.new_data_key(did)
            document_rows.append(
                {
                    "id": did,
                    "request_id": request_id,
                    "kind": document.kind,
                    "content_type": document.content_type,
                    "size": len(document.content),
                    "entry_position": 0,
                    "kek_version": version,
                    "wrapped_key": wrapped,
                    "content_ct": dk.encrypt("content", document.content),
                }
            )
        now = self.clock()
        async with self.store.transaction() as tx:
            # Again under the row's lock: a second submission racing this one
            # finds the link already burnt.
            current = await tx.request_by_token(core.token_digest(args["token"]))
            live = (
                current is not None
                and core.effective_state(current["state"], current["expires_at"], now) == core.OPEN
            )
            if live:
                await tx.delete_request_entries(request_id)
                await tx.delete_request_documents(request_id)
                for values in entry_rows:
                    await tx.insert_request_entry(values)
                for values in document_rows:
                    await tx.insert_document(values)
                await tx.update_request(
                    request_id,
                    {
                        "state": core.next_state(core.OPEN, core.SUBMIT),
                        "submitted_at": now,
                        "token_digest": core.burnt_digest(),
                    },
                )
            await record(
                tx,
                caller,
                "request.submit",
                outcome="ok" if live else "denied",
                target=request_id,
                detail={
                    "via": "link",
                    "dependents": len(entry_rows) - 1,
                    "documents": [d["content_type"] for d in document_rows],
                }
                if live
                else {"reason": "link_invalid", "via": "link"},
            )
        if not live:
            raise core.LinkInvalid()
        return {
            "state": core.SUBMITTED,
            "dependents": len(entry_rows) - 1,
            "documents": len(document_rows),
        }


def _safe_detail(exc: KuraError) -> dict[str, Any]:
    """What of an error's detail may go into the audit log: which entry and
    field, and the rule, never a value."""
    keep = {}
    for key in ("entry", "field", "reason", "kind"):
        value = exc.detail.get(key)
        if isinstance(value, int | str) and not looks_like_my_number(str(value)):
            keep[key] = value
    return keep
