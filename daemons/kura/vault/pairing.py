"""Both halves of pairing a standby (kura.core.pairing has the protocol).

On the primary, :class:`PairingOperations` is the vault's part: the DA hands
in the standby's offer and the code typed from the standby's screen
(``ha.pair``); an SA approves the standby it names (``ha.approve``, see
``pairing.requires_approval``), and only then is the envelope made. Proposals
live in the vault's memory: they last no longer than the offer (15 minutes),
and a restart simply means the DA starts again.

On the standby, :func:`save_offer`, :func:`pending_offer` and :func:`accept`
keep the pending offer in ``pairing.json`` on the keys partition (0600, in
the 0700 folder where the sealed root key is about to live) and seal the
root key that arrives. The file, not memory, because the offer must outlive
the process that made it: ``kura ha offer`` and ``kura ha accept`` are two
commands, and the first-boot wizard may restart while the DA walks to the
primary. It is removed once an envelope opens, after ``ATTEMPTS`` refused
envelopes, and when it is found expired.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kura.config import Config
from kura.core import pairing
from kura.core.errors import (
    BadRequest,
    Conflict,
    KuraError,
    NotFound,
    PairingEnvelopeRejected,
    PairingOfferExpired,
    PairingWrongRootKey,
    VaultSealed,
)
from kura.core.keys import root_check_value
from kura.fsutil import write_atomic
from kura.vault import sealing
from kura.vault.base import Caller, Clock, VaultBase, operation, record, utcnow
from kura.vault.store import Store

PENDING_FILE = "pairing.json"  # the standby's pending offer (secret: 0600)
PAIRED_FILE = "paired.json"  # what the primary sent besides the key (not secret)


@dataclass
class _Proposal:
    id: str
    offer: pairing.Offer
    code: str  # held only until the SA decides or the offer expires
    proposed_by: str
    proposed_at: datetime
    monitor_uri: str
    ca_certificate: str
    state: str = "proposed"  # proposed | approved | rejected
    decided_by: str = ""
    envelope: dict[str, Any] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "standby": self.offer.appliance,
            "address": self.offer.address,
            "fingerprint": self.offer.fingerprint,
            "expires": self.offer.expires.isoformat(),
            "proposed_by": self.proposed_by,
            "proposed_at": self.proposed_at.isoformat(),
            "decided_by": self.decided_by or None,
        }
        if self.envelope is not None:
            body["envelope"] = self.envelope
        return body


class PairingOperations(VaultBase):
    """ha.pair (DA), ha.approve / ha.reject (SA), ha.pairings (DA, SA)."""

    def __init__(self, config: Config, store: Store, clock: Clock = utcnow) -> None:
        super().__init__(config, store, clock)
        self.pairings: dict[str, _Proposal] = {}

    @operation("ha.pair")
    async def ha_pair(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        self._forget_stale_pairings(now)
        offer = pairing.Offer.from_json(args["offer"])
        detail = {"standby": offer.appliance, "address": offer.address,
                  "offer": offer.fingerprint}
        try:
            offer.check_fresh(now)
            code = pairing.normalise_code(args["code"])
        except KuraError as exc:
            async with self.store.transaction() as tx:
                await record(tx, caller, "ha.pair", outcome="denied", target=offer.appliance,
                             detail={**detail, "reason": exc.code})
            raise
        proposal = _Proposal(
            id=str(uuid.uuid4()),
            offer=offer,
            code=code,
            proposed_by=caller.actor,
            proposed_at=now,
            # The standby's keeper joins the monitor this primary follows,
            # unless the caller names another.
            monitor_uri=str(args.get("monitor_uri")
                            or (self.config.ha.monitor if self.config.ha else "")),
            ca_certificate=str(args.get("ca_certificate", "")),
        )
        detail["code_digest"] = pairing.code_digest(offer, code)
        if not pairing.requires_approval():
            await self._make_envelope(caller, proposal, now)
            return proposal.to_json()
        async with self.store.transaction() as tx:
            await record(tx, caller, "ha.pair.propose", target=offer.appliance,
                         detail={**detail, "id": proposal.id})
        self.pairings[proposal.id] = proposal
        return proposal.to_json()

    @operation("ha.approve")
    async def ha_approve(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        proposal = await self._open_proposal(caller, "ha.approve", args["id"], now)
        await self._make_envelope(caller, proposal, now)
        return proposal.to_json()

    @operation("ha.reject")
    async def ha_reject(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        proposal = await self._open_proposal(caller, "ha.reject", args["id"], now)
        proposal.state, proposal.decided_by, proposal.code = "rejected", caller.actor, ""
        async with self.store.transaction() as tx:
            await record(tx, caller, "ha.pair.reject", target=proposal.offer.appliance,
                         detail={"id": proposal.id, "proposed_by": proposal.proposed_by,
                                 "reason": str(args.get("reason", ""))})
        return proposal.to_json()

    @operation("ha.pairings")
    async def ha_pairings(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """The pairings of the last 15 minutes; an approved one carries its
        envelope (encrypted to the standby: not secret) for the DA to deliver."""
        self._forget_stale_pairings(self.clock())
        return {
            "pairings": [p.to_json() for p in self.pairings.values()],
            "requires_approval": pairing.requires_approval(),
        }

    # -- steps --------------------------------------------------------------------

    async def _open_proposal(
        self, caller: Caller, action: str, proposal_id: str, now: datetime
    ) -> _Proposal:
        self._forget_stale_pairings(now)
        proposal = self.pairings.get(proposal_id)
        reason = ("unknown" if proposal is None
                  else "decided" if proposal.state != "proposed"
                  else "expired" if now >= proposal.offer.expires else None)
        if reason is not None:
            async with self.store.transaction() as tx:
                await record(tx, caller, action, outcome="denied", target=proposal_id,
                             detail={"reason": reason})
            if reason == "expired":
                raise PairingOfferExpired()
            if reason == "decided":
                raise Conflict(
                    en="This pairing has already been decided.",
                    ja="このペアリングはすでに決定済みです。",
                )
            raise NotFound()
        assert proposal is not None
        return proposal

    async def _make_envelope(self, caller: Caller, proposal: _Proposal, now: datetime) -> None:
        root_key = self.root_key
        if root_key is None or self.seal is None:
            raise VaultSealed()
        seal = self.seal
        params = pairing.PairingParams(
            primary=self.config.appliance,
            seal_mode=seal.mode,
            shares=(
                (seal.threshold, seal.count, seal.identifier)
                if seal.threshold is not None and seal.count is not None
                and seal.identifier is not None
                else None
            ),
            monitor_uri=proposal.monitor_uri,
            ca_certificate=proposal.ca_certificate,
        )
        envelope = pairing.make_envelope(
            root_key, proposal.offer, proposal.code, params, root_check_value(root_key), now
        )
        offer = proposal.offer
        async with self.store.transaction() as tx:
            # Never the key, never the code: which standby, and which code by its digest.
            await record(tx, caller, "ha.paired", target=offer.appliance, detail={
                "standby": offer.appliance,
                "address": offer.address,
                "offer": offer.fingerprint,
                "code_digest": pairing.code_digest(offer, proposal.code),
                "proposed_by": proposal.proposed_by,
                "id": proposal.id,
            })
        proposal.state, proposal.decided_by, proposal.code = "approved", caller.actor, ""
        proposal.envelope = envelope.to_json()

    def _forget_stale_pairings(self, now: datetime) -> None:
        for key, proposal in list(self.pairings.items()):
            if now >= proposal.offer.expires:
                del self.pairings[key]


# -- the standby's half --------------------------------------------------------------


def save_offer(keys_dir: Path, pending: pairing.PendingOffer) -> None:
    """Keep the pending offer (with its secret scalar and code) in a 0600 file."""
    sealing.prepare_keys_dir(keys_dir)
    body = json.dumps(pending.to_json(), indent=2) + "\n"
    write_atomic(keys_dir / PENDING_FILE, body.encode(), mode=0o600)


def pending_offer(keys_dir: Path, now: datetime) -> pairing.PendingOffer | None:
    """The offer waiting for an envelope, or None (an expired one is removed)."""
    path = keys_dir / PENDING_FILE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        body = None
    pending = pairing.PendingOffer.from_json(body)
    if now >= pending.offer.expires or pending.attempts_left <= 0:
        path.unlink(missing_ok=True)
        return None
    return pending


def accept(
    keys_dir: Path,
    envelope_json: Any,
    now: datetime,
    seal_mode: str | None = None,
    with_key: str = "auto",
) -> pairing.PairingParams:
    """Open the envelope for this standby's pending offer and seal the root key.

    ``seal_mode`` None seals as the primary does. For shamir the standby
    records the primary's share set (:func:`sealing.adopt_shamir`): the same
    custodians' shares open it, and no new share is made. For creds the
    standby seals with its own TPM or host key and keeps the primary's
    recovery share set, if there is one. A refused envelope costs one of the
    offer's attempts; the offer is gone once one opens.
    """
    if sealing.read_seal(keys_dir) is not None:
        raise Conflict(
            en="This appliance is already sealed: unpair it before pairing it again.",
            ja="この装置はすでに封印されています。再ペアリングの前にペアリングを解除してください。",
        )
    pending = pending_offer(keys_dir, now)
    if pending is None:
        raise PairingOfferExpired(
            en="There is no pending pairing offer on this appliance (expired or used): "
            "make a new one with `kura ha offer`.",
            ja="この装置に有効なペアリング申し出がありません（期限切れまたは使用済み）。"
            "`kura ha offer` で作成してください。",
        )
    envelope = pairing.Envelope.from_json(envelope_json)
    try:
        root_key, params = pairing.open_envelope(pending, envelope, now)
    except (PairingEnvelopeRejected, PairingWrongRootKey):
        left = pending.attempts_left - 1
        if left <= 0:
            (keys_dir / PENDING_FILE).unlink(missing_ok=True)
        else:
            save_offer(keys_dir, pairing.PendingOffer(
                pending.offer, pending.code, pending.scalar, left))
        raise
    mode = seal_mode or params.seal_mode
    if mode == "shamir":
        if params.shares is None:
            raise BadRequest(
                en="The primary has no custodian shares to adopt: choose another seal.",
                ja="プライマリ機に引き継げる鍵管理者のシェアがありません。別の封印方式を選んでください。",
            )
        sealing.adopt_shamir(keys_dir, root_key, params.shares)
    elif mode == "creds":
        sealing.init_creds(keys_dir, root_key, with_key=with_key, adopt=params.shares)
    elif mode == "host":
        sealing.init_host(keys_dir, root_key)
    else:
        raise BadRequest(en=f"Unknown seal mode {mode!r}.", ja=f"不明な封印方式です: {mode}")
    (keys_dir / PENDING_FILE).unlink(missing_ok=True)
    body = json.dumps({**params.to_json(), "paired_at": now.isoformat()}, indent=2) + "\n"
    write_atomic(keys_dir / PAIRED_FILE, body.encode(), mode=0o600)
    return params


def unpair(keys_dir: Path) -> dict[str, Any]:
    """Forget this standby's pairing: its sealed root key, the pairing's
    parameters, any pending offer and the audit head it followed. The database
    copy holds only ciphertext, which nothing here can open any more; the
    standby can then be paired again (with this primary or another).
    Returns what ``paired.json`` said (which primary it was paired with)."""
    paired_file = keys_dir / PAIRED_FILE
    try:
        paired: dict[str, Any] = json.loads(paired_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Conflict(
            en="This appliance is not a paired standby: there is nothing to unpair.",
            ja="この装置はペアリングされた待機系ではありません。解除するものはありません。",
        ) from None
    except ValueError:
        paired = {}
    from kura.vault.integrity import HEAD_DIR, HEAD_FILE

    for name in (sealing.SEAL_FILE, sealing.CRED_FILE, sealing.HOST_KEY_FILE, PENDING_FILE):
        (keys_dir / name).unlink(missing_ok=True)
    (keys_dir / HEAD_DIR / HEAD_FILE).unlink(missing_ok=True)
    paired_file.unlink()  # last: a crash midway leaves it to run again
    return paired
