"""InferErrors as OpenAI error bodies: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from starlette.responses import JSONResponse

from infer.errors import (
    BadInput,
    Forbidden,
    InferError,
    InsufficientFunds,
    NoNodeAvailable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    UpstreamError,
    UpstreamTimeout,
)

# (type, code) in OpenAI's vocabulary, most specific class first.
_KINDS: list[tuple[type[InferError], str, str]] = [
    (PayloadTooLarge, "invalid_request_error", "request_too_large"),
    (BadInput, "invalid_request_error", "invalid_request"),
    (Unauthenticated, "authentication_error", "invalid_api_key"),
    (Forbidden, "permission_error", "forbidden"),
    (NotFound, "invalid_request_error", "model_not_found"),
    (InsufficientFunds, "insufficient_quota", "insufficient_quota"),
    (RateLimited, "rate_limit_error", "rate_limit_exceeded"),
    (NoNodeAvailable, "service_unavailable", "no_node_available"),
    (UpstreamTimeout, "upstream_error", "upstream_timeout"),
    (UpstreamError, "upstream_error", "upstream_error"),
]


def error_body(error: InferError) -> dict[str, object]:
    kind, code = next(
        ((t, c) for cls, t, c in _KINDS if isinstance(error, cls)), ("api_error", "internal_error")
    )
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": code}}


def error_response(error: InferError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if isinstance(error, RateLimited):
        headers["retry-after"] = str(error.retry_after)
    if isinstance(error, Unauthenticated):
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(error_body(error), status_code=error.status, headers=headers)
