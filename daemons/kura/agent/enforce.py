"""Taking a bundle: verify, decide, apply, THEN persist.

Every way a bundle arrives (the stream, the pull, ``kura-agent apply FILE``)
goes through ``Enforcer.offer``; the boot-time ``restore`` re-verifies the
stored one. The order matters: the stored ``bundle.json`` is always a bundle
the kernel accepted, so a restore after a reboot cannot fail on rules that
never worked, and a refused or failing bundle leaves both the kernel and the
disk as they were.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kura.agent import nft, rules, usb
from kura.agent.errors import AgentError
from kura.agent.state import State
from kura.core import bundle

log = logging.getLogger("kura-agent")


def claimed_serial(envelope: Any) -> int | None:
    """The serial a refused envelope claims, for the report (not trusted)."""
    try:
        serial = json.loads(base64.b64decode(envelope["body"])).get("serial")
    except Exception:  # whatever it is, it is not a bundle
        return None
    return serial if isinstance(serial, int) else None


class Enforcer:
    """The bundle this agent enforces and the refusals not yet reported."""

    def __init__(self, state: State, usb_rule_file: Path = usb.RULE_FILE) -> None:
        self.state = state
        self.usb_rule_file = usb_rule_file
        self.refused: list[dict[str, Any]] = []
        self.usbguard = "unknown"

    def current(self) -> bundle.Bundle | None:
        """The stored bundle, verified again (the disk is not trusted blindly)."""
        envelope = self.state.envelope()
        if envelope is None:
            return None
        identity = self.state.identity()
        try:
            return bundle.verify(envelope, bundle.public_key_from_text(identity.bundle_key))
        except bundle.Refused as exc:
            raise AgentError(f"the stored bundle does not verify ({exc.reason}); "
                             f"remove {self.state.bundle_file} to accept a fresh one") from exc

    def _refuse(self, envelope: Any, reason: str) -> bundle.Refused:
        self.refused.append({"serial": claimed_serial(envelope), "reason": reason,
                             "at": datetime.now(UTC).isoformat(timespec="seconds")})
        log.warning("bundle refused: %s (serial %s)", reason, claimed_serial(envelope))
        return bundle.Refused(reason)

    def offer(self, envelope: Any) -> str:
        """``bundle.ACCEPT`` (now enforced) or ``bundle.KEEP`` (already was);
        ``bundle.Refused`` otherwise, recorded for the next report."""
        identity = self.state.identity()
        try:
            offered = bundle.verify(envelope, bundle.public_key_from_text(identity.bundle_key))
        except bundle.Refused as exc:
            raise self._refuse(envelope, exc.reason) from exc
        verdict = bundle.decide(self.current(), offered, identity.profile, identity.appliance)
        if verdict == bundle.KEEP:
            return verdict
        if verdict != bundle.ACCEPT:
            raise self._refuse(envelope, verdict)
        try:
            transaction = rules.ruleset(offered.body)
        except rules.RuleError as exc:
            raise self._refuse(envelope, bundle.MALFORMED) from exc
        nft.run(transaction)
        self.usbguard = usb.apply(offered.body, self.usb_rule_file)
        self.state.save_envelope(envelope)
        log.info("bundle %d enforced", offered.serial)
        return verdict

    def restore(self) -> bundle.Bundle:
        """Apply the stored bundle again (at boot, before the network)."""
        stored = self.current()
        if stored is None:
            raise AgentError(f"no bundle stored in {self.state.root}: nothing to restore")
        identity = self.state.identity()
        verdict = bundle.decide(None, stored, identity.profile, identity.appliance)
        if verdict != bundle.ACCEPT:
            raise AgentError(f"the stored bundle is not for this agent ({verdict})")
        nft.apply(stored.body)
        self.usbguard = usb.apply(stored.body, self.usb_rule_file)
        return stored

    def take_refused(self) -> list[dict[str, Any]]:
        taken, self.refused = self.refused, []
        return taken
