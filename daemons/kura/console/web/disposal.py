"""(area: disposal) — see kura.console.web's docstring."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
