"""What a network attacker on the clerks' LAN meets: only the console's
HTTPS port, TLS 1.2 or newer, and nothing else of the appliance on the
network (the vault and PostgreSQL listen on Unix sockets only)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

import pytest

from kura.devserver import LocalAppliance


def test_plain_http_gets_no_page(appliance: LocalAppliance) -> None:
    """A request in clear (to read or inject a page) is never answered with one."""
    with socket.create_connection(("127.0.0.1", appliance.port), timeout=10) as s:
        s.sendall(b"GET /login HTTP/1.1\r\nHost: kura\r\n\r\n")
        try:
            answer = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert b"HTTP/1.1 200" not in answer and b"<html" not in answer.lower()


def _old_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = version
    context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1],
                         ids=["TLSv1.0", "TLSv1.1"])
def test_old_tls_versions_are_refused(appliance: LocalAppliance, version: ssl.TLSVersion) -> None:
    # The control: this client really speaks the old version (to a server that
    # allows it), so the appliance's refusal below is the appliance's doing.
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.minimum_version = version
    server_context.set_ciphers("ALL:@SECLEVEL=0")
    server_context.load_cert_chain(appliance.cert, appliance.cert.parent / "key.pem")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), server_context.wrap_socket(conn, server_side=True):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            _old_client(version).wrap_socket(raw) as tls,
        ):
            assert tls.version() == {"TLSv1": "TLSv1", "TLSv1_1": "TLSv1.1"}[version.name]
        thread.join(10)
    # The console, and kura-policy (the agents' port).
    for port in (appliance.port, appliance.policy_port):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            pytest.raises((ssl.SSLError, ConnectionResetError)),
            _old_client(version).wrap_socket(raw),
        ):
            pass


def test_tls_1_2_and_newer_are_accepted_with_the_appliances_certificate(
    appliance: LocalAppliance,
) -> None:
    context = ssl.create_default_context(cafile=str(appliance.cert))
    context.check_hostname = False  # the test certificate names 127.0.0.1, not "kura"
    with (
        socket.create_connection(("127.0.0.1", appliance.port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_postgresql_and_the_vault_are_not_on_the_network(appliance: LocalAppliance) -> None:
    """Only the console's port answers on TCP: the database cluster has no TCP
    listener at all and the vault is a Unix socket."""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", appliance.pg_port), timeout=5).close()
    listening = _tcp_listeners()
    assert appliance.port in listening
    assert appliance.pg_port not in listening


def _tcp_listeners() -> set[int]:
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
