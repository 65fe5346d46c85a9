"""The appliance's own pieces: kura.toml, the sealed root key, kura-vault
(started, unsealed, asked for the first DA) and the first-boot stamp."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from typing import Any

from kura.config import PolicyConfig
from kura.core.errors import KuraError
from kura.core.keys import new_root_key
from kura.vault import sealing
from kura_firstboot import certificate, database
from kura_firstboot.errors import StepFailed
from kura_firstboot.journal import STAMP_FILE
from kura_firstboot.system import KEYS_DIR, VAULT_SOCKET, System

CONFIG = "/etc/kura/kura.toml"
SEAL_DROPIN_SOURCE = "/usr/share/kura/seal-creds/50-seal-creds.conf"
SEAL_DROPIN = "/etc/systemd/system/kura-vault.service.d/50-seal-creds.conf"
VAULT_UNIT = "kura-vault.service"
CONSOLE_UNIT = "kura-console.service"
POLICY_UNIT = "kura-policy.service"


def render_config(appliance: str, console_uid: int, policy_uid: int | None = None) -> str:
    """/etc/kura/kura.toml for kura.config (peer authentication: no password).
    kura-policy's uid may connect and is the only one the vault's agent service
    operations answer (``policy_uids``); an image without that user has none."""
    policy_uids = [] if policy_uid is None else [policy_uid]
    values: dict[str, dict[str, Any]] = {
        "database": {"dsn": database.VAULT_DSN},
        "vault": {
            "socket": VAULT_SOCKET,
            "keys_dir": KEYS_DIR,
            "allowed_uids": [0, console_uid, *policy_uids],
            "admin_uids": [0],
            "policy_uids": policy_uids,
        },
        "console": {
            "listen": "0.0.0.0",  # noqa: S104 (the console serves the LAN)
            "port": 443,
            "cert": certificate.CERT,
            "key": certificate.KEY,
        },
        "policy": {
            "listen": "0.0.0.0",  # noqa: S104 (the agents are on the LAN)
            "port": PolicyConfig.port,  # written out so the DA sees it in kura.toml
        },
    }
    lines = ["# Written by kura-firstboot.", f"appliance = {json.dumps(appliance)}"]
    for section, items in values.items():
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in items.items()]
    return "\n".join(lines) + "\n"


def write_config(system: System, appliance: str, extra: str = "") -> bool:
    """``extra``: a data node's ``[ha]`` section (kura_firstboot.ha.render_ha_section)."""
    console_uid, _ = system.user("kura-console")
    try:
        policy_uid: int | None = system.user("kura-policy")[0]
    except KeyError:
        policy_uid = None
    kura_gid = system.group("kura")
    system.make_dir("/etc/kura", 0o750, (0, kura_gid))
    return system.write_file(
        CONFIG, render_config(appliance, console_uid, policy_uid) + extra, 0o640, (0, kura_gid)
    )


# --- the seal ---------------------------------------------------------------------


def read_seal(system: System) -> sealing.SealInfo | None:
    return sealing.read_seal(system.path(KEYS_DIR))


def make_seal(system: System, mode: str, threshold: int, count: int) -> list[str]:
    """A new root key, sealed; returns the shares (custodian or TPM recovery).
    The root key itself is dropped here: the vault gets it from the seal."""
    keys_dir = system.path(KEYS_DIR)
    root = new_root_key()
    if mode == "tpm":
        return sealing.init_creds(
            keys_dir, root, with_key=system.tpm_with_key, recovery=(threshold, count)
        )
    return sealing.init_shamir(keys_dir, root, threshold, count)


def hand_keys_to_vault(system: System) -> None:
    """The seal's files were written by root (0600): kura-vault must read them.
    The folder stays kura-vault:root as tmpfiles.d sets it at every boot."""
    uid, _ = system.user("kura-vault")
    keys_dir = system.path(KEYS_DIR)
    if os.geteuid() != 0:
        return
    os.chown(keys_dir, uid, 0)
    for entry in keys_dir.iterdir():
        if entry.is_file() and not entry.is_symlink():
            os.chown(entry, uid, 0)


def wipe_keys(system: System) -> None:
    """Remove every file of the seal (overwritten first where they hold a secret)."""
    keys_dir = system.path(KEYS_DIR)
    if not keys_dir.is_dir():
        return
    for entry in keys_dir.iterdir():
        if entry.is_file() and not entry.is_symlink():
            size = entry.stat().st_size
            with open(entry, "r+b") as f:
                f.write(os.urandom(size))
                f.flush()
                os.fsync(f.fileno())
            entry.unlink()
    # The signed head of the old audit chain goes with the keys that signed it.
    (keys_dir / "audit" / "head.json").unlink(missing_ok=True)
    system.remove(SEAL_DROPIN)


def install_seal_dropin(system: System) -> bool:
    """TPM seal: PID 1 decrypts root.cred for the vault (systemd/seal-creds)."""
    body = system.path(SEAL_DROPIN_SOURCE).read_bytes()
    system.make_dir(os.path.dirname(SEAL_DROPIN), 0o755)
    changed = system.write_file(SEAL_DROPIN, body, 0o644)
    if changed:
        system.systemctl("daemon-reload")
    return changed


# --- the vault ---------------------------------------------------------------------


def start_vault(system: System, restart: bool) -> None:
    system.systemctl("restart" if restart else "start", VAULT_UNIT)


def vault_status(system: System, timeout: float = 0.0) -> dict[str, Any] | None:
    """The vault's status, waiting up to ``timeout`` for its socket; None if unreachable."""
    deadline = system.clock() + timeout
    while True:
        try:
            return system.vault_call("status")
        except (KuraError, OSError):
            if system.clock() >= deadline:
                return None
        system.sleep(0.25)


def unseal(system: System, share: str) -> dict[str, Any]:
    """One custodian share to the vault (what POST /api/v1/unseal does)."""
    return system.vault_call("unseal", {"share": share})


def bootstrap_da(system: System, username: str, password: str) -> bool:
    """Create the first DA; False if accounts exist already (a resumed step)."""
    try:
        system.vault_call("bootstrap_da", {"username": username, "password": password})
    except KuraError as exc:
        if getattr(exc, "vault_code", "") == "conflict":
            return False
        raise
    return True


def check_da(system: System, username: str, password: str, totp: str = "") -> None:
    """Sign in through the vault (audited, locked out like any sign-in) and
    require the DA role; raises the vault's error otherwise."""
    args: dict[str, Any] = {"username": username, "password": password}
    if totp:
        args["totp"] = totp
    session = system.vault_call("login", args)
    try:
        if session.get("role") != "DA":
            raise StepFailed("only an Appliance Admin (DA) may do this",
                             "この操作はアプライアンス管理者（DA）だけが行えます")
    finally:
        with contextlib.suppress(KuraError):
            system.vault_call("logout", {}, str(session["token"]))


# --- the end -------------------------------------------------------------------------


def write_stamp(system: System) -> None:
    system.make_dir("/var/lib/kura", 0o755)
    system.write_file(STAMP_FILE, datetime.now(UTC).isoformat(timespec="seconds") + "\n")


def start_console(system: System) -> None:
    """The console, and kura-policy for the agents (both skipped at this boot
    until the stamp existed)."""
    system.systemctl("start", CONSOLE_UNIT)
    system.systemctl("start", POLICY_UNIT)
