"""The /graphql endpoint: who is calling (Bearer key or session cookie) and CSRF rules."""

from __future__ import annotations

from typing import Any

import orjson
from cross_web import HTTPException  # what strawberry raises for transport errors
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from infer.accounts.principal import Principal
from infer.authentication import (
    SESSION_COOKIE,
    bearer_credentials,
    key_principal,
    same_origin,
    session_principal,
)
from infer.errors import Forbidden, InferError, Unavailable
from infer.resources import Resources
from infer.schema.context import Context, request_context

PRINCIPAL_KEY = "infer.principal"
# Only for the GraphiQL page, which production does not serve; every other page is strict.
GRAPHIQL_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://unpkg.com; "
    "style-src 'self' 'unsafe-inline' https://unpkg.com; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_TRANSPORT_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def graphql_error_response(error: InferError, status: int) -> JSONResponse:
    extensions: dict[str, object] = {"code": error.code}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if isinstance(error, Unavailable):
        extensions["retryAfter"] = error.retry_after
        headers["Retry-After"] = str(error.retry_after)
    body = {"errors": [{"message": error.message, "extensions": extensions}]}
    return JSONResponse(body, status_code=status, headers=headers)


def _is_json_post(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return request.method == "POST" and content_type == "application/json"


class GraphQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view, with authentication decided before the operation runs."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            scope[PRINCIPAL_KEY] = await self._authenticate(request)
            response = await self.run(request)
        except InferError as error:
            response = graphql_error_response(error, error.status)
        except HTTPException as error:
            # Strawberry's own refusals (not JSON, no query, a mutation over GET…) come as
            # plain text; here they keep the GraphQL error shape like everything else.
            code = _TRANSPORT_CODES.get(error.status_code, "BAD_REQUEST")
            body = {"errors": [{"message": error.reason, "extensions": {"code": code}}]}
            response = JSONResponse(body, status_code=error.status_code)
        await response(scope, receive, send)

    async def render_graphql_ide(self, request: Request) -> Response:
        """GraphiQL (development only) loads its scripts and styles from a CDN, inline."""
        response = await super().render_graphql_ide(request)
        response.headers["content-security-policy"] = GRAPHIQL_CSP
        return response

    def decode_json(self, data: str | bytes) -> object:
        """Strict JSON only: UTF-8, no NaN, at most 1024 levels deep; an object or a batch.

        Anything else is a 400 before any operation runs, where the standard library's
        decoder would have raised RecursionError or UnicodeDecodeError past strawberry.
        """
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, "Unable to parse request body as JSON") from exc
        if not isinstance(document, dict | list):
            raise HTTPException(400, "the request body must be a JSON object")
        return document

    async def _authenticate(self, request: Request) -> Principal | None:
        resources: Resources = request.state.resources
        if bearer_credentials(request) is not None:
            principal = await key_principal(request, resources)
            if principal.retiring:
                raise Forbidden(
                    "this API key was rotated and only works on /api/v1 until it expires;"
                    " use its replacement"
                )
            return principal
        if SESSION_COOKIE not in request.cookies:
            return None
        if not same_origin(request, resources.settings):
            raise Forbidden("cross-origin requests may not use the session cookie")
        if not _is_json_post(request):
            return None  # the cookie only counts on JSON POSTs, which forms cannot send
        return await session_principal(request, resources)

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        assert isinstance(request, Request)
        assert isinstance(response, Response)
        return await request_context(request, response, principal=request.scope.get(PRINCIPAL_KEY))

    async def get_root_value(self, request: Any) -> None:
        return None
