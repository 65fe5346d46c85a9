"""Sessions end when they should and sign-ins back off after failures: idle
and absolute timeouts, lockout that doubles, each recorded in the audit log.

The vault runs in this process with a clock the test turns forward, against
a real PostgreSQL (a prepared appliance; no daemons). Callers see what a
user of the console would: a NotAuthenticated that says why, an
AccountLocked that says until when."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest

from kura import config as config_module
from kura.config import Config
from kura.core.errors import AccountLocked, ActionRequired, LoginFailed, NotAuthenticated
from kura.devserver import LocalAppliance
from kura.vault.service import Vault
from kura.vault.store import Store
from tests.conftest import prepared_appliance

IDLE = timedelta(minutes=15)  # the default policy
ABSOLUTE = timedelta(hours=10)
LOCK_AFTER = 5
FIRST_LOCK = timedelta(seconds=30)

DA_FIRST_PASSWORD = "First-Kura-Pass-42!"
DA_PASSWORD = "Kura-Second-Pass-2026!"
MU_PASSWORD = "Kura-user-Pass-2026!"
MU_NAMES = ("mu-idle", "mu-restart", "mu-absolute", "mu-lock")
SA_PASSWORD = "Kura-approver-Pass-2026!"
MU_SECRETS: dict[str, str] = {}  # the MUs' TOTP secrets, enrolled by the admin fixture
_USED_STEPS: dict[str, int] = {}  # a TOTP step works once


class FakeClock:
    """The vault's clock: starts at the real time, moves only when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = [start or datetime.now(UTC)]

    def __call__(self) -> datetime:
        return self.now[0]

    def advance(self, delta: timedelta) -> None:
        self.now[0] += delta


@dataclass
class Desk:
    """A vault on a fake clock, and what a caller needs to talk to it."""

    vault: Vault
    store: Store
    clock: FakeClock

    async def call(self, op: str, args: dict[str, Any] | None = None,
                   token: str | None = None) -> dict[str, Any]:
        return await self.vault.call(op, args or {}, token, "192.0.2.10", os.geteuid())

    async def login(self, username: str, password: str, totp: str = "") -> str:
        args = {"username": username, "password": password, **({"totp": totp} if totp else {})}
        return str((await self.call("login", args))["token"])

    async def mu_login(self, username: str) -> str:
        """An MU signs in with its password and a code from its authenticator
        (every role needs a second factor by default): a step not used yet."""
        secret = MU_SECRETS[username]
        totp = pyotp.TOTP(secret)
        step = max(totp.timecode(self.clock()), _USED_STEPS.get(secret, -1) + 1)
        while step > totp.timecode(self.clock()) + 1:
            self.clock.advance(timedelta(seconds=30))
        _USED_STEPS[secret] = step
        return await self.login(username, MU_PASSWORD, totp.generate_otp(step))

    async def audit(self, action: str, actor: str) -> list[dict[str, Any]]:
        async with self.store.transaction() as tx:
            return await tx.all(
                "SELECT outcome, detail FROM audit WHERE action = %s AND actor = %s ORDER BY seq",
                (action, actor),
            )

    async def session_rows(self, username: str) -> int:
        async with self.store.transaction() as tx:
            row = await tx.one(
                "SELECT count(*) AS n FROM sessions s JOIN users u ON u.id = s.user_id"
                " WHERE u.username = %s",
                (username,),
            )
        assert row is not None
        return int(row["n"])


@asynccontextmanager
async def desk(config: Config, clock: FakeClock) -> AsyncIterator[Desk]:
    store = Store(config.database.dsn, 1, 4)
    await store.open()
    try:
        vault = Vault(config, store, clock=clock)
        await vault.start()
        assert not vault.sealed
        yield Desk(vault, store, clock)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def prepared() -> Iterator[LocalAppliance]:
    with prepared_appliance("sessions") as app:
        yield app


@pytest.fixture(scope="module")
def config(prepared: LocalAppliance) -> Config:
    return config_module.load(prepared.config_path)


@dataclass
class Admin:
    password: str
    totp_secret: str
    last_code_at: datetime


