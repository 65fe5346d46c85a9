"""Fixtures that return real things: a whole local appliance (PostgreSQL,
kura-vault, kura-console) in a temporary folder, and signed-in clients for
each role."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kura.devserver import LocalAppliance, free_port
from tests.support import Api, activate, provision

ARTIFACTS = Path(os.environ.get("KURA_TEST_ARTIFACTS", Path(__file__).parent.parent /
                                "test-artifacts"))


def new_appliance(name: str, seal: str = "host") -> LocalAppliance:
    base = Path(tempfile.mkdtemp(prefix=f"kura-{name}-"))
    os.chmod(base, 0o755)  # noqa: S103 (the postgres user must reach its cluster)
    return LocalAppliance(base / "state", port=free_port(), pg_port=free_port(), seal=seal,
                          appliance=f"kura-test-{name}")


@contextmanager
def prepared_appliance(name: str) -> Iterator[LocalAppliance]:
    """A fresh appliance of its own with everything but the daemons
    (``LocalAppliance.prepare``), for tests that run a vault in their own
    process; its cluster is stopped and its folder removed afterwards."""
    app = new_appliance(name)
    try:
        app.prepare()
        yield app
    finally:
        app.cluster.stop()
        shutil.rmtree(app.state.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def appliance() -> Iterator[LocalAppliance]:
    """One appliance shared by the tests that don't disturb it."""
    app = new_appliance("shared")
    app.start()
    yield app
    app.stop()
    shutil.rmtree(app.state.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def da_password(appliance: LocalAppliance) -> str:
    password = appliance.bootstrap_da("admin")
    assert password
    return password


@pytest.fixture(scope="session")
def anon(appliance: LocalAppliance) -> Api:
    return Api(appliance.url, appliance.cert)


@pytest.fixture(scope="session")
def admin(anon: Api, da_password: str) -> Api:
    """The first DA, with its password changed and TOTP enrolled."""
    return activate(anon.sign_in("admin", da_password), da_password)


@pytest.fixture(scope="session")
def users(admin: Api) -> dict[str, Api]:
    """A signed-in client for each role."""
    return {
        "MU": provision(admin, "mu-taro", "MU"),
        "MA": provision(admin, "ma-hanako", "MA"),
        "SA": provision(admin, "sa-jiro", "SA"),
        "DA": admin,
    }
