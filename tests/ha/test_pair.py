"""The pair as clerks meet it: Kura's vault, console and kura-hasync on both data nodes of
the lab, a clerk's client that reaches them only through the floating address, and the
primary failing under its writes. Afterwards the floating address answers from the new
primary, every payee the clerk was told was registered is there, exactly one node
takes writes, and the old primary comes back as the standby."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.ha.appliances import KuraPair, install
from tests.ha.lab import DATA_NODES, Lab, lab_with_formation
from tests.ha.test_pg_failover import _unavailable


@pytest.fixture(scope="module")
def pair() -> Iterator[KuraPair]:
    reason = _unavailable()
    if reason:
        if os.environ.get("KURA_IMAGE_TESTS") == "1":
            pytest.fail(f"{reason}; KURA_IMAGE_TESTS=1 requires the image tests to run",
                        pytrace=False)
        pytest.skip(reason)
    with lab_with_formation() as lab:
        began = time.monotonic()
        installed = install(lab)
        print(f"\nKura on the pair in {time.monotonic() - began:.1f} s")
        yield installed


def wait(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_the_floating_address_follows_the_primary_and_no_registered_payee_is_lost(
    pair: KuraPair,
) -> None:
    lab: Lab = pair.lab
    old = lab.wait_stable()
    assert pair.vip_holder() == [old]
    writer = pair.writer()
    try:
        wait(lambda: len(writer.acked()) >= 5, 60, "the clerk's first writes")
        t0 = time.time()
        lab.nodes[old].power_off()
        new = lab.other(old)
        wait(lambda: pair.vip_holder() == [new], 30, "the floating address on the new primary")
        wait(lambda: writer.first_ack_after(t0) is not None, 30, "a write after the fault")
        first = writer.first_ack_after(t0)
        assert first is not None
        print(f"\npower-off: first acknowledged write through the floating address "
              f"{first[0] - t0:.1f} s after the fault (answered by {first[1]})")
        assert first[1] == new
        lab.nodes[old].power_on()
        wait(lab.stable, 120, "the old primary back as standby")
        assert lab.primary() == new
        time.sleep(1)
    finally:
        writer.stop()
    acked = {f"W-{i:07d}" for i in writer.acked()}
    assert acked and not acked - pair.codes_on(new)
    assert sorted(pair.vip_holder()) == [new]
    assert [n for n in DATA_NODES if lab.in_recovery(n) is False] == [new]
