"""The wizard's steps and the journal that records them.

The steps run in one fixed order (:data:`STEPS`); the journal
(``/var/lib/kura/firstboot/state.json``) lists those done with their
non-secret answers. A power cut resumes at the first step not done, which
re-runs from its start: every step is written so that running it again is
safe. Marking any step but the next one done is an illegal transition.

No password, share or key is ever written here: :meth:`Journal.forbid`
registers each secret the wizard holds, and a write that would contain one
is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kura_firstboot.system import System

STATE_FILE = "/var/lib/kura/firstboot/state.json"
STAMP_FILE = "/var/lib/kura/firstboot.done"

STEPS: tuple[str, ...] = (
    "network",  # interface, DHCP or static; confirm-or-revert
    "hostname",  # /etc/hostname, /etc/hosts
    "time",  # time zone and NTP servers
    "role",  # single | primary | standby | witness
    "tls",  # the console's certificate (self-signed or imported)
    "database",  # PostgreSQL cluster, roles, database, schema
    "seal",  # root key, sealed to the TPM or to custodian shares
    "vault",  # kura.toml, kura-vault started and unsealed
    "admin",  # the first Appliance Admin (DA)
    "finish",  # the stamp; kura-console started
)

_FORMAT = 1


class IllegalTransition(Exception):
    """A step was marked done out of order."""


class SecretInJournal(Exception):
    """Something secret was about to be written to the journal."""


@dataclass
class Journal:
    system: System
    done: list[str] = field(default_factory=list)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    _secrets: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def load(cls, system: System) -> Journal:
        text = system.read_text(STATE_FILE)
        if text is None:
            return cls(system)
        body = json.loads(text)
        if body.get("format") != _FORMAT:
            raise ValueError(f"{STATE_FILE}: unknown format")
        done = [s for s in body.get("done", []) if s in STEPS]
        if done != list(STEPS[: len(done)]):
            raise ValueError(f"{STATE_FILE}: steps out of order")
        return cls(
            system,
            done=done,
            answers=dict(body.get("answers", {})),
            pending=dict(body.get("pending", {})),
        )

    @property
    def next_step(self) -> str | None:
        return STEPS[len(self.done)] if len(self.done) < len(STEPS) else None

    @property
    def finished(self) -> bool:
        return self.next_step is None

    def is_done(self, step: str) -> bool:
        return step in self.done

    def forbid(self, secret: str) -> None:
        """Never write ``secret`` (a password, a share) to the journal."""
        if secret:
            self._secrets.add(secret)

    def note(self, step: str, values: dict[str, Any]) -> None:
        """Record progress inside a step that is not finished yet."""
        if step != self.next_step:
            raise IllegalTransition(f"{step} is not the step in progress ({self.next_step})")
        self.pending[step] = {**self.pending.get(step, {}), **values}
        self._write()

    def complete(self, step: str, values: dict[str, Any] | None = None) -> None:
        if step != self.next_step:
            raise IllegalTransition(f"{step} cannot be done before {self.next_step}")
        self.done.append(step)
        self.answers[step] = {
            **self.pending.pop(step, {}),
            **(values or {}),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._write()

    def _write(self) -> None:
        body = {
            "format": _FORMAT,
            "done": self.done,
            "next": self.next_step,
            "answers": self.answers,
            "pending": self.pending,
        }
        text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
        if any(secret in text for secret in self._secrets):
            raise SecretInJournal("refusing to write a secret to the journal")
        self.system.make_dir("/var/lib/kura/firstboot", 0o700)
        self.system.write_file(STATE_FILE, text, mode=0o600)
