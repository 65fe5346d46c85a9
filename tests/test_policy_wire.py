"""kura-policy's pure parts: what agents may send (a bad shape is a clear
error, never a crash), how long a certificate check is trusted, and which
names its server certificate carries."""

from __future__ import annotations

import json
import socket

import pytest

from kura.policy import wire
from kura.policy.certificate import server_names
from kura.policy.identity import Agent, CheckCache, HeartbeatPace


def test_enrolment_body_is_checked_field_by_field() -> None:
    good = {"token": "t" * 40, "csr": "-----BEGIN CERTIFICATE REQUEST-----", "hostname": "pc-01"}
    assert wire.enrolment(json.dumps(good).encode()).hostname == "pc-01"
    with pytest.raises(wire.WireError, match="not JSON"):
        wire.enrolment(b"{token")
    with pytest.raises(wire.WireError, match="JSON object"):
        wire.enrolment(b"[1]")
    with pytest.raises(wire.WireError, match="'token'") as caught:
        wire.enrolment(json.dumps({**good, "token": 5}).encode())
    assert caught.value.status == 400 and caught.value.detail == {"field": "token"}
    with pytest.raises(wire.WireError, match="'hostname' is longer"):
        wire.enrolment(json.dumps({**good, "hostname": "h" * 300}).encode())


@pytest.mark.parametrize("text, error", [
    ("not json", "not JSON"),
    ("[]", "JSON object"),
    ('{"type": "hello"}', "unknown message type"),
    ('{"type": "heartbeat"}', "'report' must be"),
    ('{"type": "heartbeat", "report": [1]}', "'report' must be"),
])
def test_bad_stream_messages_are_named(text: str, error: str) -> None:
    with pytest.raises(wire.WireError, match=error):
        wire.stream_message(text)


def test_a_heartbeat_carries_its_report() -> None:
    message = wire.stream_message('{"type": "heartbeat", "report": {"policy_serial": 3}}')
    assert message.report == {"policy_serial": 3}
    assert wire.ack_message(4) == {"type": "ack", "serial": 4}


def test_a_check_is_trusted_for_a_second_and_never_after_revocation() -> None:
    cache = CheckCache(ttl=1.0)
    agent = Agent(serial="1f", agent_id="a1", profile="clerk-pc")
    cache.put(agent, now=100.0)
    assert cache.get("1f", now=100.9) == agent
    assert cache.get("1f", now=101.1) is None  # too old: ask the vault again
    cache.put(agent, now=102.0)
    assert cache.revoke(["1f", "2a"]) == {"1f", "2a"}
    assert cache.get("1f", now=102.1) is None and cache.is_revoked("1f")
    cache.put(agent, now=102.2)  # a late answer does not bring it back
    assert cache.get("1f", now=102.3) is None
    assert cache.revoke(["1f"]) == set()  # reported again by the watch: nothing new


def test_server_names_cover_the_addresses_the_floating_address_and_the_host() -> None:
    names = server_names("0.0.0.0", "192.0.2.10", ["192.0.2.21", "fe80::1", "127.0.0.1"])  # noqa: S104
    assert names == ["192.0.2.21", "192.0.2.10", socket.gethostname()]
    assert server_names("127.0.0.1", None) == ["127.0.0.1", socket.gethostname()]


def test_one_heartbeat_a_second_per_agent_is_passed_on_with_a_small_burst() -> None:
    pace = HeartbeatPace(gap=1.0, burst=3)
    assert [pace.allow("1f", now=10.0) for _ in range(4)] == [True, True, True, False]
    assert pace.allow("2a", now=10.0)  # another agent is not held back
    assert not pace.allow("1f", now=10.5)  # a looping agent: refused, not written
    assert pace.allow("1f", now=11.1)  # a second later, one more
    assert not pace.allow("1f", now=11.2)
    assert [pace.allow("1f", now=100.0) for _ in range(4)] == [True, True, True, False]
