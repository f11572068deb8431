"""The dashboard's edge: who is signed in, CSRF, running operations, pages or their blocks.

A dashboard view is `async def v(web: Web) -> Response`, wrapped by `view()`: it runs
named operations as the signed-in user (`web.run`) and renders a page, or for htmx only
the block that is swapped (`web.page`). Failures become pages (or, for htmx, a message
swapped into the page's alert area) in one place, here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from infer.accounts.principal import Principal
from infer.authentication import SESSION_COOKIE, session_principal
from infer.errors import InferError
from infer.outages import database_unavailable, unavailable
from infer.resources import Resources
from infer.schema.context import request_context
from infer.web.csrf import is_forged, set_token_cookie, token_of
from infer.web.operations import OperationFailed, Operations
from infer.web.templates import Templates

log = logging.getLogger(__name__)

# What a page answers for each of the API's error codes; the rest are 400.
STATUS_OF = {
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "BAD_USER_INPUT": 422,
    "CONFLICT": 409,
    "RATE_LIMITED": 429,
    "INSUFFICIENT_FUNDS": 402,
    "UNAVAILABLE": 503,
    "INTERNAL_SERVER_ERROR": 500,
}
FORGED = "This form came from another site, or its page is too old. Reload the page and try again."
UNREADABLE = "The form could not be read (malformed, or too many fields). Reload and try again."
URL_SAFE = ":/%#?=@[]!$&'()*+,;"  # what Starlette's RedirectResponse leaves unquoted
ALERTS = "#alerts"  # the element of every page where htmx requests show their failures

View = Callable[["Web"], Awaitable[Response]]


def safe_next(target: str | None, default: str = "/") -> str:
    """A path on this site to go to after signing in; anything else is the default."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 32 or c == "\\" for c in target):
        return default
    parts = urlsplit(target)
    return default if parts.scheme or parts.netloc else target


