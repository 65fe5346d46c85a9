"""The agents' CA (kura.core.agentca): OpenSSL, through Python's ssl, takes
its chain for mutual TLS exactly as kura-policy and kura-agent will use it,
and refuses what was not issued under it."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kura.core import agentca
from kura.core.errors import BadRequest
from kura.core.keys import AgentKeys, new_root_key

NOW = datetime.now(UTC)


def _csr(key: object, cn: str = "ignored") -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pki:
    def __init__(self, root_key: bytes | None = None) -> None:
        self.keys = AgentKeys.derive(root_key or new_root_key())
        self.root = agentca.make_root(self.keys.root_ca, "kura-test", NOW)
        self.inter = agentca.make_intermediate(self.keys.issuing, self.root, self.keys.root_ca,
                                               "kura-test", NOW)

    def client(self, folder: Path, agent_id: str = "agent-abcdefghjk") -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = agentca.issue_client(agentca.load_csr(_csr(key, "someone-else")), agent_id,
                                    "clerk-pc", self.inter, self.keys.issuing, NOW)
        return self._files(folder, "client", cert, key)

    def server(self, folder: Path) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = agentca.issue_server(agentca.load_csr(_csr(key)), ["127.0.0.1", "kura.example"],
                                    self.inter, self.keys.issuing, NOW)
        return self._files(folder, "server", cert, key)

    def _files(self, folder: Path, name: str, cert: x509.Certificate,
               key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        chain, key_file = folder / f"{name}.pem", folder / f"{name}.key"
        chain.write_text(agentca.pem(cert) + agentca.pem(self.inter))
        key_file.write_bytes(_key_pem(key))
        return chain, key_file


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """Connect over TLS on 127.0.0.1: the client certificate's CN as the
    server saw it, or None when the connection was refused (with TLS 1.3 the
    client learns of it only when it reads)."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        seen.append(dict(x[0] for x in peer["subject"])["commonName"])
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="127.0.0.1")
        answer = await reader.readline()
        writer.close()
    except (ssl.SSLError, ConnectionError):
        answer = b""
    finally:
        server.close()
        await server.wait_closed()
    return seen[0] if answer == b"ok\n" else None


def _contexts(pki: Pki, trusted: Pki, tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(*trusted.server(tmp_path))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=agentca.pem(trusted.root))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=agentca.pem(trusted.root))
    client.load_cert_chain(*pki.client(tmp_path))
    return server, client


def test_openssl_takes_the_chain_for_mutual_tls(tmp_path: Path) -> None:
    pki = Pki()
    server, client = _contexts(pki, pki, tmp_path)
    assert asyncio.run(_handshake(server, client)) == "agent-abcdefghjk"


def test_a_client_of_another_appliance_is_refused(tmp_path: Path) -> None:
    server, client = _contexts(Pki(), Pki(), tmp_path)
    assert asyncio.run(_handshake(server, client)) is None


def test_the_same_root_key_gives_the_same_keys_but_the_stored_root_is_what_is_pinned() -> None:
    root_key = new_root_key()
    one, two = Pki(root_key), Pki(root_key)
    assert agentca.belongs(one.root, two.keys.root_ca)
    assert not agentca.belongs(one.root, Pki().keys.root_ca)
    assert len(agentca.fingerprint(one.root)) == 64


def test_leaf_certificates_say_what_they_are_for(tmp_path: Path) -> None:
    pki = Pki()
    chain, _ = pki.client(tmp_path)
    leaf = x509.load_pem_x509_certificate(chain.read_bytes())
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    unit = leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert unit == "clerk-pc"
    assert leaf.serial_number.bit_length() == 127
    assert len(agentca.serial_hex(leaf)) == 32
    assert agentca.normalise_serial(":".join(agentca.serial_hex(leaf).upper())) == \
        agentca.serial_hex(leaf)
    with pytest.raises(BadRequest):
        agentca.normalise_serial("-" + agentca.serial_hex(leaf))
    server_chain, _ = pki.server(tmp_path)
    server = x509.load_pem_x509_certificate(server_chain.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kura.example"]


def test_csr_with_a_wrong_key_or_a_broken_signature_is_refused() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(agentca.BadCsr) as caught:
        agentca.load_csr(_csr(rsa_key))
    assert caught.value.detail["reason"] == "key"
    with pytest.raises(agentca.BadCsr):
        agentca.load_csr(_csr(ec.generate_private_key(ec.SECP521R1())))
    good = _csr(ec.generate_private_key(ec.SECP384R1()))
    agentca.load_csr(good)
    # Another key's public half put into a signed CSR: the signature no longer holds.
    csr = x509.load_pem_x509_csr(good.encode())
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    old_point = csr.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
    new_point = other.public_bytes(serialization.Encoding.X962,
                                   serialization.PublicFormat.UncompressedPoint)
    at = bytes(der).index(old_point)
    der[at:at + len(old_point)] = new_point
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(agentca.BadCsr) as caught:
        agentca.load_csr(forged)
    assert caught.value.detail["reason"] == "signature"
    with pytest.raises(agentca.BadCsr):
        agentca.load_csr("not a csr")
