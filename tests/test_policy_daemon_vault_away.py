"""kura-policy when the vault is sealed or away, as agents and custodians see
it: at a sealed start it does not serve (it has no certificate yet) and
serves within seconds of the unseal; while the vault is stopped an agent's
open stream stays open and its heartbeats are answered with an error, not a
hang-up; once the vault is back (restarted, unsealed again) the SA's next
policy reaches the same stream."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, activate, provision
from tests.test_policy_daemon import PROFILE, Agent, verified


def serving(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def unseal(app: LocalAppliance) -> float:
    """Type in two shares; returns how long kura-policy then took to serve."""
    for share in app.shares[:2]:
        app.vault_call_sync("unseal", {"share": share})
    started = time.monotonic()
    while not serving(app.policy_port):
        assert time.monotonic() - started < 10, "kura-policy did not serve after the unseal"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def sealed() -> Iterator[LocalAppliance]:
    app = new_appliance("policy-away", "shamir:2/3")
    try:
        app.start()
        yield app
    finally:
        app.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)


async def _away_and_back(app: LocalAppliance, sa: Api, folder: Path) -> float:
    ca = await app.vault_call("agents.ca")
    agent = Agent(app, folder)
    async with aiohttp.ClientSession() as session:
        await agent.pin(session, ca["fingerprint"])
        token = await app.vault_call("agents.token_create",
                                     {"profile": PROFILE, "label": "pc-away"}, sa.token)
        assert (await agent.enrol(session, token["token"])).status == 200
        mine, key = agent.with_certificate(), agent.enrolled["bundle_key"]
        ws = await session.ws_connect(f"{agent.base}/stream", ssl=mine)
        first = verified(await ws.receive_json(timeout=5), key)

        await asyncio.to_thread(app.stop_daemon, "vault")
        await ws.send_json({"type": "heartbeat", "report": {"policy_serial": first.serial}})
        answer = await ws.receive_json(timeout=5)
        assert answer["type"] == "error" and "vault" in answer["error"]
        assert not ws.closed

        await asyncio.to_thread(app.start_daemon, "vault")
        await asyncio.to_thread(unseal, app)
        current = await app.vault_call("agents.policy_get", {"profile": PROFILE}, sa.token)
        policy = {**current["policy"], "usb_mass_storage": "allow"}
        started = time.monotonic()
        saved = await app.vault_call(
            "agents.policy_set",
            {"profile": PROFILE, "policy": policy, "tests": current["tests"],
             "version": current["version"]}, sa.token)
        # The watch retries every 0.5 s here (retry_seconds): within a few seconds.
        pushed = verified(await ws.receive_json(timeout=10), key)
        assert pushed.serial == saved["serial"] > first.serial
        await ws.close()
        return time.monotonic() - started


def test_sealed_at_start_serves_after_the_unseal_and_survives_the_vault_going_away(
    sealed: LocalAppliance, tmp_path: Path
) -> None:
    log = sealed.logs / "policy.log"
    deadline = time.monotonic() + 30
    while "the vault is sealed; waiting" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    time.sleep(1.5)  # three more tries at 0.5 s
    assert not serving(sealed.policy_port)  # no certificate while sealed
    assert sealed.procs["policy"].poll() is None  # waiting, not crashed
    first_serve = unseal(sealed)
    password = sealed.bootstrap_da("admin")
    assert password
    admin = activate(Api(sealed.url, sealed.cert).sign_in("admin", password), password)
    sa = provision(admin, "sa-away", "SA")
    push = asyncio.run(_away_and_back(sealed, sa, tmp_path))
    print(f"served {first_serve * 1000:.0f} ms after the unseal; "
          f"push after the vault came back {push * 1000:.0f} ms")
    assert log.read_text().count("the vault is sealed; waiting") == 1  # not once a try
