"""The witness as the formation's authority: its CA, the enrol code that tells a data
node where the monitor is and which CA to trust, and the enrolment bundle that gives
a node its certificate and the formation's passwords.

Pure: certificates and text in, certificates and text out; ``kura witness``
(kura.witness) writes the files and runs pg_autoctl, the first-boot wizard reads
them. docs/ha.md ("Setting up a pair") tells the steps.

Why a code *and* a bundle: the bundle (a file, carried to the node on a stick or
by scp) holds the node's private key and the passwords, so it must travel by hand
anyway; the enrol code is short enough to read off the witness's screen and type,
and pins the CA the bundle brings. A bundle swapped on the way, or a bundle from
another witness, names a CA whose fingerprint differs from the code's, and the node
refuses it before it ever connects. Every connection afterwards is TLS verify-full
against that CA, so a monitor with another CA is refused by libpq too.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kura.core import formation
from kura.core.errors import KuraError

CODE_PREFIX = "KW1"
CODE_VERSION = 1
# 128 bits of the CA certificate's SHA-256: a forged CA with the same prefix is a
# second preimage (2^128 work), and the code stays short enough to type.
PIN_BYTES = 16
CHECK_BYTES = 4  # SHA-256 of the payload: a typo passes with odds 1 in 2^32
_KIND_IPV4, _KIND_IPV6, _KIND_NAME = 4, 6, 1
# Crockford's base32: no I, L, O, U; I and L read as 1, O as 0.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_READ_AS = {"O": "0", "I": "1", "L": "1"}
_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
CA_DAYS = 3650
CERT_DAYS = 3650
BUNDLE_KIND = "kura-witness-enrolment"
# The formation's accounts; the witness makes every password, the nodes get them in
# their bundle (the monitor's health checks and replication use them as well).
ACCOUNTS = (formation.MONITOR_USER, formation.REPLICATION_USER, formation.HEALTH_USER)


class EnrolError(KuraError):
    """A bad enrol code or bundle: nothing has changed on the node."""

    status = 400
    code = "bad_enrolment"


# --- the enrol code -----------------------------------------------------------------


@dataclass(frozen=True)
class EnrolCode:
    address: str  # the monitor's address (IPv4, IPv6 or a DNS name), in its certificate
    port: int
    pin: bytes  # the first PIN_BYTES of the SHA-256 of the CA certificate (DER)

    def monitor_uri(self, ca_file: str) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return (f"postgres://{formation.MONITOR_USER}@{host}:{self.port}/"
                f"{formation.MONITOR_DB}?sslmode=verify-full&sslrootcert={ca_file}")


def ca_pin(ca_pem: bytes) -> bytes:
    return ca_fingerprint(ca_pem)[:PIN_BYTES]


def ca_fingerprint(ca_pem: bytes) -> bytes:
    """SHA-256 of the certificate's DER, as ``openssl x509 -fingerprint -sha256`` shows."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    return cert.fingerprint(hashes.SHA256())


def format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def _b32encode(data: bytes) -> str:
    bits = int.from_bytes(data, "big")
    count = (len(data) * 8 + 4) // 5
    bits <<= count * 5 - len(data) * 8
    return "".join(_ALPHABET[(bits >> (5 * (count - 1 - i))) & 31] for i in range(count))


def _b32decode(text: str, length: int) -> bytes:
    bits = 0
    for char in text:
        bits = (bits << 5) | _ALPHABET.index(char)
    extra = len(text) * 5 - length * 8
    if extra < 0 or extra >= 5 or bits & ((1 << extra) - 1):
        raise ValueError("padding")
    return (bits >> extra).to_bytes(length, "big")


