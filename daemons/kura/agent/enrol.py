"""``kura-agent enroll``: pin the appliance's agent CA, get a certificate.

Trust on first use, made safe by the fingerprint the SA reads off the
console: the CA certificate is fetched without verification (nothing else
could verify it yet), and refused unless the SHA-256 of its DER is exactly the
``--fingerprint`` given. From then on the agent trusts that CA alone (not the
system's store) and sends its token only over a connection verified by it.
The key is made here and never leaves the endpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kura.agent.errors import AgentError
from kura.agent.state import Identity, State
from kura.core import bundle

TIMEOUT = 30


class EnrolRefused(AgentError):
    """The appliance, or its CA, was not the one expected; nothing stored."""


def normalise_fingerprint(text: str) -> str:
    """Lower-case hex without separators; ``AgentError`` unless 64 hex digits."""
    cleaned = re.sub(r"[\s:]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", cleaned):
        raise AgentError("--fingerprint must be a SHA-256 in hex (64 digits, colons allowed)")
    return cleaned


def pinned_context(ca_pem: str) -> ssl.SSLContext:
    """TLS trusting only the agent CA. The host name is not checked (the
    appliance may be reached by any of its addresses); the chain is, and the
    leaf must carry serverAuth (ssl's default purpose checks it)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    context.check_hostname = False
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _request(url: str, context: ssl.SSLContext, data: dict[str, Any] | None = None) -> bytes:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(  # noqa: S310 - enroll() accepts https:// only
        url, data=body, method="POST" if body else "GET",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as answer:  # noqa: S310 - https only
            return bytes(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", {})
            reason = detail.get("detail") or detail.get("message_en") or detail.get("code")
        except (ValueError, AttributeError):
            reason = ""
        raise EnrolRefused(f"the appliance refused: HTTP {exc.code} {reason or ''}".strip()) \
            from exc
    except (urllib.error.URLError, OSError) as exc:
        raise AgentError(f"cannot reach {url.split('/kura-agent')[0]}: "
                         f"{getattr(exc, 'reason', exc)}") from exc


def fetch_ca(server: str, fingerprint: str) -> str:
    """The CA certificate (PEM) if its DER's SHA-256 is ``fingerprint``."""
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # checked against the pin below
    pem = _request(f"{server}/kura-agent/v1/ca", unverified)
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise EnrolRefused("the appliance did not send a CA certificate") from exc
    got = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    if got != fingerprint:
        raise EnrolRefused(f"the CA's fingerprint is {got}, not the one given: not the "
                           "appliance you meant (or someone in between); nothing stored")
    return pem.decode("ascii")


def make_key_and_csr(hostname: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def enroll(state: State, server: str, token: str, fingerprint: str,
           hostname: str | None = None) -> Identity:
    server = server.rstrip("/")
    if not server.startswith("https://"):
        raise AgentError("--server must be an https:// URL (e.g. https://kura.example:8445)")
    fingerprint = normalise_fingerprint(fingerprint)
    ca_pem = fetch_ca(server, fingerprint)
    context = pinned_context(ca_pem)
    hostname = hostname or socket.gethostname()
    key, csr = make_key_and_csr(hostname)
    raw = _request(f"{server}/kura-agent/v1/enrol", context,
                   {"token": token, "csr": csr, "hostname": hostname})
    try:
        answer = json.loads(raw)
        certificate, chain = str(answer["certificate"]), str(answer["chain"])
        bundle.public_key_from_text(str(answer["bundle_key"]))
        identity = Identity(agent_id=str(answer["agent_id"]), profile=str(answer["profile"]),
                            server=server, fingerprint=fingerprint,
                            bundle_key=str(answer["bundle_key"]))
    except (ValueError, KeyError, TypeError, bundle.Refused) as exc:
        raise EnrolRefused(f"the appliance's answer is not an enrolment: {exc}") from exc
    if identity.profile not in bundle.PROFILES:
        raise EnrolRefused(f"unknown profile {identity.profile[:40]!r}")
    _check_certificate(certificate, chain, ca_pem, key)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    state.write(state.key, key_pem, 0o600)
    state.write(state.cert, (certificate.strip() + "\n" + chain.strip() + "\n").encode())
    state.write(state.chain, (chain.strip() + "\n").encode())
    state.write(state.ca, ca_pem.encode())
    state.save_identity(identity)
    return identity


def _check_certificate(certificate: str, chain: str, ca_pem: str,
                       key: ec.EllipticCurvePrivateKey) -> None:
    """The issued certificate is for our key and chains to the pinned CA."""
    try:
        leaf = x509.load_pem_x509_certificate(certificate.encode())
    except ValueError as exc:
        raise EnrolRefused("the appliance's certificate cannot be read") from exc
    if leaf.public_key() != key.public_key():
        raise EnrolRefused("the certificate issued is not for this agent's key")
    try:
        intermediate = x509.load_pem_x509_certificate(chain.encode())
        root = x509.load_pem_x509_certificate(ca_pem.encode())
        _issued_by(leaf, intermediate)
        _issued_by(intermediate, root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrolRefused("the certificate does not chain to the pinned CA") from exc


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    """``InvalidSignature`` unless ``issuer``'s key signed ``certificate`` (all
    of the agent CA's keys are ECDSA; by hand because Debian 12's cryptography
    lacks ``verify_directly_issued_by``)."""
    key = issuer.public_key()
    algorithm = certificate.signature_hash_algorithm
    if certificate.issuer != issuer.subject or not isinstance(key, ec.EllipticCurvePublicKey) \
            or algorithm is None:
        raise InvalidSignature("not issued by the pinned CA")
    key.verify(certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(algorithm))
