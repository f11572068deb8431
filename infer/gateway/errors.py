"""InferErrors as OpenAI error bodies: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from infer.errors import (
    BadInput,
    BudgetExceeded,
    Forbidden,
    InferError,
    InsufficientFunds,
    InsufficientScope,
    KeyExpired,
    ModelNotAllowed,
    NodesBusy,
    NoNodeAvailable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from infer.outages import database_unavailable, unavailable

# (type, code) in OpenAI's vocabulary, most specific class first.
_KINDS: list[tuple[type[InferError], str, str]] = [
    (PayloadTooLarge, "invalid_request_error", "request_too_large"),
    (BadInput, "invalid_request_error", "invalid_request"),
    (KeyExpired, "authentication_error", "key_expired"),
    (Unauthenticated, "authentication_error", "invalid_api_key"),
    (InsufficientScope, "permission_error", "insufficient_scope"),
    (ModelNotAllowed, "permission_error", "model_not_allowed"),
    (Forbidden, "permission_error", "forbidden"),
    (NotFound, "invalid_request_error", "model_not_found"),
    (BudgetExceeded, "insufficient_quota", "key_budget_exceeded"),
    (InsufficientFunds, "insufficient_quota", "insufficient_quota"),
    (RateLimited, "rate_limit_error", "rate_limit_exceeded"),
    (NoNodeAvailable, "service_unavailable", "no_node_available"),
    (Unavailable, "service_unavailable", "database_unavailable"),
    (UpstreamTimeout, "upstream_error", "upstream_timeout"),
    (UpstreamError, "upstream_error", "upstream_error"),
]


def _body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(error: InferError) -> dict[str, object]:
    kind, code = next(
        ((t, c) for cls, t, c in _KINDS if isinstance(error, cls)), ("api_error", "internal_error")
    )
    return _body(error.message, kind, code, error.param)


def error_response(error: InferError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if isinstance(error, RateLimited | Unavailable | NodesBusy):
        headers["retry-after"] = str(error.retry_after)
    if isinstance(error, Unauthenticated):
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(error_body(error), status_code=error.status, headers=headers)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405: in OpenAI's error form under /api/, plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    if not _is_api(request):
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message, code = f"{where} is not allowed; use {allowed}", "method_not_allowed"
    elif exc.status_code == 404:
        message, code = f"unknown URL ({where})", "unknown_url"
    else:
        message, code = exc.detail, "invalid_request"
    body = _body(message, "invalid_request_error", code)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


# What a database outage may still look like when it reaches the app: `Unavailable`, or a
# driver's error raised outside the engine (a raw asyncpg connection, the pool's timeout).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    Unavailable,
    OSError,
    PoolTimeout,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


async def outage_error(request: Request, exc: Exception) -> Response:
    """The database unreachable, whatever form it took: 503 with Retry-After, no details.

    Anything else of these classes is unexpected and goes on to `server_error`.
    """
    if not database_unavailable(exc):
        raise exc
    error = exc if isinstance(exc, Unavailable) else unavailable()
    if _is_api(request):
        return error_response(error)
    headers = {"retry-after": str(error.retry_after)}
    return PlainTextResponse(error.message, status_code=error.status, headers=headers)


async def server_error(request: Request, exc: Exception) -> Response:
    """An unexpected failure: nothing about it is told; the server log has the traceback."""
    if not _is_api(request):
        return PlainTextResponse("Internal Server Error", status_code=500)
    body = _body("the server had an error processing your request", "api_error", "internal_error")
    return JSONResponse(body, status_code=500)
