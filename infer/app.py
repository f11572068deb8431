"""create_app(settings): mounts, middleware and the lifespan of process resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from infer.config import Settings
from infer.db import Database


class State(TypedDict):
    settings: Settings
    db: Database


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    if await request.state.db.ping():
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "database unreachable"}, status_code=503)


def create_app(settings: Settings) -> Starlette:
    """Build the whole platform for these settings; nothing happens at import time."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        db = Database.from_url(settings.database_url)
        try:
            yield {"settings": settings, "db": db}
        finally:
            await db.dispose()

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    return Starlette(routes=routes, lifespan=lifespan)
