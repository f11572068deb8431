"""An account made through Google sets its first password on the account page."""

from __future__ import annotations

import httpx
from conftest import http_client
from dashboard import PASSWORD, Dashboard, Page
from starlette.types import ASGIApp

from infer.accounts import google
from infer.audit import ClientInfo
from infer.authentication import SESSION_COOKIE
from infer.resources import Resources

NEW_PASSWORD = "a brand new passphrase 42"
ME = "{ me { email hasPassword googleLinked } }"
SET = "mutation($p: String!) { setPassword(newPassword: $p) { email hasPassword } }"
CREATE_KEY = 'mutation { createApiKey(name: "ci") { secret } }'


async def google_session(resources: Resources, http: httpx.AsyncClient) -> None:
    """Signs Ada in through Google (a first sign-in makes her account, with no password)."""
    identity = google.GoogleIdentity(
        subject="google-ada", email="ada@example.com", email_verified=True
    )
    logged_in = await google.sign_in(
        resources.db,
        identity=identity,
        client=ClientInfo(ip="203.0.113.7", user_agent="test"),
        signer=resources.signer,
        session_ttl=resources.login_policy.session_ttl,
    )
    http.cookies.set(SESSION_COOKIE, logged_in.token)


async def graphql(http: httpx.AsyncClient, query: str, **variables: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {variables.pop('key')}"} if "key" in variables else {}
    body = (
        await http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    ).json()
    assert isinstance(body, dict)
    return body


def code(body: dict[str, object]) -> str:
    return body["errors"][0]["extensions"]["code"]  # type: ignore[index, no-any-return]


async def has_password(http: httpx.AsyncClient) -> bool:
    return (await graphql(http, ME))["data"]["me"]["hasPassword"]  # type: ignore[index, no-any-return]


async def log_in(app: ASGIApp, password: str) -> Page:
    """Logs in at /login from a fresh browser."""
    async with http_client(app) as http:
        dashboard = Dashboard(http)
        await dashboard.get("/login")
        return await dashboard.post("/login", {"email": "ada@example.com", "password": password})


async def set_password(dashboard: Dashboard, new: str, repeat: str, htmx: bool = False) -> Page:
    fields = {"new_password": new, "repeat_password": repeat}
    return await dashboard.post("/account/password/set", fields, htmx=htmx)


async def test_a_google_account_sets_a_password_and_logs_in_with_it(
    client: httpx.AsyncClient, app: ASGIApp, resources: Resources
) -> None:
    await google_session(resources, client)
    assert await has_password(client) is False
    dashboard = Dashboard(client)
    page = await dashboard.get("/account")
    assert "Set a password" in page
    assert "Current password" not in page
    assert (await log_in(app, NEW_PASSWORD)).status == 422
    done = await set_password(dashboard, NEW_PASSWORD, NEW_PASSWORD)
    assert done.response.headers["location"] == "/account?done=password-set"
    assert await has_password(client) is True  # this browser stays signed in (a new cookie)
    shown = await dashboard.get("/account?done=password-set")
    assert "Password set: you can now log in with your email and this password." in shown
    assert "Change password" in shown
    assert "Current password" in shown
    assert "Password set" in shown.text.split("Activity on your account")[1]
    assert (await log_in(app, NEW_PASSWORD)).response.headers["location"] == "/"


async def test_an_account_with_a_password_is_refused_and_nothing_changes(
    client: httpx.AsyncClient, app: ASGIApp
) -> None:
    dashboard = Dashboard(client)
    await dashboard.sign_up("ada@example.com")
    assert await has_password(client) is True
    assert "Set a password" not in await dashboard.get("/account")
    body = await graphql(client, SET, p=NEW_PASSWORD)
    assert code(body) == "CONFLICT"
    assert "change it with your current one" in str(body["errors"])
    page = await set_password(dashboard, NEW_PASSWORD, NEW_PASSWORD, htmx=True)
    assert page.status == 422
    assert "this account has a password" in page
    assert (await log_in(app, NEW_PASSWORD)).status == 422
    assert (await log_in(app, PASSWORD)).status == 303


async def test_an_api_key_cannot_set_the_password(
    client: httpx.AsyncClient, app: ASGIApp, resources: Resources
) -> None:
    await google_session(resources, client)
    secret = (await graphql(client, CREATE_KEY))["data"]["createApiKey"]["secret"]  # type: ignore[index]
    async with http_client(app) as script:
        body = await graphql(script, SET, p=NEW_PASSWORD, key=str(secret))
        assert code(body) == "FORBIDDEN"
        assert "not with an API key" in str(body["errors"])
        assert (await graphql(script, ME, key=str(secret)))["data"]["me"]["hasPassword"] is False  # type: ignore[index]
    assert (await log_in(app, NEW_PASSWORD)).status == 422


async def test_a_weak_or_mismatched_password_is_an_inline_error(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    await google_session(resources, client)
    dashboard = Dashboard(client)
    await dashboard.get("/account")
    short = await set_password(dashboard, "short", "short", htmx=True)
    assert short.status == 422
    assert short.html.lstrip().startswith('<section id="password"')  # the block alone
    assert "password must be at least" in short
    assert 'id="f-new_password-error"' in short.html
    assert "Set a password" in short
    differ = await set_password(dashboard, NEW_PASSWORD, NEW_PASSWORD + "x")
    assert differ.status == 422
    assert "<html" in differ.html  # without JavaScript: the whole page
    assert "the two new passwords are not the same" in differ
    assert await has_password(client) is False


async def test_setting_the_password_ends_the_other_sessions(
    client: httpx.AsyncClient, app: ASGIApp, resources: Resources
) -> None:
    await google_session(resources, client)
    async with http_client(app) as phone:
        await google_session(resources, phone)
        assert (await graphql(phone, ME))["data"]["me"]["email"] == "ada@example.com"  # type: ignore[index]
        dashboard = Dashboard(client)
        await dashboard.get("/account")
        assert (await set_password(dashboard, NEW_PASSWORD, NEW_PASSWORD)).status == 303
        assert code(await graphql(phone, ME)) == "UNAUTHENTICATED"
        assert (await phone.get("/account")).headers["location"].startswith("/login")
    assert (await graphql(client, ME))["data"]["me"]["email"] == "ada@example.com"  # type: ignore[index]
