"""The key hierarchy: what is encrypted opens only where it belongs."""

from __future__ import annotations

import random

import pytest

from kura.core.errors import DecryptionFailed
from kura.core.keys import (
    ROOT_KEY_BYTES,
    DataKey,
    KeyHierarchy,
    bootstrap_keyring,
    check_root_key,
    new_root_key,
    root_check_value,
)
from tests.support import my_number

ALICE = "0b7f1f8e-6d2a-4c8e-9a51-3f0d2b6c9e11"
BOB = "5c1d7a20-2f4b-4b1e-8d6a-9e2f3c4b5a60"
_RNG = random.Random(18)
NUMBER_TEXT, OTHER_NUMBER_TEXT = my_number(_RNG), my_number(_RNG)
NUMBER = NUMBER_TEXT.encode()


@pytest.fixture
def root() -> bytes:
    return new_root_key()


@pytest.fixture
def keyring(root: bytes) -> dict[int, bytes]:
    version, wrapped = bootstrap_keyring(root)
    assert version == 1
    return {version: wrapped}


@pytest.fixture
def hierarchy(root: bytes, keyring: dict[int, bytes]) -> KeyHierarchy:
    return KeyHierarchy.unlock(root, keyring, 1)


def test_root_key_is_32_random_bytes() -> None:
    a, b = new_root_key(), new_root_key()
    assert len(a) == ROOT_KEY_BYTES == 32
    assert a != b


def test_check_value_tells_the_right_root_from_another(root: bytes) -> None:
    check = root_check_value(root)
    assert root not in check and len(check) == 32
    assert check_root_key(root, check)
    assert not check_root_key(new_root_key(), check)
    assert not check_root_key(root[:31], check)


def test_field_round_trip_after_unlocking_again(
    root: bytes, keyring: dict[int, bytes], hierarchy: KeyHierarchy
) -> None:
    key, version, wrapped = hierarchy.new_data_key(ALICE)
    ciphertext = key.encrypt("number", NUMBER)
    assert NUMBER not in ciphertext

    # Another process, later: only the root key and stored bytes.
    again = KeyHierarchy.unlock(root, keyring, 1)
    assert again.open_data_key(ALICE, version, wrapped).decrypt("number", ciphertext) == NUMBER


def test_same_plaintext_encrypts_differently(hierarchy: KeyHierarchy) -> None:
    key, _, _ = hierarchy.new_data_key(ALICE)
    assert key.encrypt("number", NUMBER) != key.encrypt("number", NUMBER)


def test_ciphertext_moved_to_another_field_fails(hierarchy: KeyHierarchy) -> None:
    key, _, _ = hierarchy.new_data_key(ALICE)
    ciphertext = key.encrypt("number", NUMBER)
    with pytest.raises(DecryptionFailed) as caught:
        key.decrypt("totp_secret", ciphertext)
    assert NUMBER_TEXT not in str(caught.value)
    assert caught.value.code == "decryption_failed" and caught.value.status == 500


def test_ciphertext_moved_to_another_subject_fails(hierarchy: KeyHierarchy) -> None:
    alice, version, wrapped = hierarchy.new_data_key(ALICE)
    ciphertext = alice.encrypt("number", NUMBER)

    # Row swap: Alice's wrapped key and ciphertext copied into Bob's row.
    with pytest.raises(DecryptionFailed):
        hierarchy.open_data_key(BOB, version, wrapped)
    # Bob's own key cannot read Alice's ciphertext either.
    bob, _, _ = hierarchy.new_data_key(BOB)
    with pytest.raises(DecryptionFailed):
        bob.decrypt("number", ciphertext)


def test_same_key_with_another_subject_id_fails_on_the_field() -> None:
    # Even with the right data key, the field is bound to its record id.
    root = new_root_key()
    version, wrapped_kek = bootstrap_keyring(root)
    hierarchy = KeyHierarchy.unlock(root, {version: wrapped_kek}, version)
    alice, _, _ = hierarchy.new_data_key(ALICE)
    ciphertext = alice.encrypt("number", NUMBER)
    impostor = DataKey(BOB, alice.kek_version, alice._aead)
    with pytest.raises(DecryptionFailed):
        impostor.decrypt("number", ciphertext)


def test_wrapped_key_under_another_version_fails(hierarchy: KeyHierarchy) -> None:
    _, version, wrapped = hierarchy.new_data_key(ALICE)
    hierarchy.rotate()
    with pytest.raises(DecryptionFailed):
        hierarchy.open_data_key(ALICE, version + 1, wrapped)
    with pytest.raises(DecryptionFailed):
        hierarchy.open_data_key(ALICE, 99, wrapped)


def test_altered_or_truncated_ciphertext_fails(hierarchy: KeyHierarchy) -> None:
    key, _, _ = hierarchy.new_data_key(ALICE)
    ciphertext = bytearray(key.encrypt("number", NUMBER))
    ciphertext[-1] ^= 1
    with pytest.raises(DecryptionFailed):
        key.decrypt("number", bytes(ciphertext))
    with pytest.raises(DecryptionFailed):
        key.decrypt("number", b"short")