def encode(code: EnrolCode) -> str:
    """``KW1-XXXXX-XXXXX-…``: version, address, port, the CA's pin and a checksum."""
    if not 0 < code.port < 65536 or len(code.pin) != PIN_BYTES:
        raise ValueError("port or pin out of range")
    try:
        ip = ipaddress.ip_address(code.address)
        where = bytes([_KIND_IPV4 if ip.version == 4 else _KIND_IPV6]) + ip.packed
    except ValueError:
        if not _NAME.match(code.address):
            raise ValueError(f"not an address or host name: {code.address!r}") from None
        name = code.address.lower().encode("ascii")
        where = bytes([_KIND_NAME, len(name)]) + name
    payload = bytes([CODE_VERSION]) + where + code.port.to_bytes(2, "big") + code.pin
    data = payload + hashlib.sha256(payload).digest()[:CHECK_BYTES]
    body = _b32encode(data)
    return "-".join([CODE_PREFIX, *(body[i:i + 5] for i in range(0, len(body), 5))])


_BAD_CODE = ("this is not a witness enrol code, or it was mistyped (its check does not "
             "match); type it again from the witness's screen (kura witness enrol-code)",
             "ウィットネスの登録コードではないか、入力に誤りがあります（検査値が一致しません）。"
             "ウィットネスの画面（kura witness enrol-code）から入力し直してください。")


def decode(text: str) -> EnrolCode:
    """The code as typed: case, spaces and hyphens do not matter, O/I/L read as 0/1.
    A typo (or a changed address or pin) fails the checksum; nothing else is guessed."""
    cleaned = re.sub(r"[\s\-\u2010-\u2015\u30fc\uff0d]", "", text).upper()
    cleaned = "".join(_READ_AS.get(c, c) for c in cleaned)
    if not cleaned.startswith(CODE_PREFIX):
        raise EnrolError(*_BAD_CODE)
    body = cleaned[len(CODE_PREFIX):]
    if not body or any(c not in _ALPHABET for c in body):
        raise EnrolError(*_BAD_CODE)
    try:
        data = _b32decode(body, len(body) * 5 // 8)
    except ValueError:
        raise EnrolError(*_BAD_CODE) from None
    payload, check = data[:-CHECK_BYTES], data[-CHECK_BYTES:]
    if len(payload) < 2 or hashlib.sha256(payload).digest()[:CHECK_BYTES] != check:
        raise EnrolError(*_BAD_CODE)
    if payload[0] != CODE_VERSION:
        raise EnrolError(f"enrol code version {payload[0]} is not known to this Kura",
                         f"登録コードの版 {payload[0]} はこの Kura では扱えません。")
    kind, rest = payload[1], payload[2:]
    try:
        if kind == _KIND_IPV4:
            address, rest = str(ipaddress.IPv4Address(rest[:4])), rest[4:]
        elif kind == _KIND_IPV6:
            address, rest = str(ipaddress.IPv6Address(rest[:16])), rest[16:]
        elif kind == _KIND_NAME:
            size = rest[0]
            address, rest = rest[1:1 + size].decode("ascii"), rest[1 + size:]
        else:
            raise ValueError
        if len(rest) != 2 + PIN_BYTES:
            raise ValueError
    except (ValueError, IndexError, UnicodeDecodeError):
        raise EnrolError(*_BAD_CODE) from None
    return EnrolCode(address, int.from_bytes(rest[:2], "big"), rest[2:])


# --- the CA and the certificates ------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes = b""


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str, now: datetime.datetime) -> Issued:
    """The formation's CA: signs the monitor's and every data node's certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Kura witness CA {name}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(address: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)


def issue(ca: Issued, name: str, address: str, now: datetime.datetime) -> Issued:
    """A server and client certificate for ``address`` (the name libpq checks under
    verify-full), signed by the CA; a new key made here."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName([_san(address)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def new_passwords() -> dict[str, str]:
    return {account: secrets.token_urlsafe(24) for account in ACCOUNTS}


def pgpass(passwords: dict[str, str]) -> str:
    """The postgres user's ~/.pgpass (0600): how pg_autoctl and libpq find them without
    argv or a world-readable file. Colons and backslashes are escaped as libpq wants."""
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")
    return "".join(f"*:*:*:{esc(user)}:{esc(pw)}\n" for user, pw in sorted(passwords.items()))


