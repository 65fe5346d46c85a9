"""kura-console's client-certificate context (kura.console.clientcert): it
trusts nothing for clients until the vault gives the agent CA — never the
system's CAs — and loads that CA into the live context as soon as the vault
answers, retrying while it is sealed."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from kura import tls
from kura.console import clientcert
from kura.core import agentca
from kura.core.errors import VaultSealed


class SealedThenOpen:
    """The vault's answers to agents.ca: sealed twice, then the CA."""

    def __init__(self, ca_pem: str) -> None:
        self.ca_pem = ca_pem
        self.asked = 0

    async def call(self, op: str, *args: Any) -> dict[str, Any]:
        assert op == "agents.ca"
        self.asked += 1
        if self.asked <= 2:
            raise VaultSealed()
        return {"ca_pem": self.ca_pem, "fingerprint": "f", "bundle_key": "k"}


def test_the_agent_ca_is_the_only_trust_and_arrives_once_the_vault_answers(
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls.make_self_signed(cert, key, ["127.0.0.1"])
    context = clientcert.server_context(cert, key)
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.get_ca_certs() == []  # no system CA names a terminal

    root = agentca.make_root(ec.generate_private_key(ec.SECP256R1()), "kura-test",
                             datetime.now(UTC))
    vault = SealedThenOpen(agentca.pem(root))

    async def scenario() -> None:
        # The application's cleanup context, started then torn down; the vault
        # is a fake at the I/O boundary (hence the ignore).
        steps = clientcert.trust_agent_ca(context, lambda: vault, retry=0.01)(  # type: ignore[arg-type, return-value]
            web.Application())
        await anext(steps)
        for _ in range(200):
            if context.get_ca_certs():
                break
            await asyncio.sleep(0.01)
        with contextlib.suppress(StopAsyncIteration):
            await anext(steps)

    asyncio.run(scenario())
    assert vault.asked == 3
    (trusted,) = context.get_ca_certs()
    assert dict(x[0] for x in trusted["subject"])["commonName"].startswith("Kura agent CA")
