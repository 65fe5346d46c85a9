"""The console's TLS certificate: made on the appliance (kura.tls, with the
host name and addresses as names) or imported as PEM, checked to match its
key. The key belongs to kura-console (0600); the certificate is public."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kura import tls
from kura_firstboot.errors import BadValue
from kura_firstboot.system import System

TLS_DIR = "/etc/kura/tls"
CERT = f"{TLS_DIR}/cert.pem"
KEY = f"{TLS_DIR}/key.pem"


def check_pair(cert_pem: bytes, key_pem: bytes) -> tuple[bytes, bytes]:
    """The certificate chain and the key (PKCS#8) if they belong together and
    the certificate is in force; else :class:`BadValue` saying why."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise BadValue(
            "the certificate is not PEM (-----BEGIN CERTIFICATE-----)",
            "証明書が PEM 形式ではありません（-----BEGIN CERTIFICATE-----）",
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise BadValue(
            "the private key is encrypted; give it without a passphrase",
            "秘密鍵が暗号化されています。パスフレーズなしの鍵を指定してください",
        ) from None
    except ValueError:
        raise BadValue(
            "the private key is not PEM (-----BEGIN PRIVATE KEY-----)",
            "秘密鍵が PEM 形式ではありません（-----BEGIN PRIVATE KEY-----）",
        ) from None
    leaf = certs[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if leaf.public_key().public_bytes(pem, spki) != key.public_key().public_bytes(pem, spki):
        raise BadValue(
            "the private key does not match the certificate",
            "秘密鍵が証明書と一致しません",
        )
    now = dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise BadValue(
            f"the certificate is not valid now ({leaf.not_valid_before_utc:%Y-%m-%d} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d})",
            f"証明書の有効期間外です（{leaf.not_valid_before_utc:%Y-%m-%d}〜"
            f"{leaf.not_valid_after_utc:%Y-%m-%d}）",
        )
    chain = b"".join(c.public_bytes(pem) for c in certs)
    key_out = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key_out


def install(system: System, cert_pem: bytes, key_pem: bytes) -> None:
    """Write a checked pair: key 0600 kura-console, certificate 0644."""
    uid, _ = system.user("kura-console")
    kura_gid = system.group("kura")
    system.make_dir("/etc/kura", 0o750, (0, kura_gid))
    system.make_dir(TLS_DIR, 0o750, (0, kura_gid))
    system.write_file(KEY, key_pem, mode=0o600, owner=(uid, kura_gid))
    system.write_file(CERT, cert_pem, mode=0o644, owner=(0, 0))


def make_self_signed(system: System, names: list[str]) -> None:
    """A new ECDSA P-256 certificate for ``names`` (host name first, then addresses)."""
    with tempfile.TemporaryDirectory(prefix="kura-tls-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        tls.make_self_signed(cert, key, names)
        install(system, cert.read_bytes(), key.read_bytes())


def fingerprint(system: System) -> str | None:
    path = system.path(CERT)
    return tls.fingerprint(path) if path.exists() else None
