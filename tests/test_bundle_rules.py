"""The bundle-acceptance rules (kura.core.bundle): what an agent enforces and
what it refuses, with no I/O."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kura.core import bundle

KEY = Ed25519PrivateKey.generate()
APPLIANCE = "ab" * 32


def body(serial: int, profile: str = "clerk-pc", **extra: Any) -> dict[str, Any]:
    return {"appliance": APPLIANCE, "profile": profile, "serial": serial, **extra}


def signed(serial: int, **extra: Any) -> bundle.Bundle:
    return bundle.verify(bundle.sign(body(serial, **extra), KEY), KEY.public_key())


def test_a_signed_bundle_verifies_and_keeps_its_bytes() -> None:
    got = signed(3, allow=[{"to": "198.51.100.0/24", "proto": "tcp", "ports": [443]}])
    assert got.serial == 3 and got.profile == "clerk-pc"
    assert got.body["allow"][0]["ports"] == [443]
    assert bundle.verify(bundle.sign(got.body, KEY), KEY.public_key()).raw == got.raw


def tampered(envelope: dict[str, str]) -> dict[str, str]:
    raw = json.loads(base64.b64decode(envelope["body"]))
    raw["usb_mass_storage"] = "allow"
    return {**envelope, "body": base64.b64encode(bundle.encode_body(raw)).decode()}


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda e: {k: v for k, v in e.items() if k != "signature"}, bundle.UNSIGNED),
        (lambda e: {**e, "signature": ""}, bundle.UNSIGNED),
        (tampered, bundle.BAD_SIGNATURE),
        (lambda e: bundle.sign(body(5), Ed25519PrivateKey.generate()), bundle.BAD_SIGNATURE),
        (lambda e: {**e, "format": "kura-bundle/0"}, bundle.UNKNOWN_FORMAT),
        (lambda e: {**e, "body": "%%%"}, bundle.MALFORMED),
        (lambda e: [e], bundle.MALFORMED),
        (lambda e: bundle.sign({"serial": "5"}, KEY), bundle.MALFORMED),
    ],
)
def test_what_is_not_a_signed_bundle_is_refused(make: Any, reason: str) -> None:
    envelope = bundle.sign(body(5, usb_mass_storage="block"), KEY)
    with pytest.raises(bundle.Refused) as refused:
        bundle.verify(make(envelope), KEY.public_key())
    assert refused.value.reason == reason


def test_decide_follows_the_table() -> None:
    five, six = signed(5), signed(6)
    other_five = signed(5, usb_mass_storage="allow")
    assert bundle.decide(None, five, "clerk-pc", APPLIANCE) == bundle.ACCEPT
    assert bundle.decide(five, six, "clerk-pc", APPLIANCE) == bundle.ACCEPT
    assert bundle.decide(five, signed(5), "clerk-pc", APPLIANCE) == bundle.KEEP
    assert bundle.decide(six, five, "clerk-pc", APPLIANCE) == bundle.OLDER
    assert bundle.decide(five, other_five, "clerk-pc", APPLIANCE) == bundle.CONFLICT
    assert bundle.decide(five, six, "business-server", APPLIANCE) == bundle.WRONG_PROFILE
    assert bundle.decide(five, six, "clerk-pc", "cd" * 32) == bundle.OTHER_APPLIANCE


def test_public_key_text_round_trips() -> None:
    text = bundle.public_key_text(KEY.public_key())
    envelope = bundle.sign(body(1), KEY)
    assert bundle.verify(envelope, bundle.public_key_from_text(text)).serial == 1
