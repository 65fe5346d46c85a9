"""pg_auto_failover in the HA lab, proven with plain SQL writes (no kura code yet).

A writer in the client namespace INSERTs without pause with synchronous commit, against
the node addresses directly (the floating address is kura-hasync's), and records every
acknowledged id; a probe writes to both nodes at once, four times a second. For each
fault: afterwards exactly one node is a writable primary, every acknowledged id is on it,
the old primary is back as a secondary, and the probe never saw two nodes take a write.
The time from the fault to the first acknowledged write is printed, not asserted.

Needs root and the raw image (out/kura.raw of the main checkout, or $KURA_RAW_IMAGE);
skipped without them, failed without them when KURA_IMAGE_TESTS=1. One formation serves
the whole module (about 15 s to set up).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.ha.lab import ADDRESSES, DATA_NODES, IMAGE, ClientProcess, Lab


def _unavailable() -> str | None:
    if not IMAGE.is_file():
        return f"no raw Kura image at {IMAGE} (./build.sh image, or set KURA_RAW_IMAGE)"
    if os.geteuid() != 0:
        return "the HA lab needs root (namespaces, loop and overlay mounts)"
    return None


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = _unavailable()
    if reason:
        if os.environ.get("KURA_IMAGE_TESTS") == "1":
            pytest.fail(f"{reason}; KURA_IMAGE_TESTS=1 requires the image tests to run",
                        pytrace=False)
        pytest.skip(reason)
    the_lab = Lab()
    try:
        the_lab.start()
        the_lab.create_formation()
        print(f"\nlab set-up: machines {the_lab.timings['machines']:.1f} s, "
              f"formation {the_lab.timings['formation']:.1f} s")
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture(scope="module")
def writer(lab: Lab) -> Iterator[ClientProcess]:
    client = lab.client("writer", [ADDRESSES[n] for n in DATA_NODES])
    try:
        yield client
    finally:
        client.stop()


@pytest.fixture(scope="module")
def probe(lab: Lab) -> Iterator[ClientProcess]:
    client = lab.client("probe", [ADDRESSES[n] for n in DATA_NODES])
    try:
        yield client
    finally:
        client.stop()


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def assert_one_writable_primary(lab: Lab, writer: ClientProcess, probe: ClientProcess,
                                primary: str) -> None:
    roles = {name: lab.in_recovery(name) for name in DATA_NODES}
    assert roles == {primary: False, lab.other(primary): True}
    # the writer goes on being acknowledged, by the primary
    count = len(writer.acks())
    wait_for(lambda: len(writer.acks()) > count + 5, 20, "the writer acknowledged again")
    assert writer.acks()[-1][3] == ADDRESSES[primary]
    # every acknowledged id is on the primary
    acked = writer.acked()
    assert acked
    assert lab.acknowledged_present(primary, acked) == set()
    both = [r for r in probe.probe_rounds() if r and all(r.values())]
    assert both == [], "two nodes accepted a write in the same probe round"


def fault_and_recover(lab: Lab, writer: ClientProcess, probe: ClientProcess, label: str,
                      fault: Callable[[str], None],
                      after_failover: Callable[[str], None] | None = None,
                      expect_failover: bool = True) -> None:
    before = lab.wait_stable()
    wait_for(lambda: writer.first_ack_after(time.time() - 1), 20, "the writer writing")
    t0 = time.time()
    fault(before)
    wait_for(lambda: writer.first_ack_after(t0), 60, "a write acknowledged after the fault")
    first = writer.first_ack_after(t0)
    assert first is not None
    if expect_failover:
        lab.wait_primary(lab.other(before), 60)
    if after_failover is not None:
        after_failover(before)
    primary = lab.wait_stable(120)
    print(f"\n{label}: first acknowledged write {first[0] - t0:.2f} s after the fault "
          f"(on {first[1]}); primary before {before}, after {primary}; "
          f"stable again {time.time() - t0:.1f} s after the fault")
    if expect_failover:
        assert primary == lab.other(before)
    assert_one_writable_primary(lab, writer, probe, primary)


def test_formation_replicates_synchronously_over_tls(lab: Lab) -> None:
    primary = lab.wait_stable()
    standby = lab.other(primary)
    assert lab.synchronous_standby_names(primary).startswith("ANY 1 (")
    node = lab.nodes[primary]
    assert node.psql("SELECT bool_and(ssl) FROM pg_stat_replication "
                     "JOIN pg_stat_ssl USING (pid)") == "t"
    # A commit waits for the standby: with the standby frozen it does not return.
    lab.nodes[standby].freeze()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            node.run(["psql", "-X", "-d", "postgres", "-c",
                      "INSERT INTO lab_probe (node) VALUES ('sync-check')"], timeout=1.5)
    finally:
        lab.nodes[standby].thaw()
    wait_for(lambda: node.psql("SELECT count(*) FROM lab_probe WHERE node = 'sync-check'")
             == "1", 10, "the waiting commit done once the standby is back")
    assert lab.wait_stable() == primary


def test_sigkill_primary_postgres(lab: Lab, writer: ClientProcess,
                                  probe: ClientProcess) -> None:
    # The keeper restarts a killed PostgreSQL in about a second: no failover is needed
    # (and none is asserted either way).
    fault_and_recover(lab, writer, probe, "SIGKILL primary postgres",
                      lambda p: lab.nodes[p].kill_postgres(), expect_failover=False)


def test_cut_primary_off_from_peers(lab: Lab, writer: ClientProcess,
                                    probe: ClientProcess) -> None:
    fault_and_recover(lab, writer, probe, "cut primary off from witness and standby",
                      lab.cut, after_failover=lab.heal)


def test_power_primary_off_and_on(lab: Lab, writer: ClientProcess,
                                  probe: ClientProcess) -> None:
    fault_and_recover(lab, writer, probe, "power primary off (on after the failover)",
                      lambda p: lab.nodes[p].power_off(),
                      after_failover=lambda p: lab.nodes[p].power_on())
