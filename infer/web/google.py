"""Sign in with Google (OpenID Connect, code flow with state, nonce and PKCE), and linking.

authlib's Starlette client does the protocol; what it keeps between the redirect and the
callback (state, nonce, PKCE verifier) lives in a signed, HttpOnly cookie of this flow
alone that expires after FLOW_SECONDS, and each state is accepted once (counted in the
rate limiter's store, shared through Redis when there is one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client._compat import httpx2
from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App
from joserfc.errors import JoseError
from starlette.responses import Response
from starlette.routing import Route

from infer.accounts import google as accounts
from infer.authentication import client_info
from infer.config import Settings
from infer.errors import InferError
from infer.schema.user import set_session_cookie
from infer.web.edge import Web, public_view, safe_next

log = logging.getLogger(__name__)

CALLBACK = "/auth/google/callback"
FLOW_COOKIE = "infer_google_flow"
FLOW_SECONDS = 600
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
# One use per state; the window outlives the flow cookie, so a state can't come back.
STATE_ONCE = "1/20 minutes"

CANCELLED = "You cancelled signing in with Google. Nothing was changed."
FAILED = (
    "Signing in with Google did not complete: the answer was not valid for this browser, "
    "or it is too old. Start again from the log-in page."
)
UNREACHABLE = "Google could not be reached just now. Try again in a moment."
# authlib sends with httpx2 where installed, else httpx: either one's errors mean "unreachable".
HTTP_ERRORS = (httpx.HTTPError, httpx2.HTTPError)
RELINK = "Start linking Google again from your account page, signed in."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FlowCookie:
    """A small JSON value signed with a key derived from INFER_SECRET_KEY, with an expiry."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.digest(secret.encode(), b"infer google sign-in flow", "sha256")

    def seal(self, value: dict[str, Any], *, now: float) -> str:
        body = _b64(json.dumps({"exp": now + FLOW_SECONDS, "v": value}).encode())
        return f"{body}.{_b64(self._mac(body))}"

    def open(self, text: str | None, *, now: float) -> dict[str, Any]:
        """The value, or {} when missing, forged or expired."""
        body, _, mac = (text or "").partition(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(body)):
                return {}
            sealed = json.loads(_unb64(body))
        except ValueError:
            return {}
        fresh = isinstance(sealed, dict) and isinstance(sealed.get("v"), dict)
        return sealed["v"] if fresh and float(sealed.get("exp", 0)) > now else {}

    def _mac(self, body: str) -> bytes:
        return hmac.digest(self._key, body.encode(), hashlib.sha256)


def _client(web: Web) -> StarletteOAuth2App:
    """The app's OpenID client, made once: it keeps the provider's metadata and keys."""
    state = web.request.app.state
    if getattr(state, "google", None) is None:
        settings = web.resources.settings
        secret = settings.google_client_secret
        oauth = OAuth()
        state.google = oauth.register(
            "google",
            client_id=settings.google_client_id,
            client_secret=secret.get_secret_value() if secret else None,
            server_metadata_url=settings.google_discovery_url,
            client_kwargs={"scope": "openid email", "code_challenge_method": "S256", "timeout": 10},
        )
    client: StarletteOAuth2App = state.google
    return client


def _cookie(web: Web, value: str | None) -> None:
    settings: Settings = web.resources.settings
    response = Response()
    if value is None:
        response.delete_cookie(FLOW_COOKIE, path="/auth/google")
    else:
        response.set_cookie(
            FLOW_COOKIE,
            value,
            max_age=FLOW_SECONDS,
            path="/auth/google",
            httponly=True,
            samesite="lax",  # sent on the top-level navigation back from Google
            secure=settings.secure_cookies,
        )
    web.cookies += [(n, v) for n, v in response.raw_headers if n == b"set-cookie"]


async def _start(web: Web, **flow: Any) -> Response:
    web.request.scope["session"] = {}
    redirect_uri = web.resources.settings.public_url + CALLBACK
    try:
        started = await _client(web).authorize_redirect(web.request, redirect_uri)
    except (AuthlibBaseError, JoseError, *HTTP_ERRORS, ValueError, KeyError) as exc:
        log.warning("google sign-in: provider unusable at start (%s)", type(exc).__name__)
        return await web.failure(502, UNREACHABLE)
    flow["session"] = web.request.scope["session"]
    flows = FlowCookie(web.resources.settings.secret("secret_key"))
    _cookie(web, flows.seal(flow, now=time.time()))
    url = started.headers["location"]
    if web.request.method == "GET":
        return web.redirect(url)
    # The pages' CSP (form-action 'self') stops a form's redirect to another site: a page
    # answers the form and sends the browser on (Refresh header, or its link without it).
    page = await web.page("google_continue.html", url=url)
    page.headers["refresh"] = f"0; url={url}"
    return page


