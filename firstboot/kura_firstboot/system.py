"""The one way the wizard touches the machine.

Every path goes through :meth:`System.path`, rooted at ``root`` ("/" on the
appliance, a temporary folder in tests); every program through
:meth:`System.run`, whose runner a test may replace to record calls (PID 1 is
not systemd on the build host, so systemctl cannot run there). Files are
written to a temporary name, fsynced and renamed into place, the way
cloud-init does, so a power cut leaves the old or the new file, never half.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kura.console.vaultclient import VaultClient
from kura.fsutil import fsync_dir, write_atomic
from kura.proc import run as proc_run

Runner = Callable[[Sequence[str], bytes | None], bytes]

VAULT_SOCKET = "/run/kura/vault.sock"
KEYS_DIR = "/var/lib/kura-keys"
APPLIANCE_MARKER = "/usr/share/kura/appliance"


def real_runner(argv: Sequence[str], input: bytes | None) -> bytes:
    """Run the program (kura.proc: argv only, never a shell)."""
    return proc_run(list(argv), input=input)


def dry_runner(argv: Sequence[str], input: bytes | None) -> bytes:
    """With --root: say what would run instead of changing the host."""
    print(f"(--root: not running) {' '.join(argv)}", file=sys.stderr, flush=True)
    return b""


@dataclass
class System:
    root: Path = Path("/")
    runner: Runner = real_runner
    tpm_with_key: str = "tpm2"  # what systemd-creds seals to in TPM mode
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    calls: list[list[str]] = field(default_factory=list)

    # --- paths and files -------------------------------------------------------

    def path(self, where: str | Path) -> Path:
        """An absolute appliance path under ``root``."""
        p = Path(where)
        if not p.is_absolute():
            raise ValueError(f"{p} is not absolute")
        return self.root / p.relative_to("/")

    def read_text(self, where: str | Path) -> str | None:
        try:
            return self.path(where).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write_file(
        self,
        where: str | Path,
        data: bytes | str,
        mode: int = 0o644,
        owner: tuple[int, int] | None = None,
    ) -> bool:
        """Write atomically (temporary name, fsync, rename, fsync the folder).
        Returns False, touching nothing, if the file already holds ``data``
        with that mode: re-running a step changes nothing."""
        body = data.encode() if isinstance(data, str) else data
        target = self.path(where)
        try:
            st = target.stat()
            same = (
                target.read_bytes() == body
                and (st.st_mode & 0o7777) == mode
                and (owner is None or (st.st_uid, st.st_gid) == owner)
            )
            if same:
                return False
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, body, mode, owner)
        return True

    def remove(self, where: str | Path) -> bool:
        target = self.path(where)
        if not target.exists() and not target.is_symlink():
            return False
        target.unlink()
        fsync_dir(target.parent)
        return True

    def make_dir(self, where: str | Path, mode: int, owner: tuple[int, int] | None = None) -> None:
        target = self.path(where)
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, mode)
        if owner is not None and os.geteuid() == 0:
            os.chown(target, *owner)

    def exists(self, where: str | Path) -> bool:
        return self.path(where).exists()

    # --- users ---------------------------------------------------------------------

    def user(self, name: str) -> tuple[int, int]:
        """(uid, primary gid) of a system user, from the appliance's passwd."""
        if self.root == Path("/"):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        for line in (self.read_text("/etc/passwd") or "").splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == name:
                return int(fields[2]), int(fields[3])
        raise KeyError(name)

    def group(self, name: str) -> int:
        if self.root == Path("/"):
            import grp

            return grp.getgrnam(name).gr_gid
        for line in (self.read_text("/etc/group") or "").splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[0] == name:
                return int(fields[2])
        raise KeyError(name)

    # --- programs --------------------------------------------------------------------

    def run(self, *argv: str | Path, input: bytes | None = None) -> bytes:
        """Run a program; secrets only ever go through ``input``."""
        args = [str(a) for a in argv]
        self.calls.append(args)
        return self.runner(args, input)

    def systemctl(self, *args: str) -> None:
        self.run("systemctl", *args)

    @property
    def is_appliance(self) -> bool:
        return self.exists(APPLIANCE_MARKER)

    @property
    def has_tpm(self) -> bool:
        return self.exists("/sys/class/tpm/tpm0") or self.exists("/dev/tpmrm0")

    # --- the vault, over its socket ------------------------------------------------

    def vault_call(
        self, op: str, args: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """One request to kura-vault as root (the socket checks the uid)."""

        async def call() -> dict[str, Any]:
            client = VaultClient(self.path(VAULT_SOCKET), 1)
            try:
                return await client.call(op, args or {}, session, "local")
            finally:
                await client.close()

        return asyncio.run(call())

    def migrate(self, owner_dsn: str) -> list[int]:
        """Apply the schema migrations as the owner role."""
        from kura.vault import schema

        return schema.migrate(owner_dsn)

