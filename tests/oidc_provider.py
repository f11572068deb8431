"""A small OpenID provider for tests: discovery, authorize, token (with PKCE) and JWKS.

Served on loopback like a real one (infer.simulator.serving.serve_in_thread). A test
approves the next authorization as a chosen person (`approve`), and can make the
provider misbehave in the ways a hostile or broken provider would.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

KEY_ID = "test-key"


@dataclass
class Person:
    """Who the provider says signed in, and how its next answer goes wrong (if at all)."""

    sub: str
    email: str
    email_verified: bool = True
    audience: str | None = None  # another client's id in `aud`
    issuer: str | None = None  # another `iss` than discovery's
    lifetime: int = 300  # seconds until `exp`; negative for an expired token
    nonce: str | None = None  # another nonce than the one asked for
    forged: bool = False  # signed with a key that is not in the JWKS
    error: str | None = None  # answer the authorization with ?error=…


@dataclass
class Grant:
    person: Person
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None


@dataclass
class Provider:
    client_id: str
    client_secret: str
    url: str = ""  # set once served
    discovery_issuer: str | None = None  # e.g. Google's, to test its other spelling
    token_status: int | None = None  # the token endpoint fails with this status
    next: Person | None = None
    refusals: list[str] = field(default_factory=list)
    grants: dict[str, Grant] = field(default_factory=dict)
    key: RSAKey = field(default_factory=lambda: _key())
    other_key: RSAKey = field(default_factory=lambda: _key())

    def approve(self, person: Person) -> None:
        """The next authorization signs this person in (as if they clicked Allow)."""
        self.next = person

    @property
    def issuer(self) -> str:
        return self.discovery_issuer or self.url

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery),
                Route("/authorize", self._authorize),
                Route("/token", self._token, methods=["POST"]),
                Route("/jwks", self._jwks),
            ]
        )

    async def _discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})

    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        person, self.next = self.next, None
        problem = self._authorize_problem(q.get("client_id"), q, person)
        if problem:
            self.refusals.append(problem)
            return JSONResponse({"error": problem}, status_code=400)
        assert person is not None
        back = {"state": q.get("state", "")}
        if person.error:
            back["error"] = person.error
        else:
            code = secrets.token_urlsafe(16)
            self.grants[code] = Grant(
                person, q["client_id"], q["redirect_uri"], q["code_challenge"], q.get("nonce")
            )
            back["code"] = code
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode(back)}", status_code=302)

    def _authorize_problem(self, client_id: str | None, q: Any, person: Person | None) -> str:
        if person is None:
            return "nobody approved this authorization"
        if client_id != self.client_id or q.get("response_type") != "code":
            return "unknown client or response type"
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return "PKCE S256 is required"
        if not q.get("redirect_uri") or not q.get("state") or "openid" not in q.get("scope", ""):
            return "redirect_uri, state and the openid scope are required"
        return ""

    async def _token(self, request: Request) -> Response:
        if self.token_status is not None:
            return JSONResponse({"error": "server_error"}, status_code=self.token_status)
        form = await request.form()
        client_id, secret = _client_credentials(request, form)
        grant = self.grants.pop(str(form.get("code")), None)  # a code is good once
        problem = ""
        if (client_id, secret) != (self.client_id, self.client_secret):
            problem = "client authentication failed"
        elif grant is None or form.get("grant_type") != "authorization_code":
            problem = "code unknown or already used"
        elif form.get("redirect_uri") != grant.redirect_uri or grant.client_id != client_id:
            problem = "redirect_uri does not match"
        elif _challenge(str(form.get("code_verifier", ""))) != grant.challenge:
            problem = "PKCE verifier does not match"
        if problem or grant is None:
            self.refusals.append(problem)
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": self._id_token(grant),
            }
        )

    def _id_token(self, grant: Grant) -> str:
        person, now = grant.person, int(time.time())
        claims: dict[str, Any] = {
            "iss": person.issuer or self.issuer,
            "sub": person.sub,
            "aud": person.audience or grant.client_id,
            "iat": now,
            "exp": now + person.lifetime,
            "email": person.email,
            "email_verified": person.email_verified,
        }
        if grant.nonce is not None:
            claims["nonce"] = person.nonce or grant.nonce
        key = self.other_key if person.forged else self.key
        return jwt.encode({"alg": "RS256", "kid": KEY_ID}, claims, key)


def _key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": KEY_ID, "use": "sig", "alg": "RS256"})


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _client_credentials(request: Request, form: Any) -> tuple[str, str]:
    """client_secret_basic (authlib's default) or client_secret_post."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        return client_id, secret
    return str(form.get("client_id", "")), str(form.get("client_secret", ""))
