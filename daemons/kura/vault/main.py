"""kura-vault: the daemon's entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

from kura import config as config_module
from kura.daemon import run_main, run_until_stopped
from kura.vault import schema
from kura.vault.server import VaultServer
from kura.vault.service import Vault
from kura.vault.store import Store

log = logging.getLogger("kura.vault")


async def checkpoints(vault: Vault) -> None:
    """Every second: ask the database its role (HA pair); then sign the audit
    chain's head when it moved and a checkpoint is due, and sweep the whole
    chain every integrity_sweep_seconds (a standby follows the replicated
    chain instead: kura.vault.standby)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(vault.checkpoint_interval(), 1.0))
        try:
            await vault.upkeep(loop.time())
        except Exception:
            log.exception("audit checkpoint failed")


async def serve(config_path: str | None) -> None:
    config = config_module.load(config_path)
    if config.database.owner_dsn:
        applied = await asyncio.to_thread(schema.migrate, config.database.owner_dsn)
        if applied:
            log.info("schema migrations applied: %s", applied)
    store = Store(config.database.dsn, config.database.pool_min, config.database.pool_max)
    await store.open()
    vault = Vault(config, store)
    await vault.start()
    server = VaultServer(
        vault, config.vault.socket, config.vault.allowed_uids | config.vault.policy_uids
    )
    await server.start()
    state = "sealed" if vault.sealed else "unsealed"
    log.info("listening on %s (%s)", config.vault.socket, state)
    try:
        await run_until_stopped(state, checkpoints(vault))
    finally:
        await server.close()
        with contextlib.suppress(Exception):
            await vault.checkpoint(force=True)
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kura-vault",
        description="Kura's vault: keys, numbers, accounts and the audit log, on a Unix socket.",
    )
    parser.add_argument("--config", help="configuration file (default: $KURA_CONFIG)")
    args = parser.parse_args(argv)
    return run_main("kura-vault", lambda: serve(args.config))


if __name__ == "__main__":
    sys.exit(main())
