"""kura-agent's wire: enrolment with a pinned CA fingerprint, the mTLS
WebSocket stream (bundle in, heartbeat out) and the pull.

STAND-IN: the server here is a small aiohttp HTTPS app written in this test,
speaking exactly the wire of docs/agents.md with real certificates (a P-256
root, an issuing intermediate, a serverAuth leaf; the agent's clientAuth
certificate issued from its CSR). The real kura-policy is driven by
tests/agents/test_end_to_end.py (in namespaces, as root) and
tests/test_policy_daemon.py (which also shows it refusing a stream without a
client certificate); the stand-in stays for what the real one cannot do: an
impostor server the pin must not vouch for, a push signed by another key, a
stream dropped on purpose, all without root. Only the firewall call is
replaced (``nft.run`` records the transaction): real enforcement is
tests/test_agent_enforce.py's job."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kura.agent import enrol, nft, posture
from kura.agent.client import Agent
from kura.agent.enforce import Enforcer
from kura.agent.errors import AgentError
from kura.agent.state import Identity, State
from kura.core import bundle

SIGNING = Ed25519PrivateKey.generate()


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, public: Any,
          issuer: x509.Name | None, *, ca: bool, usage: Any = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                    subject)]))
               .public_key(public).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage is not None and not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    return builder.sign(key, hashes.SHA256())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class StandIn:
    """The stand-in for kura-policy: CA, intermediate, server certificate,
    the routes of the wire, and what the agent sent."""

    def __init__(self, tmp: Path, server_usage: Any = ExtendedKeyUsageOID.SERVER_AUTH,
                 foreign_server: bool = False) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("Kura agent root CA", self.root_key, self.root_key.public_key(),
                          None, ca=True)
        self.mid_key = ec.generate_private_key(ec.SECP256R1())
        self.mid = _cert("Kura agent issuing CA", self.root_key, self.mid_key.public_key(),
                         self.root.subject, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        # foreign_server: signed by a key that is not the intermediate's (an impostor
        # with a certificate of its own that names the same issuer).
        signer = ec.generate_private_key(ec.SECP256R1()) if foreign_server else self.mid_key
        server = _cert("kura", signer, server_key.public_key(), self.mid.subject,
                       ca=False, usage=server_usage)
        (tmp / "server.pem").write_text(pem(server) + pem(self.mid))
        (tmp / "server.key").write_bytes(server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(tmp / "server.pem", tmp / "server.key")
        self.tls.load_verify_locations(cadata=pem(self.root))
        self.tls.verify_mode = ssl.CERT_OPTIONAL
        self.fingerprint = hashlib.sha256(
            self.root.public_bytes(serialization.Encoding.DER)).hexdigest()
        self.envelopes: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.tokens: list[str] = []
        self.stream_open = asyncio.Event()
        self.sockets: list[web.WebSocketResponse] = []

    def body(self, serial: int, **extra: Any) -> dict[str, Any]:
        return {"appliance": self.fingerprint, "profile": "clerk-pc", "serial": serial,
                "appliance_addresses": ["127.0.0.1"], "appliance_ports": [8445],
                "heartbeat_seconds": 1, "pull_seconds": 1, **extra}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/kura-agent/v1/ca", self.ca)
        app.router.add_post("/kura-agent/v1/enrol", self.enrol)
        app.router.add_get("/kura-agent/v1/stream", self.stream)
        app.router.add_get("/kura-agent/v1/bundle", self.pull)
        app.router.add_post("/kura-agent/v1/heartbeat", self.heartbeat)
        return app

    async def ca(self, request: web.Request) -> web.Response:
        return web.Response(text=pem(self.root), content_type="application/x-pem-file")

    async def enrol(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.tokens.append(data.get("token"))
        if data.get("token") != "good-token":
            return web.json_response({"error": {"code": "enrol_refused", "detail": "unknown"}},
                                     status=403)
        csr = x509.load_pem_x509_csr(data["csr"].encode())
        cert = _cert(data["hostname"], self.mid_key, csr.public_key(), self.mid.subject,
                     ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        return web.json_response({"agent_id": "agent-7", "profile": "clerk-pc",
                                  "certificate": pem(cert), "chain": pem(self.mid),
                                  "ca": pem(self.root),
                                  "bundle_key": bundle.public_key_text(SIGNING.public_key())})

    @staticmethod
    def _client_cert(request: web.Request) -> None:
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport else None
        if not peer:
            raise web.HTTPForbidden(text="client certificate required")

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        self._client_cert(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_json({"type": "bundle", "bundle": self.envelopes[-1]})
        self.stream_open.set()
        async for message in ws:
            data = json.loads(message.data)
            if data.get("type") == "heartbeat":
                self.heartbeats.append(data["report"])
                await ws.send_json({"type": "ack", "serial": len(self.heartbeats)})
        return ws

    async def pull(self, request: web.Request) -> web.Response:
        self._client_cert(request)
        return web.json_response(self.envelopes[-1])

    async def heartbeat(self, request: web.Request) -> web.Response:
        self._client_cert(request)
        self.heartbeats.append((await request.json())["report"])
        return web.json_response({"newest_serial": 0})


async def serve(stand_in: StandIn) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(stand_in.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=stand_in.tls)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"https://127.0.0.1:{port}"


async def until(predicate: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds * 20)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The transactions the agent would hand to the kernel. (apt's simulation
    is replaced too: it is slow and counts this host's updates; posture is
    tested on fixtures in test_agent_rules.py.)"""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(nft, "run", seen.append)
    monkeypatch.setattr(posture, "security_updates", lambda: 4)
    return seen


def test_enrol_stream_and_pull(tmp_path: Path, applied: list[dict[str, Any]]) -> None:
    asyncio.run(_enrol_stream_and_pull(tmp_path, applied))


