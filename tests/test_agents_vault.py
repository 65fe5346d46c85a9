"""Endpoint agents in the vault (docs/agents.md), against a real PostgreSQL:
enrolment with one-time tokens, revocation that kura-policy learns of at
once, the SA's policy refused when a test case fails, signed bundles that
follow a terminal's address, heartbeats and the compliance sweep.

The vault runs in this process on a clock the test turns forward; kura-policy
is played by calls from this process's uid, listed in ``[vault]
policy_uids``. What is checked is what the SA and an agent would see: the
answers, the audit log, the bundle an agent would verify."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kura import config as config_module
from kura.config import Config
from kura.core import bundle
from kura.core.errors import KuraError
from kura.devserver import LocalAppliance
from kura.vault.service import Vault
from kura.vault.store import Store
from tests.conftest import prepared_appliance

DA_FIRST = "First-Kura-Pass-42!"
DA_PASSWORD = "Kura-Second-Pass-2026!"
SA_PASSWORD = "Kura-agents-SA-Pass-2026!"
SA_SECRET: dict[str, str] = {}
_USED: dict[str, int] = {}
CLERK_ADDRESS = "192.0.2.31"
SERVER_ADDRESS = "192.0.2.40"


class FakeClock:
    """The vault's clock: starts at the real time, moves only when told."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def csr_pem(key: Any = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatever")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Desk:
    vault: Vault
    store: Store
    clock: FakeClock
    sa: str = ""

    async def call(self, op: str, args: dict[str, Any] | None = None,
                   token: str | None = None) -> dict[str, Any]:
        return await self.vault.call(op, args or {}, token, "192.0.2.10", os.geteuid())

    async def as_sa(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.call(op, args, self.sa)

    async def policy(self, op: str, args: dict[str, Any], client: str = CLERK_ADDRESS
                     ) -> dict[str, Any]:
        """kura-policy's call (its uid, no session)."""
        return await self.vault.call(op, args, None, client, os.geteuid())

    async def refused(self, op: str, args: dict[str, Any]) -> KuraError:
        with pytest.raises(KuraError) as caught:
            await self.policy(op, args)
        return caught.value

    async def audit(self, action: str) -> list[dict[str, Any]]:
        async with self.store.transaction() as tx:
            return await tx.all(
                "SELECT actor, outcome, target, detail FROM audit WHERE action = %s"
                " ORDER BY seq", (action,))

    async def enrol(self, profile: str = "clerk-pc", address: str = CLERK_ADDRESS,
                    label: str = "経理の PC") -> dict[str, Any]:
        made = await self.as_sa("agents.token_create", {"profile": profile, "label": label})
        return await self.policy("agents.enrol", {"token": made["token"], "csr_pem": csr_pem(),
                                                  "hostname": "pc-01", "address": address})


def sa_code(clock: FakeClock) -> str:
    secret = SA_SECRET["sa"]
    totp = pyotp.TOTP(secret)
    step = max(totp.timecode(clock()), _USED.get(secret, -1) + 1)
    while step > totp.timecode(clock()) + 1:
        clock.advance(timedelta(seconds=30))
    _USED[secret] = step
    return str(totp.generate_otp(step))


@asynccontextmanager
async def desk(config: Config, sign_in: bool = True) -> AsyncIterator[Desk]:
    clock = FakeClock()
    store = Store(config.database.dsn, 1, 4)
    await store.open()
    try:
        vault = Vault(config, store, clock=clock)
        await vault.start()
        d = Desk(vault, store, clock)
        if sign_in:
            d.sa = str((await d.call("login", {"username": "sa-agents", "password": SA_PASSWORD,
                                               "totp": sa_code(clock)}))["token"])
        yield d
    finally:
        await store.close()


@pytest.fixture(scope="module")
def prepared() -> Iterator[LocalAppliance]:
    with prepared_appliance("agents") as app:
        yield app


@pytest.fixture(scope="module")
def config(prepared: LocalAppliance) -> Config:
    """The appliance's config, with this process as kura-policy."""
    loaded = config_module.load(prepared.config_path)
    config = dataclasses.replace(
        loaded, vault=dataclasses.replace(loaded.vault, policy_uids=frozenset({os.geteuid()})))

    async def first_sa() -> None:
        async with desk(config, sign_in=False) as d:
            await d.vault.call("bootstrap_da", {"username": "admin", "password": DA_FIRST},
                               None, "local", os.geteuid())
            da = str((await d.call("login", {"username": "admin", "password": DA_FIRST}))["token"])
            await d.call("change_password", {"current_password": DA_FIRST,
                                             "new_password": DA_PASSWORD}, da)
            secret = str((await d.call("totp_begin", {}, da))["secret"])
            await d.call("totp_confirm", {"code": pyotp.TOTP(secret).at(d.clock())}, da)
            made = await d.call("user.create", {"username": "sa-agents", "role": "SA"}, da)
            await d.call("user.activate", {"username": "sa-agents", "half_a": made["half_a"],
                                           "half_b": made["half_b"],
                                           "new_password": SA_PASSWORD})
            sa = str((await d.call("login", {"username": "sa-agents",
                                             "password": SA_PASSWORD}))["token"])
            sa_secret = str((await d.call("totp_begin", {}, sa))["secret"])
            code = pyotp.TOTP(sa_secret).at(d.clock())
            await d.call("totp_confirm", {"code": code}, sa)
            SA_SECRET["sa"] = sa_secret
            _USED[sa_secret] = pyotp.TOTP(sa_secret).timecode(d.clock())

    asyncio.run(first_sa())
    return config


def run(config: Config, scenario: Any) -> None:
    async def main() -> None:
        async with desk(config) as d:
            await scenario(d)

    asyncio.run(main())


# --- enrolment ----------------------------------------------------------------------


def test_enrol_gives_a_certificate_under_the_pinned_ca(config: Config) -> None:
    async def scenario(d: Desk) -> None:
        ca = await d.vault.call("agents.ca", {}, None, "203.0.113.9", 12345)  # public
        [made_once] = await d.audit("agent.ca")
        assert made_once["detail"] == {"fingerprint": ca["fingerprint"]}
        made = await d.as_sa("agents.token_create", {"profile": "clerk-pc", "label": "受付"})
        assert made["fingerprint"] == ca["fingerprint"]
        assert f"--token {made['token']}" in made["command"]
        assert f"--fingerprint {ca['fingerprint']}" in made["command"]
        enrolled = await d.policy("agents.enrol", {"token": made["token"], "csr_pem": csr_pem(),
                                                   "hostname": "uketsuke", "address": "192.0.2.77"})
        assert enrolled["profile"] == "clerk-pc" and enrolled["ca"] == ca["ca_pem"]
        assert enrolled["bundle_key"] == ca["bundle_key"]
        cert = x509.load_pem_x509_certificate(enrolled["certificate"].encode())
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == enrolled["agent_id"]
        checked = await d.policy("agents.check", {"serial": format(cert.serial_number, "X")})
        assert checked == {"agent_id": enrolled["agent_id"], "profile": "clerk-pc"}
        entry = (await d.audit("agent.enrol"))[-1]
        assert entry["actor"] == "kura-policy" and entry["target"] == enrolled["agent_id"]
        assert made["token"] not in str(await d.audit("agent.token_create"))
        listed = await d.as_sa("agents.list")
        mine = next(a for a in listed["agents"] if a["agent_id"] == enrolled["agent_id"])
        assert mine["label"] == "受付" and mine["address"] == "192.0.2.77"
        tokens = (await d.as_sa("agents.tokens"))["tokens"]
        assert next(t for t in tokens if t["id"] == made["token_id"])["state"] == "used"

    run(config, scenario)


def test_used_expired_withdrawn_and_unknown_tokens_are_refused_and_audited(
    config: Config,
) -> None:
    async def scenario(d: Desk) -> None:
        used = await d.as_sa("agents.token_create", {"profile": "clerk-pc"})
        await d.policy("agents.enrol", {"token": used["token"], "csr_pem": csr_pem()})
        expired = await d.as_sa("agents.token_create", {"profile": "clerk-pc", "minutes": 5})
        withdrawn = await d.as_sa("agents.token_create", {"profile": "business-server"})
        await d.as_sa("agents.token_withdraw", {"token_id": withdrawn["token_id"]})
        d.clock.advance(timedelta(minutes=6))
        cases = [(used["token"].lower(), "used"), (expired["token"], "expired"),
                 (withdrawn["token"], "withdrawn"), ("AAAA-BBBB-CCCC-DDDD-EEEE", "unknown")]
        before = len(await d.audit("agent.enrol_refused"))
        agents_before = len((await d.as_sa("agents.list"))["agents"])
        for token, reason in cases:
            error = await d.refused("agents.enrol", {"token": token, "csr_pem": csr_pem()})
            assert (error.code, error.status, error.detail) == (
                "enrol_refused", 403, {"reason": reason})
        refusals = (await d.audit("agent.enrol_refused"))[before:]
        assert [r["detail"]["reason"] for r in refusals] == [r for _, r in cases]
        assert {r["outcome"] for r in refusals} == {"denied"}
        assert len((await d.as_sa("agents.list"))["agents"]) == agents_before
        # An RSA key is refused, and the token stays usable.
        fresh = await d.as_sa("agents.token_create", {"profile": "clerk-pc"})
        error = await d.refused("agents.enrol", {
            "token": fresh["token"],
            "csr_pem": csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))})
        assert error.code == "bad_csr"
        await d.policy("agents.enrol", {"token": fresh["token"], "csr_pem": csr_pem()})

    run(config, scenario)


