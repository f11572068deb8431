"""Who may use the console: this machine's browser holding the token, or the tray.

Every request must name the console's own address in `Host` (127.0.0.1:PORT or
localhost:PORT): a page of another site that rebinds its DNS name to 127.0.0.1 sends its
own name and is refused. Then it must carry the token: once in the URL (`?token=`), which
sets an HttpOnly, SameSite=Strict cookie and redirects to the URL without it; afterwards
in that cookie, or as `Authorization: Bearer <token>` (the tray). An unsafe request with
the cookie must also come from the console's own origin and carry the CSRF token that
only the console's pages hold (`require_csrf`); a Bearer request cannot be forged by a
browser, so it needs neither.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from html import escape
from typing import Literal
from urllib.parse import urlencode

from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from infer.web.csrf import CSRF_FIELD, CSRF_HEADER, SAFE_METHODS

Via = Literal["cookie", "bearer"]
HOSTS = ("127.0.0.1", "localhost")
DENIED = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>No access · INFER node console</title>
<link rel="stylesheet" href="/static/pico.min.css"><link rel="stylesheet" href="/static/app.css">
</head><body><main class="container"><h1>No access</h1><p>{reason}</p></main></body></html>
"""


@dataclass(frozen=True, slots=True)
class Access:
    """The console's port and token; the CSRF token is derived from the token."""

    port: int
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def cookie(self) -> str:
        # Browsers share cookies across the ports of a host: one name per console.
        return f"infer_console_{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def url_with_token(self) -> str:
        return f"{self.url}?{urlencode({'token': self.token})}"

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{host}:{self.port}" for host in HOSTS)

    @property
    def csrf_token(self) -> str:
        return hmac.new(self.token.encode(), b"console csrf", hashlib.sha256).hexdigest()

    def holds_token(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.token.encode()
        )

    def host_is_ours(self, connection: HTTPConnection) -> bool:
        return connection.headers.get("host", "") in {f"{h}:{self.port}" for h in HOSTS}

    def via(self, connection: HTTPConnection) -> Via | None:
        """How the request proves it holds the token, or None if it does not."""
        authorization = connection.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and self.holds_token(credentials.strip()):
            return "bearer"
        if self.holds_token(connection.cookies.get(self.cookie)):
            return "cookie"
        return None

    def from_elsewhere(self, connection: HTTPConnection) -> bool:
        """True when the browser says the request comes from another site or origin."""
        if connection.headers.get("sec-fetch-site", "same-origin") not in {"same-origin", "none"}:
            return True
        origin = connection.headers.get("origin")
        return origin is not None and origin not in self.origins


def denied(connection: HTTPConnection, reason: str) -> Response:
    """403, as JSON for the tray's /api/ calls and as a page for a browser."""
    if connection.url.path.startswith("/api/"):
        return JSONResponse({"error": reason}, status_code=403)
    return HTMLResponse(DENIED.format(reason=escape(reason)), status_code=403)


class ConsoleGuard:
    """ASGI middleware: the Host, token and origin checks of every request."""

    def __init__(self, app: ASGIApp, *, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self.check(HTTPConnection(scope))
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def check(self, connection: HTTPConnection) -> Response | None:
        """The refusal (or the token redirect) for this request; None lets it through."""
        access = self.access
        if not access.host_is_ours(connection):
            return denied(connection, f"This console answers only at {access.url}.")
        if connection.url.path.startswith("/static/"):
            return None  # the stylesheets and scripts every INFER install ships
        presented = connection.query_params.get("token")
        if presented is not None:
            if not access.holds_token(presented):
                return denied(connection, "This link's token is wrong or out of date.")
            return self._enter(connection)
        via = access.via(connection)
        if via is None:
            return denied(
                connection,
                "Open the console with the link the agent printed (it carries a token).",
            )
        connection.scope["console.via"] = via
        unsafe = connection.scope["method"] not in SAFE_METHODS
        if unsafe and via == "cookie" and access.from_elsewhere(connection):
            return denied(connection, "A request from another site was refused.")
        return None

    def _enter(self, connection: HTTPConnection) -> Response:
        """Sets the cookie and sends the browser to the same URL without the token."""
        kept = [(k, v) for k, v in connection.query_params.multi_items() if k != "token"]
        # One leading slash: "//x" or "/\\x" would send the browser to the site x.
        path = "/" + connection.url.path.lstrip("/\\")
        response = RedirectResponse(path + (f"?{urlencode(kept)}" if kept else ""), status_code=303)
        response.set_cookie(
            self.access.cookie, self.access.token, httponly=True, samesite="strict", path="/"
        )
        response.headers["cache-control"] = "no-store"
        response.headers["referrer-policy"] = "no-referrer"
        return response


async def require_csrf(request: Request, access: Access) -> dict[str, str] | None:
    """The form of an unsafe request, or None when a cookie request lacks the CSRF token."""
    form = await request.form()
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    if request.scope.get("console.via") == "bearer":
        return fields
    presented = request.headers.get(CSRF_HEADER) or fields.get(CSRF_FIELD)
    if presented is None or not hmac.compare_digest(presented.encode(), access.csrf_token.encode()):
        return None
    return fields
