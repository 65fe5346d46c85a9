"""Pairing a standby end to end: a real appliance (PostgreSQL, kura-vault) is
the primary; a fresh keys folder with the real ``kura`` command is the
standby. The DA pairs with the code the standby showed, an SA approves, the
standby accepts the envelope and then unseals with the primary's root key.
Wrong codes, wrong roles and spent offers are refused, and audited where the
primary can see them."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kura.core import pairing as core_pairing
from kura.core.errors import KuraError
from kura.core.keys import new_root_key
from kura.devserver import LocalAppliance
from kura.vault import pairing, sealing
from tests.support import Api, signed_in

KURA = [sys.executable, "-m", "kura.cli"]


class Standby:
    """A new appliance before its first key: its own config and keys folder."""

    def __init__(self, base: Path, name: str = "kura-test-standby") -> None:
        self.keys = base / "keys"
        self.config = base / "kura.toml"
        self.config.write_text(
            f'appliance = "{name}"\n[database]\ndsn = "dbname=unused"\n'
            f'[vault]\nsocket = "{base / "vault.sock"}"\nkeys_dir = "{self.keys}"\n'
        )
        self.offer_file = base / "offer.json"
        self.envelope_file = base / "envelope.json"

    def kura(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*KURA, *args, "--config", str(self.config)], capture_output=True,
                              text=True, timeout=60, check=False)

    def offer(self, *extra: str) -> tuple[dict[str, Any], str]:
        """``kura ha offer``: the offer (what the primary fetches) and the code
        as the standby's screen shows it."""
        done = self.kura("ha", "offer", "--address", "192.0.2.12", "-o", str(self.offer_file),
                         *extra)
        assert done.returncode == 0, done.stderr
        shown = re.search(r"ペアリングコード:\s+(\d{4} \d{4} \d{4})", done.stdout)
        assert shown, done.stdout
        return json.loads(self.offer_file.read_text()), shown.group(1)

    def accept(self, envelope: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        self.envelope_file.write_text(json.dumps(envelope))
        return self.kura("ha", "accept", str(self.envelope_file))


def call(app: LocalAppliance, api: Api, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return app.vault_call_sync(op, args, signed_in(api).token)


def refused(app: LocalAppliance, api: Api, op: str, args: dict[str, Any]) -> str:
    """The error code the vault answers ``op`` with (it must refuse it)."""
    with pytest.raises(KuraError) as caught:
        call(app, api, op, args)
    return str(getattr(caught.value, "vault_code", caught.value.code))


def audit(sa: Api, action: str) -> list[dict[str, Any]]:
    r = signed_in(sa).get("/audit", query={"action": action, "limit": 50})
    assert r.status == 200, r.body[:300]
    return list(r.json["entries"])


def other_valid_code(shown: str) -> str:
    """A code whose check digits agree but is not the standby's: a whole group
    misread, which only the standby can notice."""
    digits = shown.replace(" ", "")
    body = f"{(int(digits[:10]) + 1) % 10**10:010d}"
    return body + f"{98 - int(body) * 100 % 97:02d}"


@pytest.fixture()
def standby(tmp_path: Path) -> Standby:
    return Standby(tmp_path)


def test_a_standby_paired_by_the_da_and_an_sa_unseals_with_the_primarys_key(
    appliance: LocalAppliance, users: dict[str, Api], standby: Standby
) -> None:
    da, sa = users["DA"], users["SA"]
    offer, code = standby.offer()
    pending_file = standby.keys / pairing.PENDING_FILE
    assert stat.S_IMODE(pending_file.stat().st_mode) == 0o600
    # Asking again shows the same offer and code (the wizard may restart).
    assert standby.offer() == (offer, code)

    proposed = call(appliance, da, "ha.pair", {"offer": offer, "code": code})
    assert proposed["state"] == "proposed" and "envelope" not in proposed
    assert proposed["standby"] == "kura-test-standby" and proposed["address"] == "192.0.2.12"
    # The SA sees what it approves: which standby, where, by whom.
    listed = call(appliance, sa, "ha.pairings", {})["pairings"]
    assert any(p["id"] == proposed["id"] and p["proposed_by"] == da.username for p in listed)

    approved = call(appliance, sa, "ha.approve", {"id": proposed["id"]})
    assert approved["state"] == "approved"
    envelope = approved["envelope"]
    # The DA collects the same envelope to deliver it.
    mine = next(p for p in call(appliance, da, "ha.pairings", {})["pairings"]
                if p["id"] == proposed["id"])
    assert mine["envelope"] == envelope

    root = sealing.load_host(appliance.keys_dir)
    wire = json.dumps(envelope) + json.dumps(offer)
    assert root.hex() not in wire.lower() and code.replace(" ", "") not in wire

    done = standby.accept(envelope)
    assert done.returncode == 0, done.stderr
    assert "paired with kura-test-shared" in done.stdout
    assert sealing.load_host(standby.keys) == root
    assert not pending_file.exists()
    paired = json.loads((standby.keys / pairing.PAIRED_FILE).read_text())
    assert paired["primary"] == "kura-test-shared" and paired["seal_mode"] == "host"

    # Single use: the same envelope again is refused, the standby keeps its seal.
    again = standby.accept(envelope)
    assert again.returncode == 1 and "already sealed" in again.stderr
    assert sealing.load_host(standby.keys) == root
    # and the approved proposal cannot be approved twice.
    assert refused(appliance, sa, "ha.approve", {"id": proposed["id"]}) == "conflict"

    entry = next(e for e in audit(sa, "ha.paired") if e["detail"].get("id") == proposed["id"])
    assert entry["actor"] == sa.username
    assert entry["detail"]["standby"] == "kura-test-standby"
    assert entry["detail"]["address"] == "192.0.2.12"
    assert entry["detail"]["proposed_by"] == da.username
    assert re.fullmatch(r"[0-9a-f]{16}", entry["detail"]["code_digest"])
    assert root.hex() not in json.dumps(entry)
    assert code.replace(" ", "") not in json.dumps(entry)


def test_a_mistyped_code_is_refused_and_audited(
    appliance: LocalAppliance, users: dict[str, Api], standby: Standby
) -> None:
    da, sa = users["DA"], users["SA"]
    offer, code = standby.offer()
    digits = code.replace(" ", "")
    typo = digits[:5] + str((int(digits[5]) + 1) % 10) + digits[6:]
    assert refused(appliance, da, "ha.pair", {"offer": offer, "code": typo}) == \
        "pairing_code_mismatch"
    denied = [e for e in audit(sa, "ha.pair") if e["outcome"] == "denied"
              and e["detail"].get("offer") == core_pairing.Offer.from_json(offer).fingerprint]
    assert denied and denied[0]["detail"]["reason"] == "pairing_code_mismatch"
    assert typo not in json.dumps(denied)


def test_a_wrong_code_that_passes_the_primary_is_refused_by_the_standby(
    appliance: LocalAppliance, users: dict[str, Api], standby: Standby
) -> None:
    """Three such envelopes spend the offer: someone who swaps envelopes on
    the wire gets three guesses in 10**10, then the standby forgets it."""
    da, sa = users["DA"], users["SA"]
    offer, code = standby.offer()
    for attempt in range(core_pairing.ATTEMPTS):
        proposed = call(appliance, da, "ha.pair", {"offer": offer,
                                                  "code": other_valid_code(code)})
        envelope = call(appliance, sa, "ha.approve", {"id": proposed["id"]})["envelope"]
        done = standby.accept(envelope)
        assert done.returncode == 1 and "does not open" in done.stderr
        left = core_pairing.ATTEMPTS - 1 - attempt
        assert (standby.keys / pairing.PENDING_FILE).exists() == (left > 0)
        assert sealing.read_seal(standby.keys) is None
    assert not (standby.keys / pairing.PENDING_FILE).exists()
    # The right code now comes too late: the offer is spent.
    proposed = call(appliance, da, "ha.pair", {"offer": offer, "code": code})
    envelope = call(appliance, sa, "ha.approve", {"id": proposed["id"]})["envelope"]
    late = standby.accept(envelope)
    assert late.returncode == 1 and "no pending pairing offer" in late.stderr
    # A new offer (new key, new code) pairs.
    offer, code = standby.offer("--new")
    proposed = call(appliance, da, "ha.pair", {"offer": offer, "code": code})
    envelope = call(appliance, sa, "ha.approve", {"id": proposed["id"]})["envelope"]
    assert standby.accept(envelope).returncode == 0
    assert sealing.load_host(standby.keys) == sealing.load_host(appliance.keys_dir)


def test_only_a_da_pairs_and_only_an_sa_approves(
    appliance: LocalAppliance, users: dict[str, Api], standby: Standby
) -> None:
    offer, code = standby.offer()
    for role in ("MU", "MA", "SA"):
        assert refused(appliance, users[role], "ha.pair", {"offer": offer, "code": code}) == \
            "permission_denied"
    proposed = call(appliance, users["DA"], "ha.pair", {"offer": offer, "code": code})
    for role in ("MU", "MA", "DA"):
        assert refused(appliance, users[role], "ha.approve", {"id": proposed["id"]}) == \
            "permission_denied"
    denied = [e for e in audit(users["SA"], "ha.approve") if e["outcome"] == "denied"]
    assert {e["role"] for e in denied} >= {"MU", "MA", "DA"}
    rejected = call(appliance, users["SA"], "ha.reject", {"id": proposed["id"],
                                                         "reason": "not our standby"})
    assert rejected["state"] == "rejected" and "envelope" not in rejected
    assert refused(appliance, users["SA"], "ha.approve", {"id": proposed["id"]}) == "conflict"


def test_an_expired_offer_is_refused_by_the_primary(
    appliance: LocalAppliance, users: dict[str, Api], standby: Standby
) -> None:
    pending = core_pairing.make_offer("kura-test-standby", "192.0.2.12",
                                      datetime(2026, 1, 1, tzinfo=UTC))
    assert refused(appliance, users["DA"], "ha.pair",
                   {"offer": pending.offer.to_json(), "code": pending.code}) == \
        "pairing_offer_expired"


def test_the_primarys_custodian_shares_open_the_paired_standby(tmp_path: Path) -> None:
    """With custodian shares the standby records the primary's share set: the
    shares the custodians already hold unseal it, and no new share is made."""
    primary_keys, standby_keys = tmp_path / "primary", tmp_path / "standby"
    root = new_root_key()
    shares = sealing.init_shamir(primary_keys, root, 2, 3)
    seal = sealing.read_seal(primary_keys)
    assert seal is not None and seal.threshold and seal.count and seal.identifier is not None
    now = datetime.now(UTC)
    pending = core_pairing.make_offer("kura-b", "192.0.2.12", now)
    pairing.save_offer(standby_keys, pending)
    params = core_pairing.PairingParams("kura-a", "shamir",
                                        (seal.threshold, seal.count, seal.identifier))
    envelope = core_pairing.make_envelope(root, pending.offer, pending.code, params,
                                          seal.check_value, now)
    pairing.accept(standby_keys, envelope.to_json(), now)
    adopted = sealing.read_seal(standby_keys)
    assert adopted is not None and adopted.mode == "shamir"
    collector = sealing.ShareCollector(adopted)
    collector.add(shares[2])
    collector.add(shares[0])
    assert collector.root_key() == root
    assert sorted(os.listdir(standby_keys)) == [pairing.PAIRED_FILE, sealing.SEAL_FILE]