def test_service_operations_answer_only_kura_policy(config: Config) -> None:
    async def scenario(d: Desk) -> None:
        with pytest.raises(KuraError) as caught:
            await d.vault.call("agents.check", {"serial": "1"}, None, "local", os.geteuid() + 1)
        assert caught.value.code == "permission_denied"
        with pytest.raises(KuraError) as caught:
            await d.as_sa("agents.bundle", {"profile": "clerk-pc"})  # a session is no key
        assert caught.value.code == "permission_denied"

    run(config, scenario)


# --- revocation and the watch -----------------------------------------------------------


def test_revoke_refuses_the_agent_at_once_and_wakes_the_watch(config: Config) -> None:
    async def scenario(d: Desk) -> None:
        d.vault.watch_seconds = 10.0
        enrolled = await d.enrol()
        serial = format(x509.load_pem_x509_certificate(
            enrolled["certificate"].encode()).serial_number, "x")
        state = await d.policy("agents.watch", {"after": 0})  # knows nothing: at once
        watcher = asyncio.create_task(d.policy("agents.watch", {"after": state["generation"]}))
        await asyncio.sleep(0.2)
        assert not watcher.done()
        started = time.monotonic()
        await d.as_sa("agents.revoke", {"agent_id": enrolled["agent_id"], "reason": "紛失"})
        woke = await asyncio.wait_for(watcher, 5)
        assert time.monotonic() - started < 1.0
        assert serial in woke["revoked"] and woke["generation"] > state["generation"]
        for op, args in (("agents.check", {"serial": serial}),
                         ("agents.heartbeat", {"serial": serial, "address": CLERK_ADDRESS})):
            error = await d.refused(op, args)
            assert (error.code, error.status) == ("agent_revoked", 403)
        assert (await d.refused("agents.check", {"serial": "abc123"})).code == "agent_unknown"
        assert await d.vault.terminal_standing(serial) == "revoked"
        assert (await d.audit("agent.revoke"))[-1]["target"] == enrolled["agent_id"]

    run(config, scenario)


