"""kura-console: the daemon's entry point (HTTPS on the configured address)."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from kura import config as config_module
from kura.console import clientcert
from kura.console.api import VAULT
from kura.console.app import access_log_args, init_app
from kura.daemon import run_main, run_until_stopped


async def serve(config_path: str | None) -> None:
    config = config_module.load(config_path)
    app = init_app(config)
    context = None
    if config.console.cert and config.console.key:
        # Every browser is asked for a client certificate (optional): an
        # enrolled clerk PC's, verified once the vault gives the agent CA.
        context = clientcert.server_context(config.console.cert, config.console.key)
        app.cleanup_ctx.append(clientcert.trust_agent_ca(context, lambda: app[VAULT]))
    runner = web.AppRunner(app, **access_log_args())
    await runner.setup()
    site = web.TCPSite(
        runner, config.console.listen, config.console.port, ssl_context=context, backlog=512
    )
    await site.start()
    try:
        await run_until_stopped(f"listening on {config.console.listen}:{config.console.port}")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kura-console",
        description="Kura's web console and JSON API (/api/v1); holds no keys.",
    )
    parser.add_argument("--config", help="configuration file (default: $KURA_CONFIG)")
    args = parser.parse_args(argv)
    return run_main("kura-console", lambda: serve(args.config))


if __name__ == "__main__":
    sys.exit(main())
