"""kura-policy: the daemon's entry point.

Start-up: tell systemd it runs, then wait (logging once) until the vault
answers unsealed and writable; make an ECDSA P-256 key in memory; have the
vault sign a server certificate for the host's names; build the TLS context
with the agent CA as the only trust anchor; serve. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from typing import Any

from aiohttp import web

from kura import config as config_module
from kura.config import Config
from kura.console.app import access_log_args
from kura.console.vaultclient import VaultClient, VaultError
from kura.core.errors import KuraError
from kura.daemon import Notifier, run_main, run_until_stopped
from kura.policy import certificate
from kura.policy.server import RELAY, Relay, init_app

log = logging.getLogger("kura.policy")


async def wait_for_vault(vault: VaultClient, retry_seconds: float, notifier: Notifier) -> None:
    """Until the vault is unsealed and not a standby; one log line, not one a try.
    The watchdog is fed meanwhile: waiting for custodians is not a hang.

    systemd was told READY before this: with custodian shares the vault is
    sealed at every boot, and a unit that is still starting would hold
    multi-user.target (and ``systemctl start``) until someone unseals.
    STATUS= says what it waits for and, later, that it serves."""
    said = ""
    while True:
        try:
            status = await vault.call("status")
            if status.get("sealed"):
                why = "the vault is sealed"
            elif status.get("role") == "standby":
                why = "the vault is a standby (the agents reach the primary)"
            else:
                return
        except KuraError as exc:
            why = f"the vault is not reachable ({exc.message_en})"
        if why != said:
            log.info("%s; waiting", why)
            notifier.send(f"STATUS={why}; waiting")
            said = why
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(retry_seconds)


async def certify(config: Config, vault: VaultClient) -> tuple[ssl.SSLContext, dict[str, Any]]:
    """The TLS context and the vault's agents.ca answer."""
    ca = await vault.call("agents.ca", {})
    try:
        addresses = certificate.host_addresses()
    except (OSError, ImportError) as exc:
        log.warning("cannot list the host's addresses (%s); naming only the host", exc)
        addresses = []
    vip = str(config.ha.vip.ip) if config.ha else None
    names = certificate.server_names(config.policy.listen, vip, addresses)
    key = certificate.ServerKey.generate()
    signed = await vault.call("agents.server_cert", {"csr_pem": key.csr_pem(names),
                                                     "names": names})
    context = certificate.server_context(
        key, str(signed["certificate"]), str(signed.get("chain", "")), str(ca["ca_pem"])
    )
    log.info("server certificate for %s", ", ".join(names))
    return context, ca


async def report_status(relay: Relay, listening: str, notifier: Notifier) -> None:
    """``systemctl status kura-policy`` shows how many agents are connected."""
    while True:
        await asyncio.sleep(15)
        vault = "" if relay.vault_ok else "; the vault is away, agents keep their bundles"
        notifier.send(f"STATUS={listening}; {relay.connected()} agent(s) on the stream{vault}")


async def serve(config_path: str | None) -> None:
    config = config_module.load(config_path)
    vault = VaultClient(config.vault.socket, 2)
    notifier = Notifier()
    notifier.send("READY=1\nSTATUS=asking the vault")
    try:
        await wait_for_vault(vault, config.policy.retry_seconds, notifier)
        context, ca = await certify(config, vault)
    except VaultError as exc:
        raise KuraError(f"the vault refused kura-policy's start ({exc.vault_code}: "
                        f"{exc.message_en}); is its uid in [vault] policy_uids?") from exc
    finally:
        await vault.close()
    app = init_app(config, ca)
    runner = web.AppRunner(app, **access_log_args())
    await runner.setup()
    site = web.TCPSite(runner, config.policy.listen, config.policy.port, ssl_context=context,
                       backlog=512)
    await site.start()
    listening = f"agents on {config.policy.listen}:{config.policy.port}"
    try:
        await run_until_stopped(
            f"{listening}; CA SHA-256 {ca.get('fingerprint', '')}",
            report_status(app[RELAY], listening, notifier),
        )
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kura-policy",
        description="Kura's daemon for endpoint agents: enrolment, signed policy "
                    "bundles pushed over mTLS, heartbeats (docs/agents.md); holds no keys.",
    )
    parser.add_argument("--config", help="configuration file (default: $KURA_CONFIG)")
    args = parser.parse_args(argv)
    return run_main("kura-policy", lambda: serve(args.config))


if __name__ == "__main__":
    sys.exit(main())