# --- the policy and its bundles ---------------------------------------------------------


def test_policy_with_a_failing_test_case_is_refused_and_nothing_changes(config: Config) -> None:
    async def scenario(d: Desk) -> None:
        clerk = await d.enrol()
        before = await d.as_sa("agents.policy_get", {"profile": "clerk-pc"})
        policy = {"allow": [{"to": "198.51.100.0/24", "proto": "tcp", "ports": [443]}]}
        tests = [{"from": f"agent:{clerk['agent_id']}", "to": "203.0.113.5", "port": 443,
                  "proto": "tcp", "expect": "reach"}]
        with pytest.raises(KuraError) as caught:
            await d.as_sa("agents.policy_set", {"profile": "clerk-pc", "policy": policy,
                                                "tests": tests, "version": before["version"]})
        assert (caught.value.code, caught.value.status) == ("policy_tests_failed", 422)
        [failed] = caught.value.detail["failed"]
        assert failed["to"] == "203.0.113.5" and failed["got"] == "blocked"
        assert await d.as_sa("agents.policy_get", {"profile": "clerk-pc"}) == before
        refused = (await d.audit("agent.policy_refused"))[-1]
        assert refused["outcome"] == "denied" and refused["target"] == "clerk-pc"

    run(config, scenario)


def test_policy_set_signs_a_new_bundle_that_agents_verify(config: Config) -> None:
    async def scenario(d: Desk) -> None:
        clerk = await d.enrol()
        before = await d.as_sa("agents.policy_get", {"profile": "clerk-pc"})
        old = await d.policy("agents.bundle", {"profile": "clerk-pc"})
        policy = {"allow": [{"to": "198.51.100.0/24", "proto": "tcp", "ports": [443]}],
                  "dns": ["192.0.2.53"], "usb_mass_storage": "block"}
        tests = [{"from": f"agent:{clerk['agent_id']}", "to": "198.51.100.7", "port": 443,
                  "proto": "tcp", "expect": "reach"},
                 {"from": f"agent:{clerk['agent_id']}", "to": "198.51.100.7", "port": 22,
                  "proto": "tcp", "expect": "blocked"}]
        saved = await d.as_sa("agents.policy_set", {"profile": "clerk-pc", "policy": policy,
                                                    "tests": tests,
                                                    "version": before["version"]})
        assert saved["version"] == before["version"] + 1 and saved["serial"] > old["serial"]
        got = await d.policy("agents.bundle", {"profile": "clerk-pc"})
        ca = await d.policy("agents.ca", {})
        key = bundle.public_key_from_text(ca["bundle_key"])
        verified = bundle.verify(got["envelope"], key)
        assert verified.serial == saved["serial"] == got["serial"]
        assert verified.appliance == ca["fingerprint"]
        assert verified.body["allow"] == policy["allow"] and verified.body["dns"] == ["192.0.2.53"]
        current = bundle.verify(old["envelope"], key)
        assert bundle.decide(current, verified, "clerk-pc", ca["fingerprint"]) == bundle.ACCEPT
        # Saving again from the old version is a conflict, not a silent overwrite.
        with pytest.raises(KuraError) as caught:
            await d.as_sa("agents.policy_set", {"profile": "clerk-pc", "policy": policy,
                                                "version": before["version"]})
        assert caught.value.code == "conflict"
        assert (await d.audit("agent.policy_set"))[-1]["detail"]["serial"] == saved["serial"]
        # One SA opens USB sticks alone; the audit entry says so, and that
        # closing them again opens nothing.
        for usb, opened in (("allow", ["usb_mass_storage"]), ("block", [])):
            at = await d.as_sa("agents.policy_get", {"profile": "clerk-pc"})
            await d.as_sa("agents.policy_set", {"profile": "clerk-pc", "version": at["version"],
                                                "policy": {**policy, "usb_mass_storage": usb}})
            entry = (await d.audit("agent.policy_set"))[-1]
            assert (entry["actor"], entry["detail"]["widened"]) == ("sa-agents", opened)

    run(config, scenario)


