"""kura-policy as an agent meets it: over real TLS on 127.0.0.1, in front of
the real vault of the session appliance (kura.devserver starts all three).

An agent pins the CA, enrols with a token an SA made, gets the newest signed
bundle at once on its WebSocket, receives the SA's next policy within a
fraction of a second, and is cut off with close code 4003 the moment the SA
revokes it. Without a certificate, or with a bad or used token, it is
refused with an error that says why."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kura.core import bundle as bundles
from kura.devserver import LocalAppliance
from tests.support import Api

PROFILE = "clerk-pc"


class Agent:
    """What kura-agent does, reduced to the wire: pin, enrol, connect."""

    def __init__(self, appliance: LocalAppliance, folder: Path) -> None:
        self.base = f"{appliance.policy_url}/kura-agent/v1"
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.trust: ssl.SSLContext | None = None
        self.enrolled: dict[str, Any] = {}
        self.refusal: dict[str, Any] = {}

    async def pin(self, session: aiohttp.ClientSession, fingerprint: str) -> str:
        """``GET /ca`` before any trust, accepted only if its SHA-256 is ``fingerprint``."""
        blind = ssl.create_default_context()
        blind.check_hostname = False
        blind.verify_mode = ssl.CERT_NONE
        async with session.get(f"{self.base}/ca", ssl=blind) as r:
            assert r.status == 200
            ca_pem = await r.text()
        der = x509.load_pem_x509_certificate(ca_pem.encode()).public_bytes(
            serialization.Encoding.DER)
        assert hashlib.sha256(der).hexdigest() == fingerprint
        self.trust = ssl.create_default_context(cadata=ca_pem)
        return ca_pem

    def csr(self) -> str:
        request = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pc-1")]))
                   .sign(self.key, hashes.SHA256()))
        return request.public_bytes(serialization.Encoding.PEM).decode()

    async def enrol(self, session: aiohttp.ClientSession, token: str) -> aiohttp.ClientResponse:
        assert self.trust is not None
        body = {"token": token, "csr": self.csr(), "hostname": "pc-1"}
        async with session.post(f"{self.base}/enrol", json=body, ssl=self.trust) as r:
            if r.status == 200:
                self.enrolled = await r.json()
            else:
                self.refusal = await r.json()
            return r

    def with_certificate(self) -> ssl.SSLContext:
        """The trust of ``pin`` and the issued certificate (only the leaf: the
        server completes the chain with its intermediate)."""
        assert self.trust is not None and self.enrolled
        cert, key = self.folder / "agent.pem", self.folder / "agent.key"
        cert.write_text(self.enrolled["certificate"])
        key.write_bytes(self.key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key.chmod(0o600)
        context = ssl.create_default_context(cadata=self.enrolled["ca"])
        context.load_cert_chain(cert, key)
        return context


def verified(message: dict[str, Any], key_text: str) -> bundles.Bundle:
    assert message["type"] == "bundle"
    return bundles.verify(message["bundle"], bundles.public_key_from_text(key_text))


async def _sa(appliance: LocalAppliance, sa: Api, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return await appliance.vault_call(op, args, sa.token)


async def _flow(appliance: LocalAppliance, sa: Api, folder: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    ca = await appliance.vault_call("agents.ca")
    agent = Agent(appliance, folder)
    async with aiohttp.ClientSession() as session:
        await agent.pin(session, ca["fingerprint"])
        # TLS 1.3 where the agent speaks it, with a certificate for the address
        # the agent was given (the pinned CA verifies it, host name included).
        assert agent.trust is not None
        with (socket.create_connection(("127.0.0.1", appliance.policy_port), timeout=5) as raw,
              agent.trust.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
            assert tls.version() == "TLSv1.3"

        # Enrolment: a bad token and a used one are refused, saying why.
        refused = await agent.enrol(session, "not-a-token")
        assert refused.status == 403
        assert (agent.refusal["code"], agent.refusal["detail"]["reason"]) == (
            "enrol_refused", "unknown")
        token = await _sa(appliance, sa, "agents.token_create",
                          {"profile": PROFILE, "label": "pc-1", "minutes": 15})
        enrolled = await agent.enrol(session, token["token"])
        assert enrolled.status == 200 and agent.enrolled["profile"] == PROFILE
        again = Agent(appliance, folder)
        await again.pin(session, ca["fingerprint"])
        reused = await again.enrol(session, token["token"])
        assert reused.status == 403
        assert (again.refusal["code"], again.refusal["detail"]["reason"]) == (
            "enrol_refused", "used")
        assert again.refusal["message_en"]
        async with session.post(f"{agent.base}/enrol", data=b"{not json",
                                ssl=agent.trust) as r:
            assert r.status == 400 and "not JSON" in (await r.json())["message_en"]
        async with session.post(f"{agent.base}/enrol", data=b"x" * (1 << 20),
                                ssl=agent.trust) as r:
            assert (r.status, (await r.json())["code"]) == (413, "payload_too_large")

        # No client certificate: the agents' routes are refused.
        async with session.get(f"{agent.base}/bundle", ssl=agent.trust) as r:
            assert (r.status, (await r.json())["code"]) == (403, "certificate_required")
        with pytest.raises(aiohttp.WSServerHandshakeError) as no_cert:
            await session.ws_connect(f"{agent.base}/stream", ssl=agent.trust)
        assert no_cert.value.status == 403

        mine = agent.with_certificate()
        key_text = agent.enrolled["bundle_key"]
        async with session.get(f"{agent.base}/bundle", ssl=mine) as r:
            assert r.status == 200
            pulled = bundles.verify(await r.json(), bundles.public_key_from_text(key_text))
        assert pulled.profile == PROFILE
        # The pull's heartbeat, without the stream.
        async with session.post(f"{agent.base}/heartbeat", ssl=mine,
                                json={"report": {"policy_serial": pulled.serial}}) as r:
            assert (r.status, await r.json()) == (200, {"type": "ack", "serial": pulled.serial})
        async with session.post(f"{agent.base}/heartbeat", ssl=mine, json={"report": 7}) as r:
            assert (r.status, (await r.json())["detail"]) == (400, {"field": "report"})

        ws = await session.ws_connect(f"{agent.base}/stream", ssl=mine)
        first = verified(await ws.receive_json(timeout=5), key_text)
        assert first.serial == pulled.serial and first.appliance == ca["fingerprint"]

        # A heartbeat is acknowledged with the newest serial; a bad one is an
        # error message and the stream stays open.
        await ws.send_str("{not json")
        assert (await ws.receive_json(timeout=5))["type"] == "error"
        await ws.send_json({"type": "heartbeat", "report": {"policy_serial": first.serial}})
        assert await ws.receive_json(timeout=5) == {"type": "ack", "serial": first.serial}

        # The SA saves a policy: the new bundle arrives on the open stream.
        current = await _sa(appliance, sa, "agents.policy_get", {"profile": PROFILE})
        policy = dict(current["policy"])
        policy["usb_mass_storage"] = "allow" if policy.get("usb_mass_storage") == "block" \
            else "block"
        started = time.monotonic()
        saved = await _sa(appliance, sa, "agents.policy_set",
                          {"profile": PROFILE, "policy": policy, "tests": current["tests"],
                           "version": current["version"]})
        pushed = verified(await ws.receive_json(timeout=5), key_text)
        figures["push"] = time.monotonic() - started
        assert pushed.serial == saved["serial"] > first.serial
        assert pushed.body["usb_mass_storage"] == policy["usb_mass_storage"]

        # The SA revokes it: the stream closes with 4003 at once, and stays shut.
        started = time.monotonic()
        await _sa(appliance, sa, "agents.revoke",
                  {"agent_id": agent.enrolled["agent_id"], "reason": "stolen laptop"})
        closing = await ws.receive(timeout=5)
        figures["revoke"] = time.monotonic() - started
        # The close frame says why; aiohttp's server then drops the connection
        # without waiting for the agent's answer to it.
        assert (closing.type, closing.data, closing.extra) == (
            aiohttp.WSMsgType.CLOSE, 4003, "revoked")
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as after:
            await session.ws_connect(f"{agent.base}/stream", ssl=mine)
        assert after.value.status == 403
        async with session.get(f"{agent.base}/bundle", ssl=mine) as r:
            assert (r.status, (await r.json())["code"]) == (403, "agent_revoked")
    return figures


def test_an_agent_enrols_gets_pushed_bundles_and_is_cut_off_when_revoked(
    appliance: LocalAppliance, users: dict[str, Api], tmp_path: Path
) -> None:
    figures = asyncio.run(_flow(appliance, users["SA"], tmp_path))
    print(json.dumps({k: round(v * 1000, 1) for k, v in figures.items()}), "ms")
    assert figures["push"] < 2.0
    assert figures["revoke"] < 1.0
