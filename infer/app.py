"""create_app(settings): mounts, middleware and the lifespan of process resources."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ExceptionHandler

from infer.config import Settings, load_settings
from infer.gateway.embeddings import routes as embedding_routes
from infer.gateway.errors import OUTAGE_ERRORS, http_error, outage_error, server_error
from infer.gateway.features import IMAGES_BODY_BYTES
from infer.gateway.routes import routes as gateway_routes
from infer.gateway.text_completions import routes as text_completion_routes
from infer.logs import RequestIds, configure_logging
from infer.metrics import metrics_endpoint
from infer.middleware import BodySizeLimit, SecurityHeaders
from infer.resources import Resources
from infer.schema.root import build_schema
from infer.schema.view import GraphQLView
from infer.tunnel.routes import routes as tunnel_routes
from infer.web.edge import error_page, wants_page
from infer.web.operations import Operations
from infer.web.routes import routes as web_routes
from infer.web.templates import Templates

log = logging.getLogger(__name__)


class State(TypedDict):
    resources: Resources
    operations: Operations  # the dashboard's named operations, on the one schema
    templates: Templates


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """503 only without the database; Redis unreachable is "degraded" (served on local state)."""
    resources: Resources = request.state.resources
    parts = {"database": "ok" if await resources.db.ping() else "unreachable"}
    redis = resources.redis_status()
    if redis is not None:
        parts["redis"] = redis
    if parts["database"] != "ok":
        return JSONResponse({"status": "database unreachable", **parts}, status_code=503)
    return JSONResponse({"status": "degraded" if redis == "degraded" else "ready", **parts})


async def not_routed(request: Request, exc: Exception) -> Response:
    """404 and 405: a page for browsers, OpenAI's form under /api/, plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    if wants_page(request) and exc.status_code in _PAGE_MESSAGES:
        return await error_page(request, exc.status_code, _PAGE_MESSAGES[exc.status_code])
    return await http_error(request, exc)


_PAGE_MESSAGES = {
    404: "There is no page at this address.",
    405: "This page cannot be used that way.",
}


def app_from_environment() -> Starlette:
    """The app of one worker process of `infer serve --workers N`, configured as its parent."""
    settings = load_settings()
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    return create_app(settings, freeze_heap=True)


def freeze_startup_heap() -> None:
    """Exempt everything alive after start-up from the cyclic garbage collector.

    Modules, the schema and the ORM's metadata are ~170k objects that never die; left in
    the oldest generation, every full collection walks them all (70-95 ms on the bench
    machine, under load every ~0.6 s, stalling every request in flight: that was the p99).
    Frozen, a full collection walks only what requests created since (~2 ms).
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, *, freeze_heap: bool = False) -> Starlette:
    """Build the whole platform for these settings; nothing happens at import time.

    freeze_heap: for a serving process (`infer serve`): once started, freeze the heap.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        resources = Resources.open(settings)
        resources.start_background()
        await resources.start_tunnels()
        if freeze_heap:
            freeze_startup_heap()
        try:
            yield {"resources": resources, "operations": operations, "templates": templates}
        finally:
            await resources.close()

    schema = build_schema(
        max_depth=settings.graphql_max_depth,
        max_aliases=settings.graphql_max_aliases,
        max_tokens=settings.graphql_max_tokens,
        anonymous_introspection=not settings.is_production,
    )
    graphql = GraphQLView(
        schema,
        graphql_ide=None if settings.is_production else "graphiql",
        allow_queries_via_get=True,
        multipart_uploads_enabled=False,
    )
    operations = Operations(schema)  # validated against the schema here, once
    templates = Templates()
    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/graphql", graphql, methods=["GET", "POST"]),
        *gateway_routes,
        *embedding_routes,
        *text_completion_routes,
        *tunnel_routes,
        *web_routes,
    ]
    middleware = [
        Middleware(RequestIds),  # outermost: every response and log line has the id
        # Browsers on the listed origins may call with a Bearer key; cookies never count
        # cross-origin (no credentials), so the dashboard's session stays same-origin.
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
            expose_headers=[
                "x-request-id",
                "retry-after",
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
            ],
            allow_credentials=False,
            max_age=600,
        ),
        Middleware(SecurityHeaders),
        Middleware(
            BodySizeLimit,
            max_bytes=settings.max_body_bytes,
            # Room for a chat's images; parse_body holds the rest to max_body_bytes.
            larger={"/api/v1/chat/completions": settings.max_body_bytes + IMAGES_BODY_BYTES},
        ),
    ]
    exception_handlers: dict[type[Exception], ExceptionHandler] = {
        HTTPException: not_routed,
        **dict.fromkeys(OUTAGE_ERRORS, outage_error),
        Exception: server_error,
    }
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