def test_heartbeat_records_the_address_and_the_server_bundle_follows_it(config: Config) -> None:
    async def scenario(d: Desk) -> None:
        clerk = await d.enrol(address="192.0.2.50")
        serial = format(x509.load_pem_x509_certificate(
            clerk["certificate"].encode()).serial_number, "x")
        await d.enrol(profile="business-server", address=SERVER_ADDRESS, label="給与サーバ")
        # Clerks' PCs may reach the server's database; the server lets only this one in.
        clerk_pc = await d.as_sa("agents.policy_get", {"profile": "clerk-pc"})
        await d.as_sa("agents.policy_set", {
            "profile": "clerk-pc", "version": clerk_pc["version"], "tests": [],
            "policy": {"allow": [{"to": f"{SERVER_ADDRESS}/32", "proto": "tcp",
                                  "ports": [5432]}]}})
        current = await d.as_sa("agents.policy_get", {"profile": "business-server"})
        await d.as_sa("agents.policy_set", {
            "profile": "business-server", "version": current["version"],
            "policy": {"protect": [{"proto": "tcp", "ports": [5432],
                                    "from": [clerk["agent_id"]]}]},
            "tests": [{"from": f"agent:{clerk['agent_id']}", "to": SERVER_ADDRESS,
                       "port": 5432, "proto": "tcp", "expect": "reach"},
                      {"from": "outside", "to": SERVER_ADDRESS, "port": 5432, "proto": "tcp",
                       "expect": "blocked"}]})
        first = await d.policy("agents.bundle", {"profile": "business-server"})
        key = bundle.public_key_from_text((await d.policy("agents.ca", {}))["bundle_key"])
        body = bundle.verify(first["envelope"], key).body
        assert body["protect"] == [{"proto": "tcp", "ports": [5432], "from": ["192.0.2.50"]}]

        beat = await d.policy("agents.heartbeat", {
            "serial": serial, "address": "192.0.2.51",
            "report": {"policy_serial": 1, "security_updates": 0, "disk_encrypted": True,
                       "usb_events": [{"action": "add", "vendor": "0781", "product": "5583",
                                       "mass_storage": True, "allowed": False}],
                       "refused": [{"reason": "older", "serial": 1}]}})
        moved = await d.policy("agents.bundle", {"profile": "business-server"})
        assert moved["serial"] > first["serial"]
        assert bundle.verify(moved["envelope"], key).body["protect"][0]["from"] == [
            "192.0.2.51"]
        assert beat["newest_serial"] == (await d.policy(
            "agents.bundle", {"profile": "clerk-pc"}))["serial"]
        assert (await d.audit("agent.address"))[-1]["detail"] == {"from": "192.0.2.50",
                                                                  "to": "192.0.2.51"}
        assert (await d.audit("agent.usb"))[-1]["detail"]["vendor"] == "0781"
        assert (await d.audit("agent.bundle_refused"))[-1]["detail"]["reason"] == "older"
        # The same address again: no new bundle, no audit entry.
        entries = len(await d.audit("agent.address"))
        await d.policy("agents.heartbeat", {"serial": serial, "address": "192.0.2.51"})
        assert (await d.policy("agents.bundle", {"profile": "business-server"}))["serial"] == \
            moved["serial"]
        assert len(await d.audit("agent.address")) == entries

    run(config, scenario)