async def _enrol_stream_and_pull(tmp_path: Path, applied: list[dict[str, Any]]) -> None:
    stand_in = StandIn(tmp_path)
    runner, url = await serve(stand_in)
    state = State(tmp_path / "state")
    try:
        wrong = "00" * 32
        with pytest.raises(enrol.EnrolRefused, match="fingerprint"):
            await asyncio.to_thread(enrol.enroll, state, url, "good-token", wrong, "pc-1")
        with pytest.raises(enrol.EnrolRefused, match="HTTP 403 unknown"):
            await asyncio.to_thread(enrol.enroll, state, url, "bad-token",
                                    stand_in.fingerprint, "pc-1")
        assert not state.identity_file.exists() and not state.key.exists()
        colons = ":".join(stand_in.fingerprint[i:i + 2]
                          for i in range(0, 64, 2)).upper()
        identity = await asyncio.to_thread(enrol.enroll, state, url, "good-token", colons,
                                           "pc-1")
        assert (identity.agent_id, identity.profile) == ("agent-7", "clerk-pc")
        assert identity.appliance == stand_in.fingerprint
        assert state.key.stat().st_mode & 0o777 == 0o600
        assert state.root.stat().st_mode & 0o077 == 0, "the state directory is private"
        assert state.cert.read_text().count("BEGIN CERTIFICATE") == 2

        stand_in.envelopes.append(bundle.sign(stand_in.body(1), SIGNING))
        enforcer = Enforcer(state, tmp_path / "usbguard.conf")
        agent = Agent(state, enforcer)
        task = asyncio.create_task(agent.run())
        await until(lambda: state.bundle_file.exists())
        assert applied and json.loads(state.bundle_file.read_text()) == stand_in.envelopes[0]
        await until(lambda: any(h["policy_serial"] == 1 for h in stand_in.heartbeats))
        report = next(h for h in stand_in.heartbeats if h["policy_serial"] == 1)
        assert report["security_updates"] == 4 and report["os_release"]
        assert set(report) == {"policy_serial", "os_release", "security_updates",
                               "disk_encrypted", "usb_events", "refused", "usbguard"}
        assert state.contact() is not None
        # A forged push is refused, nothing applied, and reported at the next heartbeat.
        forged = bundle.sign(stand_in.body(2, allow=[{"to": "0.0.0.0/0", "proto": "any"}]),
                             Ed25519PrivateKey.generate())
        count = len(applied)
        await stand_in.sockets[-1].send_json({"type": "bundle", "bundle": forged})
        await until(lambda: any(h["refused"] for h in stand_in.heartbeats))
        refused = next(h["refused"] for h in stand_in.heartbeats if h["refused"])
        assert refused[0]["serial"] == 2 and refused[0]["reason"] == "bad_signature"
        assert len(applied) == count
        # The stream goes away; the pull brings the next bundle.
        stand_in.envelopes.append(bundle.sign(stand_in.body(3), SIGNING))
        for ws in stand_in.sockets:
            await ws.close()
        await until(lambda: (enforcer.current() or bundle.Bundle({"serial": 0}, b"")).serial
                    == 3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await runner.cleanup()


def test_fingerprint_is_taken_with_or_without_colons_in_any_case() -> None:
    with pytest.raises(AgentError, match="64 digits"):
        enrol.normalise_fingerprint("abc")
    assert enrol.normalise_fingerprint("AB:" * 31 + "AB") == "ab" * 32


@pytest.mark.parametrize(("usage", "foreign"), [
    (ExtendedKeyUsageOID.CLIENT_AUTH, False),  # a client certificate posing as the server
    (ExtendedKeyUsageOID.SERVER_AUTH, True),  # not issued by the pinned CA's intermediate
], ids=["client-eku", "foreign-issuer"])
def test_enrol_sends_no_token_to_a_server_the_pin_does_not_vouch_for(
        tmp_path: Path, usage: Any, foreign: bool) -> None:
    async def run() -> None:
        stand_in = StandIn(tmp_path, server_usage=usage, foreign_server=foreign)
        runner, url = await serve(stand_in)
        state = State(tmp_path / "state")
        try:
            with pytest.raises(AgentError, match="cannot reach") as failed:
                await asyncio.to_thread(enrol.enroll, state, url, "good-token",
                                        stand_in.fingerprint, "pc-1")
            assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value)
            assert stand_in.tokens == []
            assert not state.identity_file.exists()
        finally:
            await runner.cleanup()

    asyncio.run(run())


def test_a_bundle_the_kernel_refuses_is_not_stored(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply THEN persist: when nftables refuses the transaction the stored
    bundle stays the last good one (what a reboot restores)."""
    state = State(tmp_path / "state")
    fingerprint = "ef" * 32
    state.save_identity(Identity(agent_id="a", profile="clerk-pc", server="https://x",
                                 fingerprint=fingerprint,
                                 bundle_key=bundle.public_key_text(SIGNING.public_key())))
    enforcer = Enforcer(state, tmp_path / "usbguard.conf")
    good = bundle.sign({"appliance": fingerprint, "profile": "clerk-pc", "serial": 1}, SIGNING)
    monkeypatch.setattr(nft, "run", lambda transaction: None)
    assert enforcer.offer(good) == bundle.ACCEPT

    def refuse(transaction: dict[str, Any]) -> None:
        raise nft.FirewallError("nftables refused the rules: Error: Could not process rule")

    monkeypatch.setattr(nft, "run", refuse)
    newer = bundle.sign({"appliance": fingerprint, "profile": "clerk-pc", "serial": 2}, SIGNING)
    with pytest.raises(nft.FirewallError):
        enforcer.offer(newer)
    assert json.loads(state.bundle_file.read_text()) == good
