"""``kura boot-report``: one line for the console after each boot.

    KURA-BOOT-REPORT failed=0 vault=unsealed console=active units=-

Operators read it on the serial console; the image tests wait for it. It
names failed units and the vault's state, never anything a clerk entered.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from kura.core.errors import KuraError


def _systemctl(*args: str) -> str:
    # Non-zero exits are answers here (is-active of a stopped unit), not failures.
    done = subprocess.run(["systemctl", "--no-pager", *args], capture_output=True, check=False)
    return done.stdout.decode("utf-8", "replace")


def failed_units() -> list[str]:
    out = _systemctl("--failed", "--no-legend", "--plain")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def unit_state(unit: str) -> str:
    return _systemctl("is-active", unit).strip() or "unknown"


def vault_state(socket: Path) -> str:
    from kura.console.vaultclient import VaultClient

    async def ask() -> str:
        client = VaultClient(socket, 1)
        try:
            status = await client.call("status", {}, None, "local")
        finally:
            await client.close()
        if not status.get("initialised"):
            return "uninitialised"
        return "sealed" if status.get("sealed") else "unsealed"

    try:
        if not socket.exists():
            return "down"
        return asyncio.run(asyncio.wait_for(ask(), 10))
    except (KuraError, OSError, TimeoutError):
        return "down"


def data_mib(path: Path = Path("/var/lib/postgresql")) -> int:
    """Size of the kura-data filesystem (it grows to fill the disk at first boot)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_blocks * st.f_frsize >> 20


def report(socket: Path) -> str:
    failed = failed_units()
    return (
        f"KURA-BOOT-REPORT failed={len(failed)} vault={vault_state(socket)} "
        f"console={unit_state('kura-console.service')} data_mib={data_mib()} "
        f"units={','.join(failed) or '-'}"
    )