def test_a_silent_agent_is_audited_and_alerted_until_it_is_back(config: Config) -> None:
    async def scenario(d: Desk) -> None:
        clerk = await d.enrol()
        serial = format(x509.load_pem_x509_certificate(
            clerk["certificate"].encode()).serial_number, "x")
        newest = (await d.policy("agents.bundle", {"profile": "clerk-pc"}))["serial"]
        await d.policy("agents.heartbeat", {"serial": serial, "address": CLERK_ADDRESS,
                                            "report": {"policy_serial": newest}})
        await d.vault.agent_sweep()
        assert await d.vault.terminal_standing(serial) == "compliant"
        d.clock.advance(timedelta(minutes=5))
        await d.vault.agent_sweep()
        assert await d.vault.terminal_standing(serial) == "noncompliant"
        silent = [e for e in await d.audit("agent.silent") if e["target"] == clerk["agent_id"]]
        assert len(silent) == 1
        alerts = (await d.as_sa("alerts.list"))["alerts"]
        assert any(a["target"] == clerk["agent_id"] and a["cleared"] is None for a in alerts)
        listed = next(a for a in (await d.as_sa("agents.list"))["agents"]
                      if a["agent_id"] == clerk["agent_id"])
        assert not listed["compliant"] and listed["problems"][0]["code"] == "silent"
        assert listed["problems"][0]["ja"]
        await d.vault.agent_sweep()  # still silent: no second entry
        assert len([e for e in await d.audit("agent.silent")
                    if e["target"] == clerk["agent_id"]]) == 1
        newest = (await d.policy("agents.bundle", {"profile": "clerk-pc"}))["serial"]
        await d.policy("agents.heartbeat", {"serial": serial, "address": CLERK_ADDRESS,
                                            "report": {"policy_serial": newest}})
        await d.vault.agent_sweep()
        assert await d.vault.terminal_standing(serial) == "compliant"
        back = [e for e in await d.audit("agent.compliant") if e["target"] == clerk["agent_id"]]
        assert len(back) == 1
        alerts = (await d.as_sa("alerts.list"))["alerts"]
        assert all(a["cleared"] for a in alerts if a["target"] == clerk["agent_id"])

    run(config, scenario)


