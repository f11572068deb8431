"""Process logging: readable lines or JSON lines, each carrying the request it belongs to.

`RequestIds` (ASGI middleware) gives every HTTP request an id, sent back as X-Request-ID
and kept in a context variable while the request runs, so every record logged on its
behalf names it. API keys and bearer tokens are masked in every record, whatever logged it.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# An API key (inf_ and 49 base62 characters) or any bearer credential.
_SECRETS = re.compile(r"inf_[0-9A-Za-z]{20,}|(?i:bearer)\s+[^\s\"',;]+")
_MASK = "[redacted]"


def request_id_of(scope: Scope) -> str:
    """The id RequestIds gave this request (a new one outside the middleware, as in tests)."""
    state = scope.get("state")
    found = state.get("request_id") if isinstance(state, dict) else None
    return found if isinstance(found, str) else uuid.uuid4().hex


class RequestIds:
    """Gives each HTTP request an id: in `request.state`, the X-Request-ID header and logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    message = {**message, "headers": [*headers, header]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class Redacting(logging.Filter):
    """Masks API keys and bearer tokens in the message and its arguments, and tags the
    record with the current request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _SECRETS.sub(_MASK, message)
        if masked != message:
            record.msg, record.args = masked, None
        record.request_id = REQUEST_ID.get()
        return True


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            entry["exception"] = _SECRETS.sub(_MASK, self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class TextLines(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        return _SECRETS.sub(_MASK, super().formatException(ei))


def configure_logging(*, log_format: str, level: str = "info") -> None:
    """Send every logger (uvicorn's too) to one stderr handler in the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if log_format == "json" else TextLines())
    handler.addFilter(Redacting())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level in ("debug", "trace") else level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