@pytest.fixture(scope="module")
def admin(config: Config) -> Admin:
    """The first DA, brought up as on a new appliance: bootstrap, sign in,
    change the one-time password, enrol TOTP (the policy requires it for a
    DA); then the DA makes the MUs the tests use, each with its password set."""

    async def scenario() -> Admin:
        clock = FakeClock()
        async with desk(config, clock) as d:
            made = await d.vault.call(
                "bootstrap_da", {"username": "admin", "password": DA_FIRST_PASSWORD}, None,
                "local", os.geteuid(),
            )
            assert made["must_change_password"] is True
            token = await d.login("admin", DA_FIRST_PASSWORD)
            with pytest.raises(ActionRequired):
                await d.call("user.list", {}, token)
            after = await d.call("change_password", {"current_password": DA_FIRST_PASSWORD,
                                                     "new_password": DA_PASSWORD}, token)
            assert after["must_change_password"] is False
            assert after["mfa_setup_required"] is True
            with pytest.raises(ActionRequired):
                await d.call("user.list", {}, token)
            secret = str((await d.call("totp_begin", {}, token))["secret"])
            clock.advance(timedelta(seconds=5))
            code = pyotp.TOTP(secret).at(clock())
            done = await d.call("totp_confirm", {"code": code}, token)
            assert done["mfa_setup_required"] is False

            # The first SA, by the DA alone; then each MU by proposal and the
            # SA's approval, activated by its holder with both halves.
            first_sa = await d.call("user.create", {"username": "sa-first", "role": "SA"}, token)
            await d.call("user.activate", {"username": "sa-first", "half_a": first_sa["half_a"],
                                           "half_b": first_sa["half_b"],
                                           "new_password": SA_PASSWORD})
            sa = await d.login("sa-first", SA_PASSWORD)
            sa_secret = str((await d.call("totp_begin", {}, sa))["secret"])
            await d.call("totp_confirm", {"code": pyotp.TOTP(sa_secret).at(clock())}, sa)
            for name in MU_NAMES:
                proposed = await d.call("user.create", {"username": name, "role": "MU"}, token)
                approved = await d.call("user.approve", {"id": proposed["proposal"]}, sa)
                await d.call("user.activate", {"username": name, "half_a": proposed["half_a"],
                                               "half_b": approved["half_b"],
                                               "new_password": MU_PASSWORD})
                mu = await d.login(name, MU_PASSWORD)
                mu_secret = str((await d.call("totp_begin", {}, mu))["secret"])
                confirmed = await d.call("totp_confirm",
                                         {"code": pyotp.TOTP(mu_secret).at(clock())}, mu)
                assert confirmed["mfa_setup_required"] is False
                MU_SECRETS[name] = mu_secret
                _USED_STEPS[mu_secret] = pyotp.TOTP(mu_secret).timecode(clock())
                await d.call("logout", {}, mu)
            await d.call("logout", {}, sa)
            await d.call("logout", {}, token)
            return Admin(DA_PASSWORD, secret, clock())

    return asyncio.run(scenario())


def test_idle_session_ends_and_says_why(config: Config, admin: Admin) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with desk(config, clock) as d:
            token = await d.mu_login("mu-idle")
            # Activity keeps a session alive well past the idle limit in total.
            for _ in range(4):
                clock.advance(IDLE - timedelta(seconds=1))
                assert (await d.call("whoami", {}, token))["username"] == "mu-idle"
            assert await d.session_rows("mu-idle") == 1

            clock.advance(IDLE)
            with pytest.raises(NotAuthenticated) as ended:
                await d.call("subject.list", {}, token)
            assert ended.value.detail == {"why": "idle"}
            assert "expired" in ended.value.message_en
            # Gone for good: in memory and in the database.
            with pytest.raises(NotAuthenticated) as again:
                await d.call("whoami", {}, token)
            assert "why" not in again.value.detail
            assert await d.session_rows("mu-idle") == 0

            entries = await d.audit("session.expired", "mu-idle")
            assert [(e["outcome"], e["detail"]) for e in entries] == [("ok", {"why": "idle"})]
            # Signing in again works.
            fresh = await d.mu_login("mu-idle")
            assert (await d.call("whoami", {}, fresh))["role"] == "MU"

    asyncio.run(scenario())


def test_idle_time_is_kept_across_a_vault_restart(config: Config, admin: Admin) -> None:
    """The last activity is written to the database, so a restarted vault
    neither forgets a live session nor revives an idle one."""

    async def scenario() -> None:
        clock = FakeClock()
        async with desk(config, clock) as d:
            live = await d.mu_login("mu-restart")
            idle = await d.mu_login("mu-restart")
            clock.advance(IDLE - timedelta(minutes=2))
            await d.call("whoami", {}, live)
        clock.advance(IDLE - timedelta(minutes=2))
        async with desk(config, clock) as d:  # a new process: nothing in memory
            assert (await d.call("whoami", {}, live))["username"] == "mu-restart"
            with pytest.raises(NotAuthenticated) as ended:
                await d.call("whoami", {}, idle)
            assert ended.value.detail == {"why": "idle"}
            assert await d.session_rows("mu-restart") == 1

    asyncio.run(scenario())