@dataclass
class Web:
    """One dashboard request: the signed-in user, the CSRF token, operations, rendering."""

    request: Request
    resources: Resources
    operations: Operations
    templates: Templates
    principal: Principal | None
    csrf_token: str
    cookies: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def open(cls, request: Request) -> Web:
        """The request, before anyone is known to be signed in; with a CSRF token."""
        resources: Resources = request.state.resources
        token, new_token = token_of(request)
        web = cls(
            request=request,
            resources=resources,
            operations=request.state.operations,
            templates=request.state.templates,
            principal=None,
            csrf_token=token,
        )
        if new_token:
            cookie = Response()
            set_token_cookie(cookie, token, resources.settings)
            web.cookies += [(n, v) for n, v in cookie.raw_headers if n == b"set-cookie"]
        return web

    @property
    def is_htmx(self) -> bool:
        return self.request.headers.get("hx-request") == "true"

    @property
    def path(self) -> str:
        return self.request.url.path

    async def run(self, operation: str, **variables: Any) -> dict[str, Any]:
        """The data of a named operation, executed as this user (OperationFailed if not)."""
        response = Response()
        context = await request_context(self.request, response, principal=self.principal)
        try:
            return await self.operations.run(operation, variables, context)
        finally:
            # The API's cookies (a session opened or ended) go out with the page.
            self.cookies += [(n, v) for n, v in response.raw_headers if n == b"set-cookie"]

    async def form(self) -> dict[str, str]:
        """The submitted fields (text ones only), each stripped of surrounding space."""
        form = await self.request.form()
        return {name: value.strip() for name, value in form.items() if isinstance(value, str)}

    async def page(
        self, template: str, *, block: str | None = None, status: int = 200, **context: Any
    ) -> Response:
        """The whole page; for an htmx request naming a block, only that block."""
        if block is not None and self.is_htmx and not self.request.headers.get("hx-boosted"):
            html = self.templates.block(template, block, self._globals(None), context)
        else:
            html = self.templates.page(template, self._globals(await self._header()), context)
        return self._finish(HTMLResponse(html, status_code=status))

    def redirect(self, url: str) -> Response:
        """Post / redirect / get; htmx follows the same redirect as a full navigation."""
        if self.is_htmx:
            url = quote(url, safe=URL_SAFE)  # a header is latin-1: encode as Location is
            headers = {"HX-Redirect": url}
            # htmx sets location.href; to this very page with a #fragment that only scrolls.
            here = urlsplit(self.request.headers.get("hx-current-url", ""))
            there = urlsplit(url)
            if there.fragment and (there.path, there.query) == (here.path, here.query):
                headers["HX-Refresh"] = "true"
            return self._finish(Response(status_code=204, headers=headers))
        return self._finish(RedirectResponse(url, status_code=303))

    async def failure(self, status: int, message: str) -> Response:
        """A failure: the error page, or for htmx the message in the page's alert area."""
        if self.is_htmx:
            context = {"message": message}
            html = self.templates.block("error.html", "alert", self._globals(None), context)
            headers = {"HX-Retarget": ALERTS, "HX-Reswap": "innerHTML"}
            return self._finish(HTMLResponse(html, status_code=status, headers=headers))
        return await self.page("error.html", status=status, message=message, status_code=status)

    def to_log_in(self) -> Response:
        """To the log-in page, and back here (or, after a form, to its page) once signed in."""
        url = self.request.url
        here = url.path + (f"?{url.query}" if url.query else "")
        if self.request.method != "GET":
            here = urlsplit(self.request.headers.get("referer", "")).path
        query = {"next": safe_next(here)}
        if SESSION_COOKIE in self.request.cookies:
            query["ended"] = "1"  # it came with a session that no longer counts
        return self.redirect("/login?" + urlencode(query))

    async def _header(self) -> dict[str, Any] | None:
        if self.principal is None:
            return None
        try:
            header: dict[str, Any] = (await self.run("Header"))["me"]
        except OperationFailed:
            return None  # the page itself says what is wrong
        return header

    def _globals(self, header: dict[str, Any] | None) -> dict[str, Any]:
        return {"web": self, "me": header, "csrf_token": self.csrf_token}

    def _finish(self, response: Response) -> Response:
        response.raw_headers += self.cookies
        response.headers["vary"] = "HX-Request, Cookie"
        response.headers["cache-control"] = "no-store"
        return response


def view(handler: View, *, signed_in: bool = True) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint for a dashboard view.

    signed_in: the view needs a user; anyone else is sent to the log-in page.
    """

    async def endpoint(request: Request) -> Response:
        web = Web.open(request)
        resources = web.resources
        try:
            if await is_forged(request, resources.settings):
                log.info("dashboard: refused %s %s (CSRF)", request.method, request.url.path)
                return await web.failure(403, FORGED)
            web.principal = await session_principal(request, resources)
            if signed_in and web.principal is None:
                return web.to_log_in()
            return await handler(web)
        except OperationFailed as failed:
            if failed.code == "UNAUTHENTICATED":
                return web.to_log_in()
            return await web.failure(STATUS_OF.get(failed.code, 400), str(failed))
        except InferError as error:
            return await web.failure(error.status, error.message)
        except HTTPException as exc:
            if exc.status_code != 400:
                raise
            return await web.failure(400, UNREADABLE)  # Starlette could not parse the body
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            outage = unavailable()
            return await web.failure(outage.status, outage.message)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def public_view(handler: View) -> Callable[[Request], Awaitable[Response]]:
    """A view anyone may see; `web.principal` is the user when signed in."""
    return view(handler, signed_in=False)


def wants_page(request: Request) -> bool:
    """A browser asking for a page (not an API client): it gets HTML errors."""
    path = request.url.path
    if path.startswith(("/api/", "/graphql", "/static/")):
        return False
    return "text/html" in request.headers.get("accept", "")


async def error_page(request: Request, status: int, message: str) -> Response:
    """An error page for a URL no view answers (404, 405), with the header as usual."""
    web = Web.open(request)
    with contextlib.suppress(InferError):  # a database outage: shown signed out
        web.principal = await session_principal(request, web.resources)
    return await web.failure(status, message)
