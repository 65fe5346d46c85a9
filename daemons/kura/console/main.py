"""kura-console: the daemon's entry point (HTTPS on the configured address)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys

from aiohttp import web

from kura import config as config_module
from kura.console.app import access_log_args, init_app
from kura.daemon import Notifier, run_main, wait_for_stop


async def serve(config_path: str | None) -> None:
    config = config_module.load(config_path)
    app = init_app(config)
    context = None
    if config.console.cert and config.console.key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(config.console.cert, config.console.key)
    runner = web.AppRunner(app, **access_log_args())
    await runner.setup()
    site = web.TCPSite(
        runner, config.console.listen, config.console.port, ssl_context=context, backlog=512
    )
    await site.start()
    notifier = Notifier()
    notifier.send("READY=1")

    async def healthy() -> bool:
        # The console is healthy when its event loop runs; the vault may be
        # sealed or restarting, which the console reports to its users itself.
        return True

    watchdog = asyncio.create_task(notifier.watchdog(healthy))
    try:
        await wait_for_stop()
    finally:
        notifier.send("STOPPING=1")
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
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
