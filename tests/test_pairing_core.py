"""The pairing protocol on its own (kura.core.pairing): no files, no vault.

What a DA or an attacker would notice: the standby and the primary agree
only when the code typed is the one the standby showed; any change to what
travels, an expired offer, another standby's key or a wrong root key is
refused with its own error; the root key's bytes are never on the wire."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from kura.core import pairing
from kura.core.errors import (
    BadRequest,
    PairingCodeMismatch,
    PairingEnvelopeRejected,
    PairingOfferExpired,
    PairingWrongRootKey,
)
from kura.core.keys import new_root_key, root_check_value

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
PARAMS = pairing.PairingParams(
    primary="kura-a",
    seal_mode="shamir",
    shares=(3, 5, 12345),
    monitor_uri="postgres://autoctl_node@10.0.0.3:5432/pg_auto_failover?sslmode=verify-full",
    ca_certificate="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
)


def offer_and_envelope(
    code: str | None = None, root: bytes | None = None
) -> tuple[pairing.PendingOffer, pairing.Envelope, bytes]:
    pending = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    root = root or new_root_key()
    # The offer travels as JSON; the primary works from what it received.
    received = pairing.Offer.from_json(json.loads(json.dumps(pending.offer.to_json())))
    envelope = pairing.make_envelope(
        root, received, code or pairing.format_code(pending.code), PARAMS,
        root_check_value(root), NOW + timedelta(minutes=1),
    )
    return pending, pairing.Envelope.from_json(json.loads(json.dumps(envelope.to_json()))), root


def other_valid_code(code: str) -> str:
    """A code with good check digits that is not ``code``: a DA who misreads
    a whole group, which the check digits cannot catch."""
    body = f"{(int(code[:10]) + 1) % 10**10:010d}"
    return body + f"{98 - int(body) * 100 % 97:02d}"


def test_the_standby_opens_the_envelope_made_with_its_code() -> None:
    pending, envelope, root = offer_and_envelope()
    key, params = pairing.open_envelope(pending, envelope, NOW + timedelta(minutes=2))
    assert key == root
    assert params == PARAMS


def test_the_code_is_typed_as_shown_or_in_full_width_digits() -> None:
    pending = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    shown = pairing.format_code(pending.code)
    assert len(shown) == 14 and shown.count(" ") == 2
    full_width = shown.translate(str.maketrans("0123456789 ", "０１２３４５６７８９－"))
    assert pairing.normalise_code(full_width) == pending.code


def test_a_mistyped_digit_is_refused_on_the_primary() -> None:
    pending = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    for i in range(pairing.CODE_DIGITS):
        wrong = pending.code[:i] + str((int(pending.code[i]) + 1) % 10) + pending.code[i + 1:]
        with pytest.raises(PairingCodeMismatch):
            pairing.make_envelope(new_root_key(), pending.offer, wrong, PARAMS,
                                  root_check_value(new_root_key()), NOW)
    swapped = pending.code[1] + pending.code[0] + pending.code[2:]
    if swapped != pending.code:
        with pytest.raises(PairingCodeMismatch):
            pairing.normalise_code(swapped)
    with pytest.raises(PairingCodeMismatch):
        pairing.normalise_code(pending.code[:-1])


def test_a_wrong_code_that_passes_the_check_digits_does_not_open() -> None:
    pending = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    root = new_root_key()
    envelope = pairing.make_envelope(root, pending.offer, other_valid_code(pending.code), PARAMS,
                                     root_check_value(root), NOW)
    with pytest.raises(PairingEnvelopeRejected):
        pairing.open_envelope(pending, envelope, NOW)


def test_the_code_is_secret_and_fresh_for_every_offer() -> None:
    """The code is not derived from anything on the wire: an offer with the
    same name and address gets another code and another public key."""
    offers = [pairing.make_offer("kura-b", "10.0.0.2", NOW) for _ in range(20)]
    assert len({o.code for o in offers}) == 20
    assert len({o.offer.public_key for o in offers}) == 20
    for o in offers:
        assert o.code not in json.dumps(o.offer.to_json())


def test_a_changed_public_key_in_the_offer_is_refused() -> None:
    """Someone on the wire who puts their own key in the offer learns nothing
    from the envelope, and the standby refuses an envelope made for it."""
    pending, _, root = offer_and_envelope()
    swapped = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    forged = pairing.Offer(**{**pending.offer.__dict__, "public_key": swapped.offer.public_key})
    assert forged.fingerprint != pending.offer.fingerprint
    envelope = pairing.make_envelope(root, forged, pending.code, PARAMS, root_check_value(root),
                                     NOW)
    with pytest.raises(PairingEnvelopeRejected):
        pairing.open_envelope(pending, envelope, NOW)
    # Even holding the forged offer's own scalar (the attacker's), with the
    # wrong code (the attacker's guess) the envelope does not open.
    attacker = pairing.PendingOffer(forged, swapped.code, swapped.scalar)
    with pytest.raises(PairingEnvelopeRejected):
        pairing.open_envelope(attacker, envelope, NOW)


@pytest.mark.parametrize("field", ["offer_digest", "public_key", "check_value", "ciphertext"])
def test_every_byte_of_the_envelope_is_protected(field: str) -> None:
    pending, envelope, _ = offer_and_envelope()
    body = envelope.to_json()
    raw = bytearray(getattr(envelope, field))
    for i in range(len(raw)):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        changed = pairing.Envelope(**{**envelope.__dict__, field: bytes(tampered)})
        with pytest.raises((PairingEnvelopeRejected, PairingWrongRootKey)):
            pairing.open_envelope(pending, changed, NOW)
    assert body == envelope.to_json()


@pytest.mark.parametrize(
    "change",
    [
        {"primary": "kura-x"},
        {"seal_mode": "host"},
        {"shares": (2, 5, 12345)},
        {"monitor_uri": "postgres://autoctl_node@10.66.6.6:5432/pg_auto_failover"},
        {"ca_certificate": "-----BEGIN CERTIFICATE-----\nEVIL\n-----END CERTIFICATE-----\n"},
    ],
)
def test_the_parameters_that_travel_with_the_key_are_bound_to_it(change: dict[str, object]) -> None:
    """A changed monitor or CA would send the standby to someone else's
    formation; a changed share set would lock the standby away."""
    pending, envelope, _ = offer_and_envelope()
    params = pairing.PairingParams(**{**PARAMS.__dict__, **change})
    with pytest.raises(PairingEnvelopeRejected):
        pairing.open_envelope(pending, pairing.Envelope(**{**envelope.__dict__,
                                                           "params": params}), NOW)


@pytest.mark.parametrize("field", ["appliance", "address", "nonce", "expires"])
def test_an_envelope_for_a_changed_offer_is_refused(field: str) -> None:
    """The transcript binds the whole offer: the standby compares the digest
    of its own offer and the associated data holds every field."""
    pending, envelope, _ = offer_and_envelope()
    values = {
        "appliance": "kura-c",
        "address": "10.0.0.9",
        "nonce": bytes(16),
        "expires": pending.offer.expires + timedelta(minutes=1),
    }
    changed = pairing.Offer(**{**pending.offer.__dict__, field: values[field]})
    with pytest.raises(PairingEnvelopeRejected):
        pairing.open_envelope(pairing.PendingOffer(changed, pending.code, pending.scalar),
                              envelope, NOW)


def test_an_expired_offer_is_refused_on_both_sides() -> None:
    pending = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    late = pending.offer.expires
    root = new_root_key()
    with pytest.raises(PairingOfferExpired):
        pairing.make_envelope(root, pending.offer, pending.code, PARAMS, root_check_value(root),
                              late)
    envelope = pairing.make_envelope(root, pending.offer, pending.code, PARAMS,
                                     root_check_value(root), late - timedelta(seconds=1))
    with pytest.raises(PairingOfferExpired):
        pairing.open_envelope(pending, envelope, late)
    spent = pairing.PendingOffer(pending.offer, pending.code, pending.scalar, attempts_left=0)
    with pytest.raises(PairingOfferExpired):
        pairing.open_envelope(spent, envelope, late - timedelta(seconds=1))


def test_an_offer_claiming_a_long_life_is_refused() -> None:
    pending = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    long_lived = pairing.Offer(**{**pending.offer.__dict__,
                                  "expires": NOW + timedelta(days=30)})
    with pytest.raises(BadRequest):
        long_lived.check_fresh(NOW)


def test_another_standbys_private_key_does_not_open() -> None:
    pending, envelope, _ = offer_and_envelope()
    other = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    wrong_key = pairing.PendingOffer(pending.offer, pending.code, other.scalar)
    with pytest.raises(PairingEnvelopeRejected):
        pairing.open_envelope(wrong_key, envelope, NOW)


def test_a_root_key_that_does_not_match_its_check_value_is_refused() -> None:
    pending = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    envelope = pairing.make_envelope(new_root_key(), pending.offer, pending.code, PARAMS,
                                     root_check_value(new_root_key()), NOW)
    with pytest.raises(PairingWrongRootKey):
        pairing.open_envelope(pending, envelope, NOW)


def test_the_root_key_is_not_on_the_wire() -> None:
    pending, envelope, root = offer_and_envelope()
    wire = json.dumps(envelope.to_json()).encode() + json.dumps(pending.offer.to_json()).encode()
    for form in (root, root.hex().encode(), root.hex().upper().encode()):
        assert form not in wire
    assert pending.code.encode() not in wire
    assert pending.scalar.hex().encode() not in wire


def test_the_generator_is_a_point_of_the_curve_and_differs_per_code() -> None:
    """Elligator 2 lands on the curve (not its twist) and distinct codes give
    distinct points: a constant or twisted generator would break the PAKE."""
    nonce = bytes(range(16))
    points = set()
    for i in range(50):
        code = f"{i:010d}"
        point = pairing._generator(code, nonce, "kura-b", "10.0.0.2").public_bytes_raw()
        u = int.from_bytes(point, "little")
        assert pairing._is_square((u * u * u + pairing._A * u * u + u) % pairing._P)
        points.add(point)
    assert len(points) == 50


def test_offers_and_envelopes_that_are_not_ours_are_refused_clearly() -> None:
    pending = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    body = pending.offer.to_json()
    for bad in ({}, [], {**body, "kind": "x"}, {**body, "public_key": "zz"},
                {**body, "address": "10.0.0.2; rm -rf /"}, {**body, "expires": "tomorrow"},
                {**body, "format": 2}):
        with pytest.raises(BadRequest) as caught:
            pairing.Offer.from_json(bad)
        assert caught.value.message_ja and caught.value.message_en
    with pytest.raises(BadRequest):
        pairing.Envelope.from_json({"kind": "kura-pairing-envelope", "format": 1})


def test_the_pending_offer_never_prints_its_secrets() -> None:
    pending = pairing.make_offer("kura-b", "10.0.0.2", NOW)
    shown = repr(pending)
    assert pending.code not in shown and pending.scalar.hex() not in shown


def test_pairing_waits_for_a_security_admin() -> None:
    assert pairing.requires_approval() is True
