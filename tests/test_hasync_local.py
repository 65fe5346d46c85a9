"""What kura-hasync reads of its own PostgreSQL, against a real primary with
a real synchronous streaming replica: the primary's standby with its state,
``sync_state`` and replay lag, the standby's own replay position, and both
reaching the health page's report through the daemon's status file."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kura.config import parse_ha
from kura.core import ha
from kura.devserver import free_port
from kura.hasync.local import LocalCheck, LocalFacts
from kura.hasync.main import write_status
from kura.pgcluster import Cluster
from kura.vault.hastatus import hasync_report


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[Cluster, Cluster]]:
    base = Path(tempfile.mkdtemp(prefix="kura-hslocal-"))
    os.chmod(base, 0o755)  # noqa: S103 (the postgres user must reach its clusters)
    primary, standby = Cluster(base / "a", free_port()), Cluster(base / "b", free_port())
    try:
        primary.create()
        standby.replicate_from(primary)
        primary.psql("postgres", "ALTER SYSTEM SET synchronous_standby_names = '*';"
                                 "SELECT pg_reload_conf();", dbname="postgres")
        yield primary, standby
    finally:
        for cluster in (standby, primary):
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def check(cluster: Cluster) -> LocalFacts:
    async def once() -> LocalFacts:
        local = LocalCheck(cluster.dsn("postgres", dbname="postgres"))
        try:
            return await local.check()
        finally:
            await local.close()

    return asyncio.run(once())


def test_the_primary_reports_its_synchronous_standby_and_its_lag(
    clusters: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    primary, _ = clusters
    deadline = time.monotonic() + 30
    facts = check(primary)
    while not facts.sync and time.monotonic() < deadline:
        time.sleep(0.2)
        facts = check(primary)
    assert (facts.pg, facts.streaming, facts.sync) == (ha.LocalPg.WRITABLE, True, True)
    (standby,) = facts.replication["standbys"]
    assert (standby["state"], standby["sync_state"]) == ("streaming", "sync")
    assert isinstance(standby["lag_bytes"], int) and standby["lag_bytes"] >= 0

    # Through the status file to what the health page shows.
    settings = parse_ha({"node": "node_a", "monitor": "dbname=monitor", "local_dsn": "x",
                         "vip": "192.0.2.10/24", "interface": "eth0",
                         "status_file": str(tmp_path / "status.json")})
    status = ha.Status(role=ha.Role.PRIMARY, vip_held=True, degraded=False,
                       witness_reachable=True, standby_streaming=facts.streaming,
                       sync_standby=facts.sync, goal="primary", reported="primary",
                       rule="writable-primary")
    assert settings.status_file is not None
    write_status(settings.status_file, settings, status, replication=facts.replication)
    report = hasync_report(settings.status_file)
    assert report["state"] == "live" and report["sync_standby"] is True
    assert report["replication"]["standbys"][0]["sync_state"] == "sync"


def test_the_standby_reports_how_far_it_has_replayed(clusters: tuple[Cluster, Cluster]) -> None:
    _, standby = clusters
    facts = check(standby)
    assert (facts.pg, facts.streaming, facts.sync) == (ha.LocalPg.RECOVERY, False, False)
    assert "/" in facts.replication["replay_lsn"]  # an LSN such as 0/3000148
    assert facts.replication["lag_bytes"] >= 0