def test_absolute_limit_ends_even_a_busy_session(config: Config, admin: Admin) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        start = clock()
        async with desk(config, clock) as d:
            token = await d.mu_login("mu-absolute")
            step = IDLE - timedelta(minutes=1)
            while clock() + step < start + ABSOLUTE - timedelta(minutes=1):
                clock.advance(step)
                await d.call("subject.list", {}, token)
            assert clock() - start > ABSOLUTE - IDLE  # busy for nearly ten hours

            clock.advance(step)  # past ten hours since sign-in, never idle
            with pytest.raises(NotAuthenticated) as ended:
                await d.call("subject.list", {}, token)
            assert ended.value.detail == {"why": "absolute"}
            entries = await d.audit("session.expired", "mu-absolute")
            assert [e["detail"] for e in entries] == [{"why": "absolute"}]
            assert await d.session_rows("mu-absolute") == 0
            fresh = await d.mu_login("mu-absolute")
            assert (await d.call("whoami", {}, fresh))["username"] == "mu-absolute"

    asyncio.run(scenario())


def test_da_with_a_second_factor_idles_out_too(config: Config, admin: Admin) -> None:
    async def scenario() -> None:
        # A minute after the code used at enrolment: that one cannot be replayed.
        clock = FakeClock(admin.last_code_at + timedelta(minutes=1))
        async with desk(config, clock) as d:
            with pytest.raises(LoginFailed) as no_code:
                await d.login("admin", admin.password)
            assert no_code.value.detail == {"totp_required": True}
            code = pyotp.TOTP(admin.totp_secret).at(clock())
            token = await d.login("admin", admin.password, code)
            assert (await d.call("user.list", {}, token))["users"]
            clock.advance(IDLE + timedelta(seconds=1))
            with pytest.raises(NotAuthenticated) as ended:
                await d.call("user.list", {}, token)
            assert ended.value.detail == {"why": "idle"}
            assert [e["detail"] for e in await d.audit("session.expired", "admin")] == [
                {"why": "idle"}
            ]

    asyncio.run(scenario())


def test_lockout_after_five_failures_then_back_off(config: Config, admin: Admin) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with desk(config, clock) as d:

            async def locked_until(password: str) -> datetime:
                with pytest.raises(AccountLocked) as locked:
                    await d.login("mu-lock", password)
                return datetime.fromisoformat(locked.value.detail["until"])

            for _ in range(LOCK_AFTER - 1):
                with pytest.raises(LoginFailed):
                    await d.login("mu-lock", "Wrong-Password-123!")
                clock.advance(timedelta(seconds=1))
            # The fifth failure locks the account for the first period.
            assert await locked_until("Wrong-Password-123!") == clock() + FIRST_LOCK
            first_lock = clock() + FIRST_LOCK

            # While locked even the right password is refused.
            clock.advance(FIRST_LOCK - timedelta(seconds=1))
            assert await locked_until(MU_PASSWORD) == first_lock

            # After the lock, one more failure locks again for twice as long.
            clock.advance(timedelta(seconds=2))
            assert await locked_until("Wrong-Password-123!") == clock() + 2 * FIRST_LOCK
            second_lock = clock() + 2 * FIRST_LOCK
            clock.advance(2 * FIRST_LOCK - timedelta(seconds=1))
            assert await locked_until(MU_PASSWORD) == second_lock

            # Past the lock, the right password gets in and the count starts again.
            clock.advance(timedelta(seconds=2))
            token = await d.mu_login("mu-lock")
            assert (await d.call("whoami", {}, token))["username"] == "mu-lock"
            with pytest.raises(LoginFailed):
                await d.login("mu-lock", "Wrong-Password-123!")

            entries = await d.audit("login", "mu-lock")
            denied = [e["detail"] for e in entries if e["outcome"] == "denied"]
            reasons = [(e["reason"], e.get("locked")) for e in denied]
            assert reasons == (
                [("bad_credentials", False)] * (LOCK_AFTER - 1)
                + [("bad_credentials", True), ("locked", None), ("bad_credentials", True),
                   ("locked", None), ("bad_credentials", False)]
            )
            assert [e["failures"] for e in denied if "failures" in e] == [1, 2, 3, 4, 5, 6, 1]
            assert [e["outcome"] for e in entries].count("ok") == 2  # setup and now

    asyncio.run(scenario())
