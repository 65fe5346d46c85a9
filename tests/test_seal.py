"""Seal modes: the root key comes back only to the right custodians or host."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import shutil
import stat
from pathlib import Path

import pytest

from kura.core.errors import Conflict, KuraError, SealDamaged, UnsealFailed
from kura.core.keys import new_root_key, root_check_value
from kura.vault.sealing import (
    CRED_NAME,
    SealInfo,
    ShareCollector,
    auto_unseal,
    init_creds,
    init_host,
    init_shamir,
    load_creds,
    load_host,
    read_seal,
)

needs_systemd_creds = pytest.mark.skipif(
    shutil.which("systemd-creds") is None, reason="systemd-creds is not installed on this host"
)


@dataclasses.dataclass
class Appliance:
    keys_dir: Path
    root: bytes
    shares: list[str]

    @property
    def info(self) -> SealInfo:
        info = read_seal(self.keys_dir)
        assert info is not None
        return info


def _shamir_appliance(keys_dir: Path, threshold: int = 3, count: int = 5) -> Appliance:
    root = new_root_key()
    return Appliance(keys_dir, root, init_shamir(keys_dir, root, threshold, count))


@pytest.fixture
def appliance(tmp_path: Path) -> Appliance:
    return _shamir_appliance(tmp_path / "kura-keys")


@pytest.fixture
def other_appliance(tmp_path: Path, appliance: Appliance) -> Appliance:
    # A second appliance. SLIP-39 identifiers are 15 random bits, so make sure
    # this one really differs (a 1-in-32768 clash would make the test moot).
    while True:
        other = _shamir_appliance(tmp_path / "other-keys")
        if other.info.identifier != appliance.info.identifier:
            return other
        shutil.rmtree(other.keys_dir)


def _assert_no_secret(keys_dir: Path, root: bytes, shares: list[str]) -> None:
    text = (keys_dir / "seal.json").read_text()
    for encoding in (root.hex(), root.hex().upper(), base64.b64encode(root).decode()):
        assert encoding not in text
    for share in shares:
        assert share not in text and " ".join(share.split()[4:8]) not in text


def _assert_private(keys_dir: Path) -> None:
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    for path in keys_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        assert not path.name.endswith(".tmp")


# -- shamir ------------------------------------------------------------------------


def test_shamir_seal_json_describes_the_shares_and_holds_no_secret(appliance: Appliance) -> None:
    info = appliance.info
    assert (info.mode, info.threshold, info.count) == ("shamir", 3, 5)
    assert info.check_value == root_check_value(appliance.root)
    assert len(appliance.shares) == 5 and len(set(appliance.shares)) == 5
    assert sorted(p.name for p in appliance.keys_dir.iterdir()) == ["seal.json"]
    _assert_no_secret(appliance.keys_dir, appliance.root, appliance.shares)
    _assert_private(appliance.keys_dir)


def test_m_minus_one_shares_never_unseal(appliance: Appliance) -> None:
    collector = ShareCollector(appliance.info)
    assert collector.need == 3
    for held, share in enumerate(appliance.shares[:2], start=1):
        assert collector.add(share) == held
    assert collector.count == 2 and not collector.complete
    with pytest.raises(UnsealFailed):
        collector.root_key()


@pytest.mark.parametrize("pick", [(0, 1, 2), (4, 2, 0), (1, 3, 4)])
def test_any_m_shares_give_back_the_root_key(appliance: Appliance, pick: tuple[int, ...]) -> None:
    collector = ShareCollector(appliance.info)
    for i in pick:
        collector.add(appliance.shares[i])
    assert collector.complete
    assert collector.root_key() == appliance.root


def test_shares_typed_with_odd_spacing_and_case_are_accepted(appliance: Appliance) -> None:
    collector = ShareCollector(appliance.info)
    for share in appliance.shares[:3]:
        collector.add("  " + share.upper().replace(" ", "  \n ") + "\n")
    assert collector.root_key() == appliance.root


def test_share_of_another_appliance_is_rejected_at_add(
    appliance: Appliance, other_appliance: Appliance
) -> None:
    collector = ShareCollector(appliance.info)
    collector.add(appliance.shares[0])
    with pytest.raises(UnsealFailed) as caught:
        collector.add(other_appliance.shares[0])
    assert "another appliance" in caught.value.message_en
    assert "別の装置" in caught.value.message_ja
    assert collector.add(appliance.shares[1]) == 2  # the collector carries on


def test_m_shares_of_another_appliance_never_yield_a_key(
    appliance: Appliance, other_appliance: Appliance
) -> None:
    # Even if the identifiers clashed (or seal.json were swapped), the check
    # value stops another appliance's root key.
    clashing = dataclasses.replace(appliance.info, identifier=other_appliance.info.identifier)
    collector = ShareCollector(clashing)
    for share in other_appliance.shares[:3]:
        collector.add(share)
    assert collector.complete
    with pytest.raises(UnsealFailed) as caught:
        collector.root_key()
    assert "do not make this appliance's root key" in caught.value.message_en


def test_duplicate_share_is_rejected(appliance: Appliance) -> None:
    collector = ShareCollector(appliance.info)
    collector.add(appliance.shares[2])
    with pytest.raises(UnsealFailed) as caught:
        collector.add(appliance.shares[2])
    assert "already been entered" in caught.value.message_en
    assert collector.add(appliance.shares[3]) == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        "not a share at all, just some text typed by mistake",
    ],
)
def test_garbage_is_rejected(appliance: Appliance, text: str) -> None:
    collector = ShareCollector(appliance.info)
    with pytest.raises(UnsealFailed) as caught:
        collector.add(text)
    assert "not a valid share" in caught.value.message_en
    assert collector.add(appliance.shares[0]) == 1


def test_share_with_one_wrong_word_is_rejected_without_echoing_it(appliance: Appliance) -> None:
    words = appliance.shares[0].split()
    words[10] = "academic" if words[10] != "academic" else "acid"
    with pytest.raises(UnsealFailed) as caught:
        ShareCollector(appliance.info).add(" ".join(words))
    assert words[10] not in caught.value.message_en
    assert words[0] not in caught.value.message_en


def test_already_sealed_is_not_overwritten(appliance: Appliance) -> None:
    with pytest.raises(Conflict):
        init_shamir(appliance.keys_dir, new_root_key(), 2, 3)
    with pytest.raises(Conflict):
        init_host(appliance.keys_dir, new_root_key(), replace=True)  # another root: refused
    assert appliance.info.check_value == root_check_value(appliance.root)


def test_bad_share_counts_are_refused(tmp_path: Path) -> None:
    for threshold, count in [(1, 3), (4, 3), (2, 17)]:
        with pytest.raises(KuraError):
            init_shamir(tmp_path, new_root_key(), threshold, count)
    assert read_seal(tmp_path) is None


# -- host --------------------------------------------------------------------------


def test_host_round_trip_warns_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys_dir = tmp_path / "kura-keys"
    root = new_root_key()
    with caplog.at_level(logging.WARNING, logger="kura.vault.sealing"):
        init_host(keys_dir, root)
    assert "does not survive disk theft" in caplog.text
    caplog.clear()

    with caplog.at_level(logging.WARNING, logger="kura.vault.sealing"):
        assert load_host(keys_dir) == root
        assert auto_unseal(keys_dir, None) == root
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "development" in warnings[0].getMessage()
    assert root.hex() not in caplog.text

    info = read_seal(keys_dir)
    assert info is not None and info.mode == "host" and not info.has_shares
    _assert_no_secret(keys_dir, root, [])
    _assert_private(keys_dir)


def test_host_key_swapped_for_another_fails(tmp_path: Path) -> None:
    init_host(tmp_path, new_root_key())
    (tmp_path / "root.key").write_bytes(new_root_key())
    with pytest.raises(UnsealFailed):
        load_host(tmp_path)


def test_load_in_the_wrong_mode_or_unsealed(tmp_path: Path, appliance: Appliance) -> None:
    with pytest.raises(SealDamaged):
        load_host(appliance.keys_dir)
    with pytest.raises(SealDamaged):
        load_host(tmp_path / "nothing-here")
    assert auto_unseal(appliance.keys_dir, None) is None  # custodians needed
    (appliance.keys_dir / "seal.json").write_text("{not json")
    with pytest.raises(SealDamaged):
        read_seal(appliance.keys_dir)


def test_reseal_from_host_to_shamir_removes_the_clear_key(tmp_path: Path) -> None:
    root = new_root_key()
    init_host(tmp_path, root)
    shares = init_shamir(tmp_path, root, 2, 3, replace=True)
    assert not (tmp_path / "root.key").exists()
    info = read_seal(tmp_path)
    assert info is not None and info.mode == "shamir"
    collector = ShareCollector(info)
    collector.add(shares[0])
    collector.add(shares[2])
    assert collector.root_key() == root


# -- creds (real systemd-creds) ------------------------------------------------------


@needs_systemd_creds
def test_creds_round_trip_with_host_key(tmp_path: Path) -> None:
    keys_dir = tmp_path / "kura-keys"
    root = new_root_key()
    assert init_creds(keys_dir, root, with_key="host") == []

    info = read_seal(keys_dir)
    assert info is not None and info.mode == "creds" and info.with_key == "host"
    assert not info.has_shares
    assert root not in (keys_dir / "root.cred").read_bytes()
    _assert_no_secret(keys_dir, root, [])
    _assert_private(keys_dir)

    assert load_creds(keys_dir, None) == root
    assert auto_unseal(keys_dir, None) == root


@needs_systemd_creds
def test_creds_from_credentials_directory(tmp_path: Path) -> None:
    # What LoadCredentialEncrypted=kura-root-key:… hands the service.
    keys_dir, credentials = tmp_path / "kura-keys", tmp_path / "credentials"
    root = new_root_key()
    init_creds(keys_dir, root, with_key="host")
    credentials.mkdir()
    (credentials / CRED_NAME).write_bytes(root)
    assert load_creds(keys_dir, credentials) == root
    # An empty credentials directory falls back to systemd-creds decrypt.
    (credentials / CRED_NAME).unlink()
    assert load_creds(keys_dir, credentials) == root
    # A wrong key in the credentials directory is caught by the check value.
    (credentials / CRED_NAME).write_bytes(new_root_key())
    with pytest.raises(UnsealFailed):
        load_creds(keys_dir, credentials)


@needs_systemd_creds
def test_creds_with_recovery_shares(tmp_path: Path) -> None:
    root = new_root_key()
    shares = init_creds(tmp_path, root, with_key="auto", recovery=(2, 3))
    assert len(shares) == 3
    info = read_seal(tmp_path)
    assert info is not None and (info.threshold, info.count) == (2, 3)
    _assert_no_secret(tmp_path, root, shares)

    # The TPM is gone: custodians recover with two shares.
    (tmp_path / "root.cred").unlink()
    with pytest.raises(SealDamaged):
        load_creds(tmp_path, None)
    collector = ShareCollector(info)
    collector.add(shares[1])
    collector.add(shares[2])
    assert collector.root_key() == root


@needs_systemd_creds
def test_tampered_credential_fails_with_a_clear_error(tmp_path: Path) -> None:
    root = new_root_key()
    init_creds(tmp_path, root, with_key="host")
    cred = tmp_path / "root.cred"
    blob = bytearray(base64.b64decode(cred.read_bytes()))
    blob[-20] ^= 1
    cred.write_bytes(base64.b64encode(bytes(blob)))
    with pytest.raises(UnsealFailed) as caught:
        load_creds(tmp_path, None)
    assert "systemd-creds decrypt failed" in caught.value.message_en
    assert root.hex() not in json.dumps(caught.value.to_json())


def test_missing_credential_is_reported(tmp_path: Path) -> None:
    (tmp_path / "seal.json").write_text(
        json.dumps(
            {
                "format": 1,
                "mode": "creds",
                "check_value": root_check_value(new_root_key()).hex(),
                "created": "2025-01-01T00:00:00+00:00",
            }
        )
    )
    with pytest.raises(SealDamaged) as caught:
        load_creds(tmp_path, None)
    assert "root.cred is missing" in caught.value.message_en
