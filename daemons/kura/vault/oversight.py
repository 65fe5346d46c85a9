"""The audit log (search, export bundles) and the keyring
(rotation, re-wrapping data keys)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from kura.core import audit
from kura.vault.base import Caller, VaultBase, jsonable, operation, parse_time, record


class OversightOperations(VaultBase):
    @operation("audit.list")
    async def audit_list(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            rows = await tx.search_audit(
                args.get("actor"),
                args.get("action"),
                parse_time(args.get("since"), "since"),
                parse_time(args.get("until"), "until"),
                args.get("offset", 0),
                args.get("limit", 100),
            )
            await record(tx, caller, "audit.list", detail={"count": len(rows)})
        return {"entries": [jsonable(r) for r in rows]}

    @operation("audit.export")
    async def audit_export(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        async with self.store.transaction() as tx:
            entry = await record(tx, caller, "audit.export")
        async with self.store.transaction() as tx:
            entries = await tx.audit_entries()
            checkpoints = await tx.checkpoints()
        final = audit.sign_checkpoint(
            keys.audit_signing_key, entry.seq, entry.hash, self.clock(), final=True
        )
        bundle = audit.bundle_bytes(entries, checkpoints, final, self.config.appliance)
        digest = hashlib.sha256(bundle).hexdigest()
        # Kept, so that the next export can be shown to extend this one.
        async with self.store.transaction() as tx:
            await tx.insert_export(final, digest, caller.actor)
        return {
            "bundle": base64.b64encode(bundle).decode(),
            "sha256": digest,
            "entries": len(entries),
        }

    @operation("keys.rotate")
    async def keys_rotate(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys()
        version, wrapped = keys.rotate()
        async with self.store.transaction() as tx:
            await tx.add_keyring_version(version, wrapped)
            await record(tx, caller, "keys.rotate", detail={"version": version})
        rewrapped = 0
        if args.get("rewrap"):
            after: str | None = None
            while True:
                async with self.store.transaction() as tx:
                    batch = await tx.subject_keys(after, 1000)
                    moved = 0
                    for r in batch:
                        if r["kek_version"] == version:
                            continue
                        new_version, new_wrapped = keys.rewrap_data_key(
                            str(r["id"]), r["kek_version"], bytes(r["wrapped_key"])
                        )
                        await tx.set_subject_key(r["id"], new_version, new_wrapped)
                        moved += 1
                    rewrapped += moved
                    if moved:
                        await record(
                            tx, caller, "keys.rewrap", detail={"count": moved, "version": version}
                        )
                if len(batch) < 1000:
                    break
                after = str(batch[-1]["id"])
        return {"version": version, "rewrapped": rewrapped}