async def log_in(web: Web) -> Response:
    if not web.resources.settings.google_enabled:
        return await web.failure(404, "There is no such page.")
    return await _start(web, purpose="login", next=safe_next(web.request.query_params.get("next")))


async def start_link(web: Web) -> Response:
    if not web.resources.settings.google_enabled:
        return await web.failure(404, "There is no such page.")
    if web.principal is None:
        return web.to_log_in()
    return await _start(web, purpose="link", user=str(web.principal.user_id))


async def _identity(web: Web, flow: dict[str, Any]) -> accounts.GoogleIdentity | str:
    """The person the provider vouches for, or why not (for the log; never a token)."""
    params = web.request.query_params
    state = params.get("state") or ""
    session: dict[str, Any] = flow.get("session") or {}
    if params.get("error"):
        return f"provider error {params['error'][:40]!r}"
    if not state or f"_state_google_{state}" not in session:
        return "state missing, mismatched or expired"
    if not await web.resources.limiter.hit(STATE_ONCE, "google-state", state):
        return "state reused"
    web.request.scope["session"] = session
    client = _client(web)
    try:
        issuer = str((await client.load_server_metadata())["issuer"])
        issuers = list(GOOGLE_ISSUERS) if issuer in GOOGLE_ISSUERS else [issuer]
        options = {"iss": {"essential": True, "values": issuers}, "sub": {"essential": True}}
        token = await client.authorize_access_token(web.request, claims_options=options)
        claims = token["userinfo"]
    except OAuthError as exc:
        return f"{type(exc).__name__} {exc.error}"
    except (AuthlibBaseError, JoseError, ValueError, KeyError, TypeError) as exc:
        return f"{type(exc).__name__} {exc}"[:200]
    except HTTP_ERRORS as exc:
        return f"provider unreachable ({type(exc).__name__})"
    return accounts.GoogleIdentity(
        subject=str(claims["sub"]),
        email=str(claims.get("email") or ""),
        email_verified=claims.get("email_verified") in (True, "true"),
    )


async def callback(web: Web) -> Response:
    settings = web.resources.settings
    if not settings.google_enabled:
        return await web.failure(404, "There is no such page.")
    flow = FlowCookie(settings.secret("secret_key")).open(
        web.request.cookies.get(FLOW_COOKIE), now=time.time()
    )
    _cookie(web, None)  # one callback per flow, whatever happens
    identity = await _identity(web, flow)
    if isinstance(identity, str):
        log.warning("google sign-in refused: %s", identity)
        if identity.startswith("provider error 'access_denied'"):
            return await web.failure(400, CANCELLED)
        return await web.failure(502 if "unreachable" in identity else 400, _failed(identity))
    try:
        return await _finish(web, flow, identity)
    except InferError as error:
        log.warning("google sign-in refused: %s", error.message)
        raise


def _failed(reason: str) -> str:
    return UNREACHABLE if "unreachable" in reason else FAILED


async def _finish(web: Web, flow: dict[str, Any], identity: accounts.GoogleIdentity) -> Response:
    resources = web.resources
    client = client_info(web.request)
    if flow.get("purpose") == "link":
        if web.principal is None or str(web.principal.user_id) != flow.get("user"):
            log.warning("google link refused: not the user who started it")
            return await web.failure(403, RELINK)
        await accounts.link(resources.db, principal=web.principal, identity=identity, client=client)
        return web.redirect("/account?done=google")
    logged_in = await accounts.sign_in(
        resources.db,
        identity=identity,
        client=client,
        signer=resources.signer,
        session_ttl=resources.login_policy.session_ttl,
    )
    response = Response()
    set_session_cookie(response, resources.settings, logged_in)
    web.cookies += [(n, v) for n, v in response.raw_headers if n == b"set-cookie"]
    return web.redirect(safe_next(flow.get("next")))


routes = [
    Route("/auth/google/login", public_view(log_in), methods=["GET"]),
    Route(CALLBACK, public_view(callback), methods=["GET"]),
    Route("/auth/google/link", public_view(start_link), methods=["POST"]),
]
