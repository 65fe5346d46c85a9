"""Both daemons tell systemd when they are ready and keep its watchdog fed
(through sdnotify), so that a hung daemon is restarted. Tested with a real
notification socket, as systemd would hold it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import new_appliance


def _messages(sock: socket.socket, seconds: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def test_ready_and_watchdog(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = new_appliance("notify")
    app.prepare()
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # 0.6 s: pings every 0.2 s
    try:
        app.start_daemon("vault")
        app.start_daemon("console")
        messages = _messages(sock, 2.0)
        ready = [m for m in messages if "READY=1" in m]
        assert len(ready) == 2, messages  # one from each daemon
        assert any("STATUS=unsealed" in m for m in ready)
        assert sum("WATCHDOG=1" in m for m in messages) >= 4, messages
        app.stop_daemon("console")
        app.stop_daemon("vault")
        assert any("STOPPING=1" in m for m in _messages(sock, 0.5))
    finally:
        sock.close()
        app.stop()