# --- the enrolment bundle ----------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    node: str
    address: str  # the node's address, in its certificate
    monitor: str  # the monitor's address, as in the enrol code
    port: int
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    passwords: dict[str, str]

    def to_json(self) -> str:
        return json.dumps({
            "kind": BUNDLE_KIND, "version": 1, "node": self.node, "address": self.address,
            "monitor": self.monitor, "port": self.port, "ca": self.ca_pem.decode(),
            "cert": self.cert_pem.decode(), "key": self.key_pem.decode(),
            "passwords": self.passwords}, indent=1) + "\n"

    def __repr__(self) -> str:  # never the key or the passwords
        return f"Bundle(node={self.node!r}, address={self.address!r}, monitor={self.monitor!r})"


def make_bundle(ca: Issued, code: EnrolCode, node: str, address: str,
                passwords: dict[str, str], now: datetime.datetime) -> Bundle:
    check_node_name(node)
    issued = issue(ca, node, address, now)
    return Bundle(node, address, code.address, code.port, ca.cert_pem, issued.cert_pem,
                  issued.key_pem, dict(passwords))


def check_node_name(node: str) -> str:
    if not NODE_NAME.match(node):
        raise EnrolError(
            f"{node!r} is not a node name: lower-case letters, digits, - and _, at most 63",
            f"{node!r} はノード名として使えません（英小文字・数字・- と _、63 文字以内）。")
    return node


def read_bundle(text: str, code: EnrolCode, now: datetime.datetime) -> Bundle:
    """The bundle as the node reads it, checked against the code typed from the
    witness's screen: the CA's pin (refused if it differs: another witness, or a
    bundle swapped on the way), the monitor's address, the node's certificate signed
    by that CA, in force, and matching its key."""
    try:
        raw = json.loads(text)
        if raw.get("kind") != BUNDLE_KIND or raw.get("version") != 1:
            raise ValueError
        bundle = Bundle(str(raw["node"]), str(raw["address"]), str(raw["monitor"]),
                        int(raw["port"]), str(raw["ca"]).encode(), str(raw["cert"]).encode(),
                        str(raw["key"]).encode(),
                        {str(k): str(v) for k, v in dict(raw["passwords"]).items()})
        ca = x509.load_pem_x509_certificate(bundle.ca_pem)
        cert = x509.load_pem_x509_certificate(bundle.cert_pem)
        key = serialization.load_pem_private_key(bundle.key_pem, None)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise EnrolError("the enrolment file is not one that kura witness enrol wrote",
                         "登録ファイルが kura witness enrol の作ったものではありません。") from None
    if not secrets.compare_digest(ca.fingerprint(hashes.SHA256())[:PIN_BYTES], code.pin):
        raise EnrolError(
            "the enrolment file's CA does not match the enrol code: it comes from another "
            "witness or was changed; refusing this monitor (CA "
            f"{format_fingerprint(ca.fingerprint(hashes.SHA256()))})",
            "登録ファイルの CA が登録コードと一致しません。別のウィットネスのものか、"
            "改ざんされています。このモニターは使いません。")
    if (bundle.monitor, bundle.port) != (code.address, code.port):
        raise EnrolError(
            f"the enrolment file names the monitor {bundle.monitor}:{bundle.port}, the enrol "
            f"code {code.address}:{code.port}",
            f"登録ファイルのモニター {bundle.monitor}:{bundle.port} が登録コードの "
            f"{code.address}:{code.port} と異なります。")
    try:
        ca_key = ca.public_key()
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes,
                      ec.ECDSA(cert.signature_hash_algorithm or hashes.SHA256()))
    except (InvalidSignature, AssertionError):
        raise EnrolError("the node's certificate is not signed by the enrol code's CA",
                         "ノードの証明書が登録コードの CA で署名されていません。") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise EnrolError("the node's certificate is not in force now",
                         "ノードの証明書は現在有効ではありません。")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise EnrolError("the node's key does not match its certificate",
                         "ノードの鍵が証明書と一致しません。")
    missing = [a for a in ACCOUNTS if not bundle.passwords.get(a)]
    if missing:
        raise EnrolError(f"the enrolment file lacks passwords for {', '.join(missing)}",
                         f"登録ファイルに {', '.join(missing)} のパスワードがありません。")
    return bundle
