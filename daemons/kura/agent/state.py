"""The agent's state directory (``/var/lib/kura-agent``, ``--state DIR``):
the one module that reads and writes it.

| File | What |
| --- | --- |
| ``key.pem`` | the agent's ECDSA P-256 key (0600; never leaves the endpoint) |
| ``cert.pem`` | its client certificate followed by the issuing intermediate |
| ``chain.pem`` | the intermediate alone |
| ``ca.pem`` | the pinned agent root CA |
| ``identity.json`` | ``agent_id, profile, server, fingerprint, bundle_key`` |
| ``bundle.json`` | the last good envelope, exactly as received |
| ``contact.json`` | when the appliance was last heard from |

Every file is written to a temporary name, flushed and renamed into place,
so a power cut leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kura.agent.errors import AgentError, NotEnrolled

DEFAULT_DIR = Path("/var/lib/kura-agent")


@dataclass(frozen=True)
class Identity:
    """Who this agent is, as the appliance enrolled it."""

    agent_id: str
    profile: str
    server: str
    fingerprint: str  # SHA-256 of the pinned CA certificate's DER, lower-case hex
    bundle_key: str  # the Ed25519 bundle-signing public key, base64

    @property
    def appliance(self) -> str:
        """What this appliance's bundles carry in "appliance": the pinned CA's
        fingerprint (docs/agents.md), so it is not stored twice."""
        return self.fingerprint


class State:
    """The files of one agent, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = root / "key.pem"
        self.cert = root / "cert.pem"
        self.chain = root / "chain.pem"
        self.ca = root / "ca.pem"
        self.identity_file = root / "identity.json"
        self.bundle_file = root / "bundle.json"
        self.contact_file = root / "contact.json"

    def write(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        """``data`` into ``path`` atomically, created with ``mode`` from the start."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)

    def _json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AgentError(f"{path} cannot be read: {exc}") from exc

    def identity(self) -> Identity:
        data = self._json(self.identity_file)
        if not isinstance(data, dict):
            raise NotEnrolled(f"not enrolled (no {self.identity_file}); "
                              "run: kura-agent enroll --server URL --fingerprint F")
        try:
            return Identity(**{key: str(data[key]) for key in Identity.__dataclass_fields__})
        except KeyError as exc:
            raise AgentError(f"{self.identity_file} lacks {exc}") from exc

    def save_identity(self, identity: Identity) -> None:
        self.write(self.identity_file, json.dumps(asdict(identity), indent=1).encode())

    def envelope(self) -> dict[str, Any] | None:
        """The last good envelope, or None before the first bundle."""
        data = self._json(self.bundle_file)
        return data if isinstance(data, dict) else None

    def save_envelope(self, envelope: dict[str, Any]) -> None:
        self.write(self.bundle_file, json.dumps(envelope).encode())

    def contact(self) -> str | None:
        data = self._json(self.contact_file)
        return str(data.get("at")) if isinstance(data, dict) and data.get("at") else None

    def save_contact(self, at: str) -> None:
        self.write(self.contact_file, json.dumps({"at": at}).encode())
