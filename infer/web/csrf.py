"""CSRF for the dashboard: a double-submit token, and no unsafe request from another site.

Every page carries the token twice: in an HttpOnly, SameSite=Strict cookie, and in the
page (a hidden `csrf_token` field in each form, and `hx-headers` on `<body>` for htmx,
which sends it as `X-CSRF-Token`). An unsafe request must present both, equal. Another
site can make a browser send the cookie but can neither read it nor the page, so it
cannot present the token. Browsers also say where a request comes from (`Origin`,
`Sec-Fetch-Site`); a request that says another site is refused whatever it carries.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from infer.authentication import same_origin
from infer.config import Settings

CSRF_COOKIE = "infer_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_of(request: Request) -> tuple[str, bool]:
    """The request's token, and whether it is new (so the response must set the cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) == 43 and token.replace("-", "").replace("_", "").isalnum():
        return token, False
    return secrets.token_urlsafe(32), True


def set_token_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(
        CSRF_COOKIE,
        token,
        max_age=settings.session_ttl_seconds,
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies,
        path="/",
    )


def from_another_site(request: Request, settings: Settings) -> bool:
    if request.headers.get("sec-fetch-site", "same-origin") not in {"same-origin", "none"}:
        return True
    return not same_origin(request, settings)


async def is_forged(request: Request, settings: Settings) -> bool:
    """True for an unsafe request without this browser's token, or from another site."""
    if request.method in SAFE_METHODS:
        return False
    if from_another_site(request, settings):
        return True
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected:
        return True
    presented = request.headers.get(CSRF_HEADER)
    if presented is None:
        form = await request.form()
        field = form.get(CSRF_FIELD)
        presented = field if isinstance(field, str) else None
    return presented is None or not hmac.compare_digest(presented.encode(), expected.encode())
