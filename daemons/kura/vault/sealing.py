"""Sealing the root key: how it is kept on the kura-keys partition between boots.

Three seal modes, one per appliance, described by a non-secret ``seal.json``:

- ``shamir`` — the root key is split into M-of-N SLIP-39 mnemonics, one per
  custodian; nothing secret is written to disk. After each boot M custodians
  type their shares in (:class:`ShareCollector`).
- ``creds`` — the root key is encrypted with ``systemd-creds`` (TPM2 and/or the
  host key) into ``root.cred``; the service gets it back unattended through
  ``LoadCredentialEncrypted=kura-root-key:…`` or by running
  ``systemd-creds decrypt``. Optional SLIP-39 recovery shares cover a lost TPM.
- ``host`` — development and tests only: ``root.key`` in the clear (mode 0600).
  It does not survive theft of the disk and says so every time it is used.

Every candidate root key is checked against the check value in ``seal.json``
(see :func:`kura.core.keys.root_check_value`), so a wrong credential or another
appliance's shares fail loudly instead of yielding a wrong key.

``seal.json`` is the commit point: the secret file is written first, then
``seal.json``, then files of a previous mode are removed. All files are written
to a temporary name and renamed into place, mode 0600, in a 0700 directory.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import shamir_mnemonic

from kura.core.errors import BadRequest, CommandFailed, Conflict, SealDamaged, UnsealFailed
from kura.core.keys import ROOT_KEY_BYTES, check_root_key, root_check_value
from kura.fsutil import fsync_dir, write_atomic

log = logging.getLogger(__name__)

SealMode = Literal["shamir", "creds", "host"]

SEAL_FILE = "seal.json"
CRED_FILE = "root.cred"
HOST_KEY_FILE = "root.key"
CRED_NAME = "kura-root-key"  # the name in LoadCredentialEncrypted= and inside root.cred
MAX_SHARES = 16  # SLIP-39's limit per group
WITH_KEY_CHOICES = frozenset({"auto", "auto-initrd", "host", "tpm2", "host+tpm2", "tpm2-absent"})

_FORMAT = 1
_MODES: frozenset[str] = frozenset({"shamir", "creds", "host"})
_SECRET_FILES = (CRED_FILE, HOST_KEY_FILE)
_HOST_WARNING = (
    "HOST-ONLY SEAL: the root key lies in the clear in %s. This seal does not survive "
    "disk theft: whoever takes the disk takes every number. For development and tests only."
)


@dataclass(frozen=True)
class SealInfo:
    """What ``seal.json`` says. Nothing in it is secret."""

    mode: SealMode
    check_value: bytes
    created: str  # ISO 8601, UTC
    threshold: int | None = None  # custodian shares: M …
    count: int | None = None  # … of N
    identifier: int | None = None  # the SLIP-39 identifier every share carries
    with_key: str | None = None  # creds mode: what systemd-creds sealed to

    @property
    def has_shares(self) -> bool:
        """True if custodian (or recovery) shares exist for this seal."""
        return self.threshold is not None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": _FORMAT,
            "mode": self.mode,
            "check_value": self.check_value.hex(),
            "created": self.created,
        }
        if self.has_shares:
            body["custodian_shares"] = {
                "threshold": self.threshold,
                "count": self.count,
                "identifier": self.identifier,
            }
        if self.with_key is not None:
            body["with_key"] = self.with_key
        return body

    @classmethod
    def from_json(cls, body: Any) -> SealInfo:
        try:
            if body["format"] != _FORMAT or body["mode"] not in _MODES:
                raise ValueError("unknown format or mode")
            shares = body.get("custodian_shares")
            info = cls(
                mode=cast(SealMode, body["mode"]),
                check_value=bytes.fromhex(body["check_value"]),
                created=str(body["created"]),
                threshold=int(shares["threshold"]) if shares else None,
                count=int(shares["count"]) if shares else None,
                identifier=int(shares["identifier"]) if shares else None,
                with_key=body.get("with_key"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SealDamaged(en=f"seal.json is not a valid seal description ({e}).") from None
        if info.mode == "shamir" and not info.has_shares:
            raise SealDamaged(en="seal.json says shamir but describes no shares.")
        return info


def read_seal(keys_dir: Path) -> SealInfo | None:
    """The seal description, or None if this appliance has not been sealed yet."""
    path = keys_dir / SEAL_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        raise SealDamaged(en="seal.json is not valid JSON.") from None
    return SealInfo.from_json(body)


def auto_unseal(keys_dir: Path, credentials_dir: Path | None) -> bytes | None:
    """The root key if the seal opens unattended (creds, host); None if
    custodians must type shares in (shamir) or nothing is sealed yet."""
    info = read_seal(keys_dir)
    if info is None or info.mode == "shamir":
        return None
    if info.mode == "creds":
        return load_creds(keys_dir, credentials_dir)
    return load_host(keys_dir)


# -- shamir: custodian shares --------------------------------------------------


def init_shamir(
    keys_dir: Path, root_key: bytes, threshold: int, count: int, *, replace: bool = False
) -> list[str]:
    """Seal to M-of-N custodian shares and return the N mnemonics.

    The mnemonics are the only copy: hand each to its custodian and do not
    keep them. ``replace`` reseals an already sealed appliance, which is
    allowed only for the same root key.
    """
    _check_new_seal(keys_dir, root_key, replace)
    mnemonics, identifier = _make_shares(root_key, threshold, count)
    _commit(
        keys_dir,
        SealInfo(
            mode="shamir",
            check_value=root_check_value(root_key),
            created=_now(),
            threshold=threshold,
            count=count,
            identifier=identifier,
        ),
    )
    return mnemonics


def adopt_shamir(
    keys_dir: Path, root_key: bytes, shares: tuple[int, int, int], *, replace: bool = False
) -> None:
    """Seal to an existing share set: a paired standby records the primary's
    ``(threshold, count, identifier)``, so the primary's custodians open it
    with the shares they already hold. Nothing is made or shown: the shares
    encode this same root key, and :class:`ShareCollector` checks both the
    identifier and the check value."""
    threshold, count, identifier = shares
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise BadRequest(en=f"Shares must be M of N with 2 ≤ M ≤ N ≤ {MAX_SHARES}.")
    _check_new_seal(keys_dir, root_key, replace)
    _commit(
        keys_dir,
        SealInfo(
            mode="shamir",
            check_value=root_check_value(root_key),
            created=_now(),
            threshold=threshold,
            count=count,
            identifier=identifier,
        ),
    )


class ShareCollector:
    """Collects custodian shares typed in after boot until M are held.

    Each share is checked as it is added, so a custodian hears at once that a
    word is wrong, that the share belongs to another appliance, or that it was
    already entered. :meth:`root_key` combines them and verifies the result.
    """

    def __init__(self, info: SealInfo) -> None:
        if info.threshold is None or info.identifier is None:
            raise UnsealFailed(
                en="This appliance's seal has no custodian shares.",
                ja="この装置の封印には鍵管理者のシェアがありません。",
            )
        self._info = info
        self._need = info.threshold
        self._identifier = info.identifier
        self._shares: dict[int, shamir_mnemonic.Share] = {}

    @property
    def need(self) -> int:
        """How many shares unseal (M)."""
        return self._need

    @property
    def count(self) -> int:
        """How many distinct valid shares have been entered so far (not N,
        which is :attr:`SealInfo.count`)."""
        return len(self._shares)

    @property
    def complete(self) -> bool:
        return len(self._shares) >= self._need

    def add(self, mnemonic: str) -> int:
        """Check and keep one share; returns the number of shares held."""
        try:
            share = shamir_mnemonic.Share.from_mnemonic(" ".join(mnemonic.lower().split()))
        except (shamir_mnemonic.MnemonicError, ValueError):
            # The library's message may quote words of the share: not passed on.
            raise UnsealFailed(
                en="This is not a valid share: a word is misspelt, missing or out of order.",
                ja="シェアの形式が正しくありません。単語の誤り・抜け・順序を確認してください。",
            ) from None
        if share.identifier != self._identifier:
            raise UnsealFailed(
                en="This share belongs to another appliance or to an older seal.",
                ja="このシェアは別の装置のもの、または以前の封印のものです。",
            )
        if (share.group_count, share.group_threshold, share.member_threshold) != (
            1,
            1,
            self._need,
        ):
            raise UnsealFailed(
                en="This share does not match this appliance's seal.",
                ja="このシェアはこの装置の封印と一致しません。",
            )
        if share.index in self._shares:
            raise UnsealFailed(
                en="This share has already been entered.",
                ja="このシェアはすでに入力されています。",
            )
        if not self.complete:  # extra shares past M are checked but not needed
            self._shares[share.index] = share
        return len(self._shares)

    def root_key(self) -> bytes:
        """Combine the shares and verify the result against the seal."""
        if not self.complete:
            raise UnsealFailed(
                en=f"{self._need} shares are needed; {len(self._shares)} entered so far.",
                ja=f"シェアが{self._need}個必要です（入力済み{len(self._shares)}個）。",
            )
        try:
            root_key = bytes(
                shamir_mnemonic.combine_mnemonics(
                    [share.mnemonic() for share in self._shares.values()]
                )
            )
        except (shamir_mnemonic.MnemonicError, ValueError):
            root_key = b""
        if not check_root_key(root_key, self._info.check_value):
            raise UnsealFailed(
                en="These shares do not make this appliance's root key.",
                ja="入力されたシェアからこの装置の鍵を復元できませんでした。",
            )
        return root_key


# -- creds: systemd-creds (TPM2 / host key) ----------------------------------------


def init_creds(
    keys_dir: Path,
    root_key: bytes,
    with_key: str = "auto",
    recovery: tuple[int, int] | None = None,
    *,
    replace: bool = False,
    adopt: tuple[int, int, int] | None = None,
) -> list[str]:
    """Seal with systemd-creds into ``root.cred``; optionally also make M-of-N
    recovery shares (returned; else an empty list).

    The key goes to systemd-creds on stdin, never in argv. The new credential
    is decrypted once before it is committed, so a seal that cannot be opened
    is never written. ``adopt`` records an existing recovery share set
    ``(threshold, count, identifier)`` instead of making one (a paired standby).
    """
    if with_key not in WITH_KEY_CHOICES:
        raise BadRequest(en=f"with_key must be one of {', '.join(sorted(WITH_KEY_CHOICES))}.")
    _check_new_seal(keys_dir, root_key, replace)
    blob = _run(
        ["systemd-creds", "encrypt", f"--name={CRED_NAME}", f"--with-key={with_key}", "-", "-"],
        input=root_key,
    )
    mnemonics: list[str] = []
    threshold = count = identifier = None
    if adopt is not None:
        # A paired standby keeps the primary's recovery share set (adopt_shamir).
        threshold, count, identifier = adopt
    elif recovery is not None:
        threshold, count = recovery
        mnemonics, identifier = _make_shares(root_key, threshold, count)
    _prepare_dir(keys_dir)
    write_atomic(keys_dir / CRED_FILE, blob)
    if _decrypt_cred(keys_dir) != root_key:
        raise SealDamaged(en="systemd-creds gave back a different key; the seal was not made.")
    _commit(
        keys_dir,
        SealInfo(
            mode="creds",
            check_value=root_check_value(root_key),
            created=_now(),
            threshold=threshold,
            count=count,
            identifier=identifier,
            with_key=with_key,
        ),
    )
    return mnemonics


def load_creds(keys_dir: Path, credentials_dir: Path | None) -> bytes:
    """The root key from the systemd credential.

    ``credentials_dir`` is ``$CREDENTIALS_DIRECTORY``: with
    ``LoadCredentialEncrypted=kura-root-key:…/root.cred`` systemd has already
    decrypted it there. Otherwise ``systemd-creds decrypt`` is run.
    """
    info = _require_seal(keys_dir, "creds")
    passed = credentials_dir / CRED_NAME if credentials_dir is not None else None
    if passed is not None and passed.is_file():
        root_key = passed.read_bytes()
    else:
        try:
            root_key = _decrypt_cred(keys_dir)
        except CommandFailed as e:
            raise UnsealFailed(
                en=f"The systemd credential could not be decrypted: {e.message_en}",
                ja="systemd の資格情報を復号できませんでした（TPM または鍵の変更の可能性）。",
            ) from None
    return _verified(root_key, info, "the systemd credential")


def _decrypt_cred(keys_dir: Path) -> bytes:
    path = keys_dir / CRED_FILE
    if not path.is_file():
        raise SealDamaged(en=f"{CRED_FILE} is missing from the keys partition.")
    return _run(["systemd-creds", "decrypt", f"--name={CRED_NAME}", str(path), "-"])


# -- host: development only --------------------------------------------------------


def init_host(keys_dir: Path, root_key: bytes, *, replace: bool = False) -> None:
    """Write the root key in the clear (0600). Development and tests only."""
    _check_new_seal(keys_dir, root_key, replace)
    _prepare_dir(keys_dir)
    path = keys_dir / HOST_KEY_FILE
    log.warning(_HOST_WARNING, path)
    write_atomic(path, root_key)
    _commit(keys_dir, SealInfo(mode="host", check_value=root_check_value(root_key), created=_now()))


def load_host(keys_dir: Path) -> bytes:
    """Read the clear root key written by :func:`init_host`."""
    info = _require_seal(keys_dir, "host")
    path = keys_dir / HOST_KEY_FILE
    log.warning(_HOST_WARNING, path)
    try:
        root_key = path.read_bytes()
    except FileNotFoundError:
        raise SealDamaged(en=f"{HOST_KEY_FILE} is missing from the keys partition.") from None
    return _verified(root_key, info, HOST_KEY_FILE)


# -- shared steps ----------------------------------------------------------------


def _make_shares(root_key: bytes, threshold: int, count: int) -> tuple[list[str], int]:
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise BadRequest(
            en=f"Shares must be M of N with 2 ≤ M ≤ N ≤ {MAX_SHARES}.",
            ja=f"シェアの数は 2 ≤ M ≤ N ≤ {MAX_SHARES} で指定してください。",
        )
    (mnemonics,) = shamir_mnemonic.generate_mnemonics(1, [(threshold, count)], root_key)
    identifier = shamir_mnemonic.Share.from_mnemonic(mnemonics[0]).identifier
    return list(mnemonics), int(identifier)


def _check_new_seal(keys_dir: Path, root_key: bytes, replace: bool) -> None:
    if len(root_key) != ROOT_KEY_BYTES:
        raise ValueError(f"a root key is {ROOT_KEY_BYTES} bytes")
    current = read_seal(keys_dir)
    if current is None:
        return
    if not replace:
        raise Conflict(
            en="This appliance is already sealed; reseal explicitly to change the seal.",
            ja="この装置はすでに封印されています。",
        )
    if not check_root_key(root_key, current.check_value):
        # A different root key would orphan every stored record.
        raise Conflict(
            en="A reseal must keep the same root key.",
            ja="再封印では同じ鍵を使う必要があります。",
        )


def _commit(keys_dir: Path, info: SealInfo) -> None:
    """Write seal.json (the commit point), then drop files of other modes."""
    _prepare_dir(keys_dir)
    body = json.dumps(info.to_json(), indent=2, ensure_ascii=False) + "\n"
    write_atomic(keys_dir / SEAL_FILE, body.encode())
    keep = {"creds": CRED_FILE, "host": HOST_KEY_FILE}.get(info.mode)
    for name in _SECRET_FILES:
        if name != keep:
            (keys_dir / name).unlink(missing_ok=True)
    fsync_dir(keys_dir)


def _require_seal(keys_dir: Path, mode: SealMode) -> SealInfo:
    info = read_seal(keys_dir)
    if info is None:
        raise SealDamaged(en="seal.json is missing: this appliance has not been sealed.")
    if info.mode != mode:
        raise SealDamaged(en=f"The appliance is sealed in {info.mode} mode, not {mode}.")
    return info


def _verified(root_key: bytes, info: SealInfo, source: str) -> bytes:
    if not check_root_key(root_key, info.check_value):
        raise UnsealFailed(
            en=f"The key from {source} is not this appliance's root key.",
            ja="取り出した鍵はこの装置の鍵ではありません。",
        )
    return root_key


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def prepare_keys_dir(keys_dir: Path) -> None:
    """Make the keys folder (0700) if it is missing: for files kept beside the
    seal, such as a standby's pending pairing offer."""
    _prepare_dir(keys_dir)


def _prepare_dir(keys_dir: Path) -> None:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)


def _run(argv: list[str], input: bytes | None = None) -> bytes:
    """Run a helper program; its stdout, or CommandFailed naming the program
    and its error output. Never echoes ``input`` or stdout, which may be secret."""
    try:
        done = subprocess.run(argv, input=input, capture_output=True, check=False, timeout=60)
    except FileNotFoundError:
        raise CommandFailed(en=f"{argv[0]} is not installed.", program=argv[0]) from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(en=f"{argv[0]} {argv[1]} timed out.", program=argv[0]) from None
    stderr = done.stderr.decode(errors="replace").strip()
    if done.returncode != 0:
        raise CommandFailed(
            en=f"{argv[0]} {argv[1]} failed (exit {done.returncode}): {stderr[-500:]}",
            program=argv[0],
        )
    if stderr:
        log.warning("%s %s: %s", argv[0], argv[1], stderr[-500:])
    return done.stdout
