"""Every dashboard route, and the static files the pages use."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from infer.web import account, accounts, google, keys, market, operator, overview, usage
from infer.web.templates import STATIC_DIR

routes: list[BaseRoute] = [
    *accounts.routes,
    *overview.routes,
    *usage.routes,
    *keys.routes,
    *market.routes,
    *operator.routes,
    *account.routes,
    *google.routes,
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]
