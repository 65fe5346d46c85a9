"""Retention rules and disposal: the SA's rules, the due list, batches
proposed by an MU or MA and decided by another MA, and the disposal records.

Approving a batch executes it at once, in the transaction that records the
decision: each subject's wrapped data key and ciphertexts are deleted with
its row (crypto-shredding: without the data key nothing of the subject can
be decrypted again), its documents and registration request go with it, and
one disposal record per kind and basis keeps the count, the operator and the
approver. The audit entries carry counts, never a number or a name.

The rules are also kept in memory (``retention_rules``) so that a subject's
summary can show its disposal date without a query; they are read at unseal,
by every operation here, and after the SA changes one."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from typing import Any

from kura.core import disposal
from kura.core.disposal import RetentionRule, Rules
from kura.core.errors import BadRequest, NotFound
from kura.vault.base import Caller, VaultBase, decision_json, jsonable, operation, record
from kura.vault.store import Row, Tx


class DisposalOperations(VaultBase):
    # Replaced (never changed in place) when the stored rules are read.
    retention_rules: Rules = disposal.DEFAULT_RULES

    async def load_retention_rules(self, tx: Tx) -> Rules:
        rows = sorted(await tx.retention_rules(), key=lambda r: disposal.basis_order(r["basis"]))
        rules = {r["basis"]: RetentionRule.from_row(r) for r in rows}
        self.retention_rules = rules
        return rules

    def _today(self) -> date:
        return disposal.tokyo_date(self.clock())

    # --- retention rules ------------------------------------------------------

    @operation("retention.list")
    async def retention_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            rules = await self.load_retention_rules(tx)
        return {"rules": [r.to_json() for r in rules.values()]}

    @operation("retention.set")
    async def retention_set(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keep_years, anchor = disposal.checked_rule(args["keep_years"], args["anchor"])
        async with self.store.transaction() as tx:
            old = await tx.retention_rule(args["basis"], lock=True)
            if old is None:
                raise NotFound()
            await tx.set_retention_rule(args["basis"], keep_years, anchor)
            await record(
                tx,
                caller,
                "retention.set",
                target=args["basis"],
                detail={
                    "old": {"keep_years": old["keep_years"], "anchor": old["anchor"]},
                    "new": {"keep_years": keep_years, "anchor": anchor},
                },
            )
            rules = await self.load_retention_rules(tx)
        return {"rule": rules[args["basis"]].to_json()}

    # --- what is due ------------------------------------------------------------

    @operation("disposal.due")
    async def disposal_due(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        today = self._today()
        as_of = disposal.parse_date(args["as_of"], "as_of") if "as_of" in args else today
        limit = args.get("limit", 1000)
        async with self.store.transaction() as tx:
            rules = await self.load_retention_rules(tx)
            cutoffs = {
                basis: latest
                for basis, rule in rules.items()
                if (latest := disposal.latest_due_event(rule, as_of)) is not None
            }
            rows = await tx.due_subjects(cutoffs, limit + 1)
            subjects = [
                s for s in _with_due(rules, rows) if s["due"] and s["due"] <= as_of.isoformat()
            ]
            await record(
                tx,
                caller,
                "disposal.due",
                detail={"as_of": as_of.isoformat(), "count": len(subjects)},
            )
        truncated = len(rows) > limit
        subjects = subjects[:limit]
        # By due date; a dependent right after its employee.
        subjects.sort(
            key=lambda s: (s["due"], s["employee_code"] or s["code"], s["kind"] == "dependent")
        )
        return {
            "as_of": as_of.isoformat(),
            "today": today.isoformat(),
            "subjects": subjects,
            "truncated": truncated,
        }

    # --- batches ----------------------------------------------------------------

    @operation("disposal.propose")
    async def disposal_propose(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        ids = list(dict.fromkeys(_uuids(args["subject_ids"], "subject_ids")))
        async with self.store.transaction() as tx:
            await tx.lock_disposals()
            rules = await self.load_retention_rules(tx)
            rows = await tx.disposal_candidates(ids)
            found = {str(r["id"]) for r in rows}
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound(
                    "some of the subjects do not exist (any more)",
                    "存在しない（廃棄済みの）対象者が含まれています。",
                    count=len(missing),
                )
            # The dependents of a proposed employee come along (they go with it).
            _check_all_due(rules, rows, self._today())
            subject_ids = [str(r["id"]) for r in rows]
            if await tx.subjects_in_proposed_batches(subject_ids):
                raise disposal.AlreadyProposed()
            counts = disposal.counts_by_kind(r["kind"] for r in rows)
            batch = await tx.insert_disposal_batch(
                str(uuid.uuid4()), caller.actor, subject_ids, counts
            )
            await record(
                tx,
                caller,
                "disposal.propose",
                target=str(batch["id"]),
                detail={
                    "subjects": len(subject_ids),
                    "by_kind": counts,
                    "dependents_added": len(subject_ids) - len(ids),
                },
            )
        return {"batch": _batch_json(batch)}

    @operation("disposal.list")
    async def disposal_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        offset, limit = args.get("offset", 0), args.get("limit", 50)
        async with self.store.transaction() as tx:
            rules = await self.load_retention_rules(tx)
            rows = await tx.disposal_batches(args.get("state"), offset, limit)
            batches = [_batch_json(r) for r in rows]
            # The subjects of the batches awaiting a decision: what the MA is
            # asked to approve. Only MU and MA see them (an SA sees counts).
            if caller.role in ("MU", "MA"):
                waiting = [i for r in rows if r["state"] == "proposed" for i in r["subject_ids"]]
                subjects = {s["id"]: s for s in _with_due(rules, await tx.batch_subjects(waiting))}
                for batch, row in zip(batches, rows, strict=True):
                    if row["state"] == "proposed":
                        batch["subjects"] = [
                            subjects[str(i)] for i in row["subject_ids"] if str(i) in subjects
                        ]
            await record(tx, caller, "disposal.list", detail={"count": len(rows)})
        return {"batches": batches, "offset": offset, "limit": limit}

    @operation("disposal.decide")
    async def disposal_decide(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        decision = args["decision"]
        _uuids([args["id"]], "id")
        reason = disposal.clean_reason(args.get("reason", ""), required=decision == "reject")
        refusal: disposal.OwnProposal | None = None
        records: list[Row] = []
        async with self.store.transaction() as tx:
            await tx.lock_disposals()
            batch = await tx.disposal_batch(args["id"], lock=True)
            if batch is None:
                raise NotFound("no such disposal batch", "その廃棄申請はありません。")
            state = disposal.next_state(batch["state"], decision)
            try:
                disposal.check_decider(batch["proposed_by"], caller.actor, decision)
            except disposal.OwnProposal as exc:
                # Raised only after this transaction commits the refusal's record.
                refusal = exc
                await record(
                    tx,
                    caller,
                    "disposal.decide",
                    outcome="denied",
                    target=args["id"],
                    detail={"reason": "own_proposal"},
                )
            else:
                if decision == "reject":
                    batch = await tx.finish_disposal_batch(args["id"], state, caller.actor, reason)
                    await record(
                        tx,
                        caller,
                        "disposal.decide",
                        target=args["id"],
                        detail={"decision": decision, "subjects": batch["subject_count"]},
                    )
                else:
                    batch, records = await self._execute(tx, caller, batch, reason)
        if refusal is not None:
            raise refusal
        return {"batch": _batch_json(batch), "records": [jsonable(r) for r in records]}

    async def _execute(
        self, tx: Tx, caller: Caller, batch: Row, reason: str
    ) -> tuple[Row, list[Row]]:
        """Destroy the batch's subjects and write the disposal record."""
        rules = await self.load_retention_rules(tx)
        ids = [str(i) for i in batch["subject_ids"]]
        rows = await tx.disposal_candidates(ids)
        if len({str(r["id"]) for r in rows} & set(ids)) != len(ids):
            raise disposal.NotDue(
                "some of the batch's subjects no longer exist; reject the batch",
                "この申請の対象者の一部が存在しません。申請を却下してください。",
            )
        # Still due today (an MA may have corrected an event, the SA a rule),
        # and with any dependent registered since the proposal.
        _check_all_due(rules, rows, self._today())
        basis_of = {str(r["id"]): r["retention_basis"] for r in rows}
        documents = await tx.shred_subjects(list(basis_of), [bytes(r["number_bidx"]) for r in rows])
        lines = disposal.record_rows(
            ((r["kind"], r["retention_basis"]) for r in rows),
            Counter(basis_of[str(i)] for i in documents),
        )
        records = [
            await tx.insert_disposal_record(
                str(batch["id"]),
                line.kind,
                line.basis,
                line.count,
                disposal.METHOD,
                batch["proposed_by"],
                caller.actor,
            )
            for line in lines
        ]
        counts = disposal.counts_by_kind(r["kind"] for r in rows)
        done = await tx.finish_disposal_batch(
            str(batch["id"]), "approved", caller.actor, reason, executed=counts
        )
        await record(
            tx,
            caller,
            "disposal.decide",
            target=str(batch["id"]),
            detail={
                "decision": "approve",
                "method": disposal.METHOD,
                "subjects": len(rows),
                "by_kind": counts,
                "documents": len(documents),
                "records": [
                    {"kind": line.kind, "basis": line.basis, "count": line.count} for line in lines
                ],
            },
        )
        return done, records

    # --- the disposal records ---------------------------------------------------

    @operation("disposal.records")
    async def disposal_records(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        since = disposal.parse_date(args["since"], "since") if "since" in args else None
        until = disposal.parse_date(args["until"], "until") if "until" in args else None
        offset, limit = args.get("offset", 0), args.get("limit", 200)
        async with self.store.transaction() as tx:
            rows = await tx.disposal_records(
                _tokyo_midnight(since),
                _tokyo_midnight(until + timedelta(days=1) if until else None),
                offset,
                limit,
            )
            await record(tx, caller, "disposal.records", detail={"count": len(rows)})
        return {
            "records": [jsonable(r) for r in rows],
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "offset": offset,
            "limit": limit,
        }


def _with_due(rules: Rules, rows: Iterable[Row]) -> list[dict[str, Any]]:
    """The due-list view of subjects: who, under which basis, since which
    event, due when (never a number)."""
    out = []
    for r in rows:
        due = disposal.subject_due(
            rules,
            r["retention_basis"],
            r["retention_event"],
            r["employee_basis"],
            r["employee_event"],
        )
        out.append(
            {
                "id": str(r["id"]),
                "kind": r["kind"],
                "code": r["code"],
                "name": r["name"],
                "basis": r["retention_basis"],
                "employee_id": str(r["employee_id"]) if r["employee_id"] else None,
                "employee_code": r["employee_code"],
                "event": due.event.isoformat() if due else None,
                "due": due.due.isoformat() if due else None,
                "with_employee": due.with_employee if due else False,
            }
        )
    return out


def _check_all_due(rules: Rules, rows: Iterable[Row], today: date) -> None:
    late = [s for s in _with_due(rules, rows) if s["due"] is None or s["due"] > today.isoformat()]
    if late:
        raise disposal.NotDue(count=len(late))


def _uuids(values: Iterable[str], field: str) -> list[str]:
    """``values`` as canonical UUIDs (the schema's pattern lets a few non-UUIDs by)."""
    try:
        return [str(uuid.UUID(v)) for v in values]
    except ValueError as exc:
        raise BadRequest(
            f"{field}: not a UUID", f"{field}: UUID ではありません。", field=field
        ) from exc


def _batch_json(row: Row) -> dict[str, Any]:
    return {
        **decision_json(row),
        "subject_count": row["subject_count"],
        # jsonb keeps keys in its own order: give them in the kinds' order.
        "counts": {k: row["counts"][k] for k in disposal.RECORD_KINDS if k in row["counts"]},
    }


def _tokyo_midnight(day: date | None) -> datetime | None:
    return datetime.combine(day, time(), disposal.TOKYO) if day else None
