"""The endpoint agents' certificate authority (docs/agents.md), pure.

Two levels: the **root CA** signs only the issuing intermediate; its
certificate is made once and stored (the vault keeps it in the database's
settings), so its SHA-256 fingerprint — what an agent pins with
``--fingerprint`` — never changes, on either appliance of a pair. The
**intermediate** signs the agents' client certificates (EKU clientAuth, CN
the agent id, OU the profile) and kura-policy's server certificate (EKU
serverAuth). Both keys come from the root key (kura.core.keys.AgentKeys);
nothing here touches a file, a clock or the database: the caller passes
``now``.

A CSR is taken only with an EC P-256 or P-384 key and a valid signature: an
RSA key or a CSR someone altered is refused with :class:`BadCsr`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kura.core import terminals
from kura.core.errors import BadRequest

ROOT_DAYS = 20 * 365
INTERMEDIATE_DAYS = 10 * 365
CLIENT_DAYS = 2 * 365
SERVER_DAYS = 397
BACKDATE = timedelta(minutes=5)  # a terminal whose clock is a little behind still accepts
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class BadCsr(BadRequest):
    """The certificate request cannot be signed."""

    code = "bad_csr"
    ja = "証明書署名要求（CSR）が正しくありません。"
    en = "The certificate signing request is not acceptable."


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load(text: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(text.encode("ascii"))


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 of the certificate's DER, lower-case hex: what agents pin."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def serial_hex(cert: x509.Certificate) -> str:
    """A certificate's serial as the vault stores and kura-policy passes it:
    lower-case hex without leading zeros (``format(serial, "x")``)."""
    return format(cert.serial_number, "x")


def normalise_serial(text: str) -> str:
    """``serial_hex`` of a serial someone typed or copied (colons, capitals,
    leading zeros); BadRequest if it is not hex."""
    serial = terminals.normalise_serial(text)
    if not serial:
        raise BadRequest(
            "serial: not a hexadecimal certificate serial",
            "serial: 証明書のシリアル番号（16進）ではありません。",
            field="serial",
        )
    return serial


def _name(common: str, unit: str = "") -> x509.Name:
    parts = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kura")]
    if unit:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    parts.append(x509.NameAttribute(NameOID.COMMON_NAME, common))
    return x509.Name(parts)


def _builder(
    subject: x509.Name,
    issuer: x509.Certificate | None,
    issuer_name: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    aki = (
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        if issuer is None
        else x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(secrets.randbits(127) | 1 << 126)  # positive, 127 bits, never short
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


def make_root(key: ec.EllipticCurvePrivateKey, appliance: str, now: datetime) -> x509.Certificate:
    """The root CA certificate (self-signed; made once and stored)."""
    name = _name(f"Kura agent CA ({appliance[:40]})")
    return (
        _builder(name, None, name, key.public_key(), key, now, ROOT_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, hashes.SHA256())
    )


def make_intermediate(
    key: ec.EllipticCurvePrivateKey,
    root: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    appliance: str,
    now: datetime,
) -> x509.Certificate:
    """The issuing intermediate, signed by the root; it signs leaves only."""
    return (
        _builder(_name(f"Kura agent issuing CA ({appliance[:40]})"), root, root.subject,
                 key.public_key(), root_key, now, INTERMEDIATE_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(root_key, hashes.SHA256())
    )


def belongs(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """True if ``cert`` is for ``key`` (a stored CA certificate under another
    root key is not this appliance's)."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, fmt) == key.public_key().public_bytes(der, fmt)


def load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """The CSR if its key is EC P-256/P-384 and its signature holds; BadCsr otherwise."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise BadCsr("csr: not a PEM certificate request",
                     "csr: PEM 形式の証明書署名要求ではありません。", reason="format") from None
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                         ACCEPTED_CURVES):
        raise BadCsr("csr: the key must be ECDSA P-256 or P-384",
                     "csr: 鍵は ECDSA P-256 または P-384 でなければなりません。", reason="key")
    if not csr.is_signature_valid:
        raise BadCsr("csr: the signature does not verify",
                     "csr: 署名を検証できません。", reason="signature")
    return csr


def issue_client(
    csr: x509.CertificateSigningRequest,
    agent_id: str,
    profile: str,
    intermediate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
) -> x509.Certificate:
    """An agent's client certificate: CN the agent id, OU the profile. Whatever
    the CSR asked for as a subject is ignored; only its key is taken."""
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)  # load_csr checked it
    return (
        _builder(_name(agent_id, profile), intermediate, intermediate.subject, public, key,
                 now, CLIENT_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_server(
    csr: x509.CertificateSigningRequest,
    names: list[str],
    intermediate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
) -> x509.Certificate:
    """kura-policy's server certificate for ``names`` (addresses and host
    names; at least one)."""
    if not names:
        raise BadRequest("names: at least one address or host name",
                         "names: アドレスかホスト名が一つ以上必要です。", field="names")
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return (
        _builder(_name(names[0][:64], "kura-policy"), intermediate, intermediate.subject, public,
                 key, now, SERVER_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )


def ip_names(names: list[str]) -> list[str]:
    """The names that are IP addresses, normalised."""
    found = []
    for name in names:
        try:
            found.append(str(ipaddress.ip_address(name)))
        except ValueError:
            continue
    return found
