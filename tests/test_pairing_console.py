"""Pairing a standby from the primary's console, over the network.

The standby runs the real ``kura ha offer --serve`` (its pairing port on
loopback); the DA types its address and the code its screen shows on the
console's pairing page; an SA approves on the same page; the DA delivers the
envelope; the standby seals the primary's root key and stops serving. No
browser: the pages are fetched and posted as a browser would, with the
visitor's session and the page's CSRF token."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kura.devserver import LocalAppliance
from kura.vault import pairing, sealing
from tests.support import Api, Response, signed_in
from tests.test_audit_integrity import console
from tests.test_pairing_flow import KURA, Standby, audit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serving:
    """``kura ha offer --serve`` as a process, with what its screen shows."""

    def __init__(self, standby: Standby, port: int, host: str = "127.0.0.1",
                 *extra: str) -> None:
        # The address the primary reaches (a VM reaches its host as 10.0.2.2);
        # the standby listens on loopback either way.
        self.address = f"{host}:{port}"
        self.proc = subprocess.Popen(
            [*KURA, "ha", "offer", "--address", self.address, "--listen", "127.0.0.1",
             "--serve", "--config", str(standby.config), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.screen: list[str] = []
        for line in self.proc.stdout:
            self.screen.append(line)
            if line.startswith("waiting for the primary"):
                break
        shown = re.search(r"ペアリングコード:\s+(\d{4} \d{4} \d{4})", "".join(self.screen))
        assert shown, "".join(self.screen) + self.proc.stderr.read() if self.proc.stderr else ""
        self.code = shown.group(1)
        fingerprint = re.search(r"offer ([0-9a-f-]+),", "".join(self.screen))
        assert fingerprint, self.screen
        self.fingerprint = fingerprint.group(1)

    def finish(self, timeout: float = 15) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.screen) + out + err


@pytest.fixture()
def serving(tmp_path: Path) -> Iterator[tuple[Standby, Serving]]:
    standby = Standby(tmp_path)
    served = Serving(standby, free_port())
    yield standby, served
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.wait()


def post(api: Api, path: str, fields: dict[str, str], page: str = "/admin/ha/pair") -> Response:
    shown = console(api, "GET", page)
    assert shown.status == 200, shown.body[:300]
    csrf = re.search(rb'name="csrf" value="([^"]+)"', shown.body)
    assert csrf, shown.body[:500]
    return console(api, "POST", path, {"csrf": csrf.group(1).decode(), **fields})


def test_the_da_pairs_a_standby_from_the_console_and_an_sa_approves(
    appliance: LocalAppliance, users: dict[str, Api], serving: tuple[Standby, Serving]
) -> None:
    standby, served = serving
    da, sa = signed_in(users["DA"]), signed_in(users["SA"])

    # A mistyped code (check digits disagree) is refused on the page, clearly.
    digits = served.code.replace(" ", "")
    typo = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    r = post(da, "/admin/ha/pair", {"address": served.address, "code": typo})
    assert r.status == 422, r.status
    assert "ペアリングコードが一致しません" in r.body.decode()

    r = post(da, "/admin/ha/pair", {"address": served.address, "code": served.code})
    assert r.status == 303, r.body[:300]
    page = console(sa, "GET", "/admin/ha/pair").body.decode()
    # The SA sees the standby's name, address and the fingerprint its screen shows.
    assert "kura-test-standby" in page and served.address in page
    assert served.fingerprint in page
    pairing_id = re.search(r'data-pairing="([0-9a-f-]{36})" data-state="proposed"', page)
    assert pairing_id, page[-2000:]
    pid = pairing_id.group(1)
    # The DA cannot approve their own proposal; the SA can.
    assert post(da, f"/admin/ha/pairings/{pid}/approve", {}).status == 403
    r = post(sa, f"/admin/ha/pairings/{pid}/approve", {})
    assert r.status == 303, r.body[:300]

    r = post(da, f"/admin/ha/pairings/{pid}/deliver", {})
    assert r.status == 303, r.body[:300]
    code, screen = served.finish()
    assert code == 0, screen
    assert "paired with kura-test-shared" in screen
    assert sealing.load_host(standby.keys) == sealing.load_host(appliance.keys_dir)
    assert not (standby.keys / pairing.PENDING_FILE).exists()
    assert any(e["detail"].get("id") == pid for e in audit(users["SA"], "ha.paired"))


def pair_through_the_console(da: Api, sa: Api, served: Serving) -> str:
    assert post(da, "/admin/ha/pair", {"address": served.address, "code": served.code}
                ).status == 303
    page = console(sa, "GET", "/admin/ha/pair").body.decode()
    found = re.search(r'data-pairing="([0-9a-f-]{36})" data-state="proposed"', page)
    assert found, page[-2000:]
    assert post(sa, f"/admin/ha/pairings/{found.group(1)}/approve", {}).status == 303
    assert post(da, f"/admin/ha/pairings/{found.group(1)}/deliver", {}).status == 303
    return found.group(1)


def test_an_unpaired_standby_can_be_paired_again(
    appliance: LocalAppliance, users: dict[str, Api], serving: tuple[Standby, Serving]
) -> None:
    standby, served = serving
    da, sa = signed_in(users["DA"]), signed_in(users["SA"])
    pair_through_the_console(da, sa, served)
    assert served.finish()[0] == 0
    root = sealing.load_host(appliance.keys_dir)
    assert sealing.load_host(standby.keys) == root

    # Without --yes nothing is removed; with it the key and the pairing are gone.
    asked = standby.kura("ha", "unpair")
    assert asked.returncode == 2 and "--yes" in asked.stderr
    assert sealing.read_seal(standby.keys) is not None
    done = standby.kura("ha", "unpair", "--yes")
    assert done.returncode == 0, done.stderr
    assert "unpaired from kura-test-shared" in done.stdout
    assert sealing.read_seal(standby.keys) is None
    assert not (standby.keys / pairing.PAIRED_FILE).exists()
    again = standby.kura("ha", "unpair", "--yes")
    assert again.returncode == 1 and "not a paired standby" in again.stderr

    # A new offer, a new code, the same ceremony: paired again.
    served = Serving(standby, free_port())
    try:
        pair_through_the_console(da, sa, served)
        code, screen = served.finish()
        assert code == 0, screen
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    assert sealing.load_host(standby.keys) == root


def test_an_unreachable_standby_is_a_clear_error(
    users: dict[str, Api], tmp_path: Path
) -> None:
    da = signed_in(users["DA"])
    r = post(da, "/admin/ha/pair", {"address": f"127.0.0.1:{free_port()}",
                                    "code": "1234 5678 9012"})
    assert r.status == 502, r.status
    assert "kura ha offer --serve" in r.body.decode()
    r = post(da, "/admin/ha/pair", {"address": "not an address!", "code": "1"})
    assert r.status == 400, r.status
    assert "Traceback" not in r.body.decode()
