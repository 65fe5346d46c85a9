"""kura-vault's Unix socket: who may connect, and what a malformed request gets."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess

import pytest

from kura.devserver import LocalAppliance

CONNECT_AS = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("refused", exc.errno); sys.exit(0)
try:
    s.sendall(b'{"id": 1, "op": "status"}\\n')
    s.settimeout(10)
    print("answer", repr(s.recv(1000)))
except OSError:
    print("closed")
"""


def _as_nobody(path: str) -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    pwd.getpwnam("nobody")
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", CONNECT_AS, path],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return done.stdout.strip()


def _ask(path: str, line: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return dict(json.loads(data))


def test_socket_file_is_not_open_to_others(appliance: LocalAppliance) -> None:
    mode = appliance.socket.stat().st_mode & 0o777
    assert mode & 0o007 == 0, oct(mode)
    assert _as_nobody(str(appliance.socket)).startswith("refused")


def test_peer_credentials_are_checked_even_if_the_file_is_opened_up(
    appliance: LocalAppliance,
) -> None:
    # Parent folders must be reachable for this check; the file mode is widened
    # on purpose to show that the vault itself refuses an unknown uid.
    os.chmod(appliance.socket, 0o666)  # noqa: S103
    try:
        os.chmod(appliance.socket.parent, 0o755)  # noqa: S103
        answer = _as_nobody(str(appliance.socket))
    finally:
        os.chmod(appliance.socket, 0o660)
    assert answer in ("answer b''", "closed"), answer


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json\n", "bad_request"),
        (b"[1, 2]\n", "bad_request"),
        (b'{"id": 3}\n', "bad_request"),
        (b'{"id": 4, "op": "no.such.op"}\n', "bad_request"),
        (b'{"id": 5, "op": "status", "args": {"extra": 1}}\n', "bad_request"),
        (b'{"id": 6, "op": "subject.list"}\n', "not_authenticated"),
        (b'{"id": 7, "op": "subject.list", "session": "forged-token"}\n', "not_authenticated"),
        (b'{"id": 8, "op": "bootstrap_da", "args": {"username": "x", "extra": 1}}\n',
         "bad_request"),
        # Nested past any request's needs, and text that is not Unicode (issue 10).
        (b'{"id": 9, "op": "status", "args": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n",
         "bad_request"),
        (b'{"id": 10, "op": "login", "args": {"username": "\\ud800", "password": "x"}}\n',
         "bad_request"),
        (b'{"id": 11, "op": "status", "client": "\\udc00"}\n', "bad_request"),
    ],
)
def test_malformed_requests_get_a_clear_error(
    appliance: LocalAppliance, line: bytes, code: str
) -> None:
    reply = _ask(str(appliance.socket), line)
    assert reply["ok"] is False
    error = reply["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    assert error["message"] and error["message_en"]
    assert "Traceback" not in json.dumps(reply)


def test_status_answers(appliance: LocalAppliance) -> None:
    reply = _ask(str(appliance.socket), b'{"id": 1, "op": "status"}\n')
    assert reply == {"id": 1, "ok": True, "result": reply["result"]}
    result = reply["result"]
    assert isinstance(result, dict) and result["sealed"] is False
