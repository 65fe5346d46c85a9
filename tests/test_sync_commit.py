"""A write the standby never confirmed is never acknowledged.

With synchronous replication PostgreSQL waits at commit until the standby has the
write. If that wait is cancelled, PostgreSQL keeps the commit locally and says so
only in a warning; the pair may lose such a write in a failover. The vault turns
the warning into an error (503, not_replicated), so a clerk is never told "saved"
for it. Here a private cluster waits for a standby that does not exist and the
waiting backends are cancelled, as a stuck standby and an impatient operator would.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Iterator

import pytest

from kura.devserver import LocalAppliance
from tests.conftest import new_appliance
from tests.support import Api, Response, first_da, my_number, provision


@pytest.fixture(scope="module")
def app() -> Iterator[LocalAppliance]:
    app = new_appliance("synccommit")
    app.start()
    yield app
    app.stop()
    shutil.rmtree(app.state.parent, ignore_errors=True)


def test_a_commit_the_standby_did_not_confirm_is_an_error_not_an_acknowledgement(
    app: LocalAppliance,
) -> None:
    mu = provision(first_da(app), "clerk", "MU")
    rng = random.Random(11)
    app.cluster.psql("postgres",
                     "ALTER SYSTEM SET synchronous_standby_names = 'kura_absent_standby';")
    app.cluster.psql("postgres", "SELECT pg_reload_conf();")
    answers: list[Response] = []
    request = threading.Thread(target=lambda: answers.append(
        mu.post("/payees", {"code": "P-SYNC", "name": "同期 待ち", "number": my_number(rng)})))
    try:
        request.start()
        cancelled = 0
        deadline = time.monotonic() + 60
        while request.is_alive() and time.monotonic() < deadline:
            cancelled += int(app.cluster.psql("postgres", (
                "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
                "WHERE wait_event = 'SyncRep';")).strip() or 0)
            time.sleep(0.2)
        request.join(5)
    finally:
        app.cluster.psql("postgres", "ALTER SYSTEM RESET synchronous_standby_names;")
        app.cluster.psql("postgres", "SELECT pg_reload_conf();")
    assert cancelled >= 1, "no commit waited for the standby"
    assert answers, "the clerk got no answer"
    r = answers[0]
    assert r.status == 503 and r.error_code == "not_replicated", (r.status, r.body[:300])
    assert "待機系" in r.json["error"]["message"] or "standby" in r.body.decode()
    # Once the standby confirms again (here: no standby is waited for), writes go on.
    again = Api.sign_in(mu, mu.username, mu.password, mu.totp_secret)
    ok = again.post("/payees", {"code": "P-SYNC-2", "name": "同期 再開", "number": my_number(rng)})
    assert ok.status == 201, (ok.status, ok.body[:300])