def test_rotation_keeps_old_data_and_rewrap_moves_it(
    root: bytes, keyring: dict[int, bytes], hierarchy: KeyHierarchy
) -> None:
    key, v1, wrapped_v1 = hierarchy.new_data_key(ALICE)
    ciphertext = key.encrypt("number", NUMBER)

    v2, wrapped_kek_v2 = hierarchy.rotate()
    assert v2 == 2 and hierarchy.active_version == 2
    assert hierarchy.versions == frozenset({1, 2})
    keyring[v2] = wrapped_kek_v2

    # Data under v1 still opens after rotation.
    assert hierarchy.open_data_key(ALICE, v1, wrapped_v1).decrypt("number", ciphertext) == NUMBER
    # New data keys go under v2.
    assert hierarchy.new_data_key(BOB)[1] == 2

    # Rewrap moves Alice to v2; the field ciphertext is untouched and still opens.
    moved_version, wrapped_v2 = hierarchy.rewrap_data_key(ALICE, v1, wrapped_v1)
    assert moved_version == 2 and wrapped_v2 != wrapped_v1
    assert hierarchy.rewrap_data_key(ALICE, 2, wrapped_v2) == (2, wrapped_v2)

    # A fresh unlock from stored bytes alone reproduces everything.
    again = KeyHierarchy.unlock(root, keyring, 2)
    assert again.active_version == 2
    assert again.open_data_key(ALICE, 2, wrapped_v2).decrypt("number", ciphertext) == NUMBER
    assert again.open_data_key(ALICE, 1, wrapped_v1).decrypt("number", ciphertext) == NUMBER

    # Once v1 is retired (dropped from storage), only the rewrapped key opens.
    retired = KeyHierarchy.unlock(root, {2: wrapped_kek_v2}, 2)
    assert retired.open_data_key(ALICE, 2, wrapped_v2).decrypt("number", ciphertext) == NUMBER
    with pytest.raises(DecryptionFailed):
        retired.open_data_key(ALICE, 1, wrapped_v1)


def test_wrong_root_key_cannot_unlock(keyring: dict[int, bytes]) -> None:
    with pytest.raises(DecryptionFailed):
        KeyHierarchy.unlock(new_root_key(), keyring, 1)


def test_kek_moved_to_another_version_fails(root: bytes, keyring: dict[int, bytes]) -> None:
    with pytest.raises(DecryptionFailed):
        KeyHierarchy.unlock(root, {2: keyring[1]}, 2)


def test_empty_keyring_then_first_version(root: bytes) -> None:
    empty = KeyHierarchy.unlock(root, {}, None)
    assert empty.versions == frozenset()
    assert empty.rotate()[0] == 1
    assert empty.active_version == 1


def test_blind_index_stable_and_separated(
    root: bytes, keyring: dict[int, bytes], hierarchy: KeyHierarchy
) -> None:
    index = hierarchy.blind_index("my_number", NUMBER_TEXT)
    assert len(index) == 32
    # Stable across unlocks and across rotation.
    again = KeyHierarchy.unlock(root, keyring, 1)
    again.rotate()
    assert again.blind_index("my_number", NUMBER_TEXT) == index
    # Different numbers, kinds and root keys give different indexes.
    assert hierarchy.blind_index("my_number", OTHER_NUMBER_TEXT) != index
    assert hierarchy.blind_index("corporate", NUMBER_TEXT) != index
    other_root = new_root_key()
    other = KeyHierarchy.unlock(other_root, dict([bootstrap_keyring(other_root)]), 1)
    assert other.blind_index("my_number", NUMBER_TEXT) != index


def test_audit_signing_key_is_deterministic_from_root(
    root: bytes, keyring: dict[int, bytes], hierarchy: KeyHierarchy
) -> None:
    again = KeyHierarchy.unlock(root, keyring, 1)
    signature = hierarchy.audit_signing_key.sign(b"checkpoint 42")
    again.audit_public_key.verify(signature, b"checkpoint 42")  # raises if not the same key
    assert again.audit_signing_key.sign(b"checkpoint 42") == signature  # Ed25519 is deterministic

    other_root = new_root_key()
    other = KeyHierarchy.unlock(other_root, {}, None)
    assert other.audit_signing_key.sign(b"checkpoint 42") != signature


def test_backup_key_is_derived_and_distinct(
    root: bytes, keyring: dict[int, bytes], hierarchy: KeyHierarchy
) -> None:
    assert len(hierarchy.backup_key) == 32
    assert hierarchy.backup_key == KeyHierarchy.unlock(root, keyring, 1).backup_key
    assert hierarchy.backup_key not in (root, root_check_value(root))


def test_keys_never_printed(root: bytes, hierarchy: KeyHierarchy) -> None:
    key, _, _ = hierarchy.new_data_key(ALICE)
    text = repr(hierarchy) + repr(key)
    assert root.hex() not in text and hierarchy.backup_key.hex() not in text


def test_agent_keys_follow_the_root_key_and_nothing_else(root: bytes) -> None:
    # Both appliances of a pair derive the same CA and bundle key from the
    # one root key; another root key gives other keys, and the three differ.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from kura.core.keys import AgentKeys

    def public(key: object) -> bytes:
        return key.public_key().public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    first, again, other = AgentKeys.derive(root), AgentKeys.derive(root), AgentKeys.derive(
        new_root_key())
    for name in ("root_ca", "issuing", "bundle_signing"):
        assert public(getattr(first, name)) == public(getattr(again, name))
        assert public(getattr(first, name)) != public(getattr(other, name))
    assert public(first.root_ca) != public(first.issuing)
    assert isinstance(first.root_ca.curve, ec.SECP256R1)
    keyring = dict([bootstrap_keyring(root)])
    unlocked = KeyHierarchy.unlock(root, keyring, 1).agent_keys
    assert public(unlocked.bundle_signing) == public(first.bundle_signing)
    assert "PRIVATE" not in repr(unlocked) and repr(unlocked) == "<AgentKeys>"