def test_posture_below_the_policy_makes_the_terminal_noncompliant(config: Config) -> None:
    async def scenario(d: Desk) -> None:
        clerk = await d.enrol()
        serial = format(x509.load_pem_x509_certificate(
            clerk["certificate"].encode()).serial_number, "x")
        current = await d.as_sa("agents.policy_get", {"profile": "clerk-pc"})
        saved = await d.as_sa("agents.policy_set", {
            "profile": "clerk-pc", "version": current["version"],
            "policy": {**current["policy"], "require_disk_encryption": True}})

        async def beat(encrypted: bool | None) -> str:
            report = {} if encrypted is None else {"policy_serial": saved["serial"],
                                                   "disk_encrypted": encrypted}
            await d.policy("agents.heartbeat", {"serial": serial, "address": CLERK_ADDRESS,
                                                "report": report})
            await d.vault.agent_sweep()
            return await d.vault.terminal_standing(serial)

        assert await beat(False) == "noncompliant"
        entry = [e for e in await d.audit("agent.noncompliant")
                 if e["target"] == clerk["agent_id"]]
        assert entry[-1]["detail"]["problems"] == ["disk_not_encrypted"]
        assert await beat(None) == "noncompliant"  # a bare heartbeat keeps the posture
        assert await beat(True) == "compliant"
        alerts = [a for a in (await d.as_sa("alerts.list"))["alerts"]
                  if a["target"] == clerk["agent_id"]]
        assert [a["kind"] for a in alerts] == ["agent.noncompliant"] and alerts[0]["cleared"]
        # Only a clerk's PC is a terminal for the console.
        server = await d.enrol(profile="business-server", address="192.0.2.41")
        server_serial = format(x509.load_pem_x509_certificate(
            server["certificate"].encode()).serial_number, "x")
        assert await d.vault.terminal_standing(server_serial) == "unknown"
        assert await d.vault.terminal_standing("not hex") == "unknown"

    run(config, scenario)


def test_kura_policy_gets_a_server_certificate_and_bundles_name_the_appliance(
    config: Config,
) -> None:
    async def scenario(d: Desk) -> None:
        d.vault.watch_seconds = 10.0
        key = ec.generate_private_key(ec.SECP256R1())
        state = await d.policy("agents.watch", {})
        watcher = asyncio.create_task(d.policy("agents.watch", {"after": state["generation"]}))
        made = await d.policy("agents.server_cert", {
            "csr_pem": csr_pem(key), "names": ["192.0.2.10", "127.0.0.1", "kura-a"]}, "local")
        cert = x509.load_pem_x509_certificate(made["certificate"].encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["kura-a"]
        assert cert.issuer == x509.load_pem_x509_certificate(made["chain"].encode()).subject
        # Whoever runs as kura-policy may ask for any names: each request is audited.
        entry = (await d.audit("agent.server_cert"))[-1]
        assert (entry["actor"], entry["target"]) == ("kura-policy", format(cert.serial_number, "x"))
        assert entry["detail"]["names"] == ["192.0.2.10", "127.0.0.1", "kura-a"]
        woke = await asyncio.wait_for(watcher, 5)  # new bundles: the appliance's address
        ca = await d.policy("agents.ca", {})
        key_text = bundle.public_key_from_text(ca["bundle_key"])
        for profile, serial in woke["serials"].items():
            got = await d.policy("agents.bundle", {"profile": profile})
            assert got["serial"] == serial
            body = bundle.verify(got["envelope"], key_text).body
            assert body["appliance_addresses"] == ["192.0.2.10"]
        # An enrolment seen through an IPv6 socket records the IPv4 address.
        enrolled = await d.enrol(address="::ffff:192.0.2.99")
        listed = next(a for a in (await d.as_sa("agents.list"))["agents"]
                      if a["agent_id"] == enrolled["agent_id"])
        assert listed["address"] == "192.0.2.99"

    run(config, scenario)
