"""Who is calling, for every edge: an API key (Bearer) or the dashboard's session cookie.

The REST gateway takes keys only; GraphQL takes either (the cookie on same-origin JSON
POSTs); the dashboard takes the cookie on same-origin requests, with its CSRF token on
every unsafe one. They decide here, so a rule changed once holds on every edge.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from infer.accounts.principal import Principal
from infer.accounts.service import authenticate_session
from infer.audit import ClientInfo
from infer.config import Settings
from infer.errors import InferError, Unauthenticated, Unavailable
from infer.keys.scopes import require_gateway
from infer.resources import Resources

SESSION_COOKIE = "infer_session"


def client_info(request: HTTPConnection) -> ClientInfo:
    return ClientInfo(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


def own_origin(request: HTTPConnection) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def same_origin(request: HTTPConnection, settings: Settings) -> bool:
    """No Origin header, or this site's: browsers always send Origin on cross-site POSTs.

    Not the CORS origins: those may call with a Bearer key, never ride on the cookie.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin in {own_origin(request), settings.public_origin}


def bearer_credentials(request: HTTPConnection) -> str | None:
    """The key in `Authorization: Bearer …`; None without the header, "" when malformed."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return credentials.strip()


async def key_principal(request: HTTPConnection, resources: Resources) -> Principal:
    """The owner of the request's API key; Unauthenticated without a valid one."""
    credentials = bearer_credentials(request)
    if not credentials:
        raise Unauthenticated("send your API key as 'Authorization: Bearer inf_…'")
    return await resources.authenticator.authenticate(credentials)


async def gateway_principal(request: HTTPConnection, resources: Resources) -> Principal:
    """As `key_principal`, for /api/v1: the key needs the GATEWAY scope (from its cache)."""
    principal = await key_principal(request, resources)
    require_gateway(principal.scopes)
    return principal


async def session_principal(request: HTTPConnection, resources: Resources) -> Principal | None:
    """The user of the request's live session; None without one (ended, expired, forged).

    A database outage is not "signed out": Unavailable propagates, so the page says the
    service is down instead of sending a signed-in person to the log-in form.
    """
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return await authenticate_session(resources.db, token=token, signer=resources.signer)
    except Unavailable:
        raise
    except InferError:
        return None
