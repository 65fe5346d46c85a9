"""kura-policy's TLS: a key made in memory at start, a server certificate the
vault's issuing intermediate signs for it, and the context that asks agents
for their client certificate.

The key never reaches a file system: ``ssl`` loads keys only from a path, so
it is handed over through an anonymous memory file (memfd) that is closed
once loaded. The agent CA is the only trust anchor; the intermediate is
loaded beside it (not self-signed, so it is a step of a chain, not an anchor)
so that agents presenting only their own certificate verify. The client
certificate is optional at the TLS layer because enrolment and ``/ca`` come
without one; the routes that need one refuse its absence.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ServerKey:
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> ServerKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    def csr_pem(self, names: list[str]) -> str:
        """A CSR naming ``names`` (addresses as IP SANs, the rest as DNS names)."""
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .add_extension(x509.SubjectAlternativeName(alt_names(names)), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    found: list[x509.GeneralName] = []
    for name in names:
        try:
            found.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            found.append(x509.DNSName(name))
    return found


def server_names(listen: str, vip: str | None, addresses: Iterable[str] = ()) -> list[str]:
    """The names agents may reach kura-policy by: the listening address (or,
    when it listens on all, each of the host's addresses), the host's name and
    the HA floating address. Unique, in a stable order."""
    chosen: list[str] = []
    if listen not in ("0.0.0.0", "::", ""):  # noqa: S104 (compared, not bound)
        chosen.append(listen)
    else:
        # The vault puts these in every bundle as the appliance's addresses:
        # an agent's own loopback or link-local ones would mean nothing there.
        chosen += [a for a in addresses if not (ipaddress.ip_address(a).is_link_local
                                                or ipaddress.ip_address(a).is_loopback)]
    if vip:
        chosen.append(vip)
    chosen.append(socket.gethostname())
    return list(dict.fromkeys(chosen))


def host_addresses() -> list[str]:
    """The host's unicast addresses (netlink), loopback last."""
    from pyroute2 import IPRoute  # only the daemon's start needs netlink

    with IPRoute() as ipr:
        found = [str(msg.get_attr("IFA_ADDRESS")) for msg in ipr.get_addr()]
    found = [a for a in found if a and a != "None"]
    return sorted(found, key=lambda a: (ipaddress.ip_address(a).is_loopback, a))


def _load_key_from_memory(context: ssl.SSLContext, chain_pem: str, key_pem: bytes) -> None:
    fd = os.memfd_create("kura-policy-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem)
        certs = os.memfd_create("kura-policy-chain", os.MFD_CLOEXEC)
        try:
            os.write(certs, chain_pem.encode("ascii"))
            context.load_cert_chain(f"/proc/self/fd/{certs}", f"/proc/self/fd/{fd}")
        finally:
            os.close(certs)
    finally:
        os.close(fd)


def server_context(key: ServerKey, certificate: str, chain: str, ca_pem: str) -> ssl.SSLContext:
    """TLS 1.2 at least (1.3 preferred by OpenSSL's negotiation), the server's
    certificate with its intermediate, client certificates optional and, when
    sent, verified against the agent CA alone."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_key_from_memory(context, certificate.rstrip() + "\n" + chain, key.pem())
    context.verify_mode = ssl.CERT_OPTIONAL
    # Only the agent CA (self-signed) anchors; the intermediates of the chain
    # complete agents' chains.
    context.verify_flags &= ~ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_verify_locations(cadata=ca_pem.rstrip() + "\n" + chain)
    return context
