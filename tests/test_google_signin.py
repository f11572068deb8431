"""Google sign-in end to end against a real OpenID provider on loopback (tests/oidc_provider)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import TEST_ENCRYPTION_KEYS, http_client, started
from dashboard import PASSWORD, Dashboard
from oidc_provider import Person, Provider
from pydantic import SecretStr
from sqlmodel import select
from starlette.types import ASGIApp

from infer.config import Settings
from infer.db import Database
from infer.models import AuditLog, User
from infer.simulator.serving import serve_in_thread
from infer.web.google import FAILED, FLOW_COOKIE, FlowCookie

CLIENT_ID = "infer-test-client"
CLIENT_SECRET = "test-client-secret"
ME = "{ me { id email googleLinked } }"


@pytest.fixture
def provider() -> Iterator[Provider]:
    served = Provider(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    with serve_in_thread(served.app) as url:
        served.url = url
        yield served


@pytest.fixture
def settings(settings: Settings, provider: Provider) -> Settings:
    return settings.model_copy(
        update={
            "google_client_id": CLIENT_ID,
            "google_client_secret": SecretStr(CLIENT_SECRET),
            "google_discovery_url": f"{provider.url}/.well-known/openid-configuration",
        }
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database.from_url(settings.database_url)
    yield database
    await database.dispose()


async def start(http: httpx.AsyncClient, next_: str = "/") -> httpx.Response:
    started = await http.get("/auth/google/login", params={"next": next_})
    assert started.status_code == 303, started.text
    return started


async def authorize(provider: Provider, started: httpx.Response, person: Person) -> str:
    """The browser at the provider, who approves as `person`: the callback's path and query."""
    provider.approve(person)
    # A redirect, or (linking, after a form) a page that refreshes to the provider.
    url = started.headers.get("location") or started.headers["refresh"].partition("url=")[2]
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(url)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    return f"{back.path}?{back.query}"


async def sign_in(
    http: httpx.AsyncClient, provider: Provider, person: Person, next_: str = "/"
) -> httpx.Response:
    callback = await authorize(provider, await start(http, next_), person)
    return await http.get(callback)


async def me(http: httpx.AsyncClient) -> dict[str, object] | None:
    body = (await http.post("/graphql", json={"query": ME})).json()
    return body["data"]["me"] if body.get("data") else None


async def accounts(db: Database) -> list[tuple[str, str | None]]:
    async with db.session() as session:
        rows = await session.exec(select(User.email, User.google_subject).order_by(User.email))
        return [(email, subject) for email, subject in rows.all()]


async def log_out(http: httpx.AsyncClient) -> None:
    dashboard = Dashboard(http)
    await dashboard.get("/")
    assert (await dashboard.post("/logout")).status == 303


def ada(**how: object) -> Person:
    return Person(sub="google-ada", email="ada@example.com", **how)


def refused(response: httpx.Response, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert "set-cookie" not in response.headers or "infer_session=" not in str(
        response.headers.get_list("set-cookie")
    )
    assert "<h1>" in response.text  # a page a person can read


async def test_first_sign_in_creates_an_account_and_a_working_session(
    client: httpx.AsyncClient, provider: Provider, db: Database
) -> None:
    started = await start(client, "/usage")
    asked = parse_qs(urlsplit(started.headers["location"]).query)
    assert asked["code_challenge_method"] == ["S256"]
    assert all(asked[name][0] for name in ("nonce", "state", "code_challenge"))
    assert asked["redirect_uri"] == ["http://127.0.0.1:8000/auth/google/callback"]
    landed = await client.get(await authorize(provider, started, ada()))
    assert landed.status_code == 303
    assert landed.headers["location"] == "/usage"
    user = await me(client)
    assert user is not None
    assert (user["email"], user["googleLinked"]) == ("ada@example.com", True)
    overview = await client.get("/")
    assert overview.status_code == 200
    assert "ada@example.com" in overview.text
    assert await accounts(db) == [("ada@example.com", "google-ada")]
    async with db.session() as session:
        actions = (await session.exec(select(AuditLog.action))).all()
    assert {"user.signed_up", "user.logged_in"} <= set(actions)
    await log_out(client)
    assert await me(client) is None
    assert (await client.get("/")).status_code == 303


async def test_an_account_without_a_password_is_told_to_use_google(
    client: httpx.AsyncClient, provider: Provider
) -> None:
    await sign_in(client, provider, ada())
    await log_out(client)
    page = await Dashboard(client).post(
        "/login", {"email": "ada@example.com", "password": PASSWORD}
    )
    assert page.status == 422
    assert "Continue with Google" in page


async def test_a_verified_email_links_the_password_account_and_the_subject_keeps_it(
    client: httpx.AsyncClient, app: ASGIApp, provider: Provider, db: Database
) -> None:
    await Dashboard(client).sign_up("ada@example.com")
    password_user = await me(client)
    assert password_user is not None
    assert password_user["googleLinked"] is False
    async with http_client(app) as browser:
        assert (await sign_in(browser, provider, ada())).status_code == 303
        assert (await me(browser) or {})["id"] == password_user["id"]
    # The address changes at Google: the subject still opens the same account.
    async with http_client(app) as browser:
        moved = Person(sub="google-ada", email="ada@new.example")
        assert (await sign_in(browser, provider, moved)).status_code == 303
        assert (await me(browser) or {})["id"] == password_user["id"]
    # Another Google account that claims the same address does not get in.
    async with http_client(app) as browser:
        refused(await sign_in(browser, provider, Person(sub="other", email="ada@example.com")), 409)
        assert await me(browser) is None
    assert await accounts(db) == [("ada@example.com", "google-ada")]


async def test_an_unverified_email_is_refused_and_says_why(
    client: httpx.AsyncClient, app: ASGIApp, provider: Provider, db: Database
) -> None:
    await Dashboard(client).sign_up("ada@example.com")
    async with http_client(app) as browser:
        answer = await sign_in(browser, provider, ada(email_verified=False))
        refused(answer, 403)
        assert "has not verified the email address ada@example.com" in answer.text
        assert await me(browser) is None
    assert await accounts(db) == [("ada@example.com", None)]


@pytest.mark.parametrize(
    "misbehaviour",
    [
        {"audience": "another-client"},
        {"issuer": "https://impostor.example"},
        {"lifetime": -3600},
        {"forged": True},
        {"nonce": "not-the-one-asked-for"},
    ],
    ids=["audience", "issuer", "expired", "signature", "nonce"],
)
async def test_a_bad_id_token_opens_no_session(
    client: httpx.AsyncClient,
    provider: Provider,
    db: Database,
    misbehaviour: dict[str, object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="infer.web.google"):
        answer = await sign_in(client, provider, ada(**misbehaviour))
    refused(answer)
    assert FAILED.split(":")[0] in answer.text
    assert "google sign-in refused" in caplog.text
    assert await me(client) is None
    assert await accounts(db) == []


async def test_google_spells_its_issuer_two_ways_and_both_are_accepted(
    client: httpx.AsyncClient, provider: Provider
) -> None:
    provider.discovery_issuer = "https://accounts.google.com"
    assert (await sign_in(client, provider, ada(issuer="accounts.google.com"))).status_code == 303
    assert (await me(client) or {})["googleLinked"] is True


async def test_a_denied_authorization_is_a_readable_refusal(
    client: httpx.AsyncClient, provider: Provider, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="infer.web.google"):
        answer = await sign_in(client, provider, ada(error="access_denied"))
    refused(answer)
    assert "You cancelled signing in with Google" in answer.text
    assert "access_denied" in caplog.text
    assert await accounts(db) == []


async def test_a_callback_with_a_missing_or_other_state_is_refused(
    client: httpx.AsyncClient, app: ASGIApp, provider: Provider, db: Database
) -> None:
    callback = await authorize(provider, await start(client), ada())
    code = parse_qs(urlsplit(callback).query)["code"][0]
    refused(await client.get(f"/auth/google/callback?code={code}"))
    callback = await authorize(provider, await start(client), ada())
    code = parse_qs(urlsplit(callback).query)["code"][0]
    refused(await client.get(f"/auth/google/callback?code={code}&state=guessed"))
    # The right state in another browser (no flow cookie there): refused too.
    callback = await authorize(provider, await start(client), ada())
    async with http_client(app) as other:
        refused(await other.get(callback))
    assert await me(client) is None
    assert await accounts(db) == []


async def test_an_expired_state_is_refused(
    client: httpx.AsyncClient, provider: Provider, settings: Settings, db: Database
) -> None:
    callback = await authorize(provider, await start(client), ada())
    flows = FlowCookie(settings.secret("secret_key"))
    flow = flows.open(client.cookies[FLOW_COOKIE], now=time.time())
    assert flow
    client.cookies.set(
        FLOW_COOKIE, flows.seal(flow, now=time.time() - 601), "127.0.0.1", "/auth/google"
    )
    refused(await client.get(callback))
    assert await accounts(db) == []


async def test_a_replayed_callback_is_refused_even_with_its_cookie(
    client: httpx.AsyncClient, provider: Provider, db: Database
) -> None:
    callback = await authorize(provider, await start(client), ada())
    kept = client.cookies[FLOW_COOKIE]
    assert (await client.get(callback)).status_code == 303
    await log_out(client)
    client.cookies.set(FLOW_COOKIE, kept, "127.0.0.1", "/auth/google")
    refused(await client.get(callback))
    assert await me(client) is None


async def test_a_replayed_code_is_refused_by_the_provider(
    client: httpx.AsyncClient, provider: Provider
) -> None:
    first = await authorize(provider, await start(client), ada())
    assert (await client.get(first)).status_code == 303
    await log_out(client)
    old_code = parse_qs(urlsplit(first).query)["code"][0]
    second = await authorize(provider, await start(client), ada())
    state = parse_qs(urlsplit(second).query)["state"][0]
    refused(await client.get(f"/auth/google/callback?code={old_code}&state={state}"))
    assert provider.refusals == ["code unknown or already used"]
    assert await me(client) is None


async def test_a_code_from_another_flow_fails_pkce_at_the_provider(
    client: httpx.AsyncClient, app: ASGIApp, provider: Provider, db: Database
) -> None:
    victims = await authorize(provider, await start(client), ada())
    async with http_client(app) as attacker:
        own = await authorize(provider, await start(attacker), Person("mallory", "m@example.com"))
        state = parse_qs(urlsplit(own).query)["state"][0]
        code = parse_qs(urlsplit(victims).query)["code"][0]
        refused(await attacker.get(f"/auth/google/callback?code={code}&state={state}"))
        assert await me(attacker) is None
    assert provider.refusals == ["PKCE verifier does not match"]
    assert await accounts(db) == []


async def test_a_provider_that_is_down_is_a_readable_refusal(
    client: httpx.AsyncClient, settings: Settings, provider: Provider, db: Database
) -> None:
    provider.token_status = 503
    answer = await sign_in(client, provider, ada())
    refused(answer, 502)
    assert "Google could not be reached" in answer.text
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/.well-known/openid-configuration"
    down = settings.model_copy(update={"google_discovery_url": closed})
    async with started(down) as (app, _), http_client(app) as browser:
        answer = await browser.get("/auth/google/login")
        refused(answer, 502)
        assert "Google could not be reached" in answer.text
    assert await accounts(db) == []


async def test_next_off_this_site_lands_on_the_home_page(
    client: httpx.AsyncClient, provider: Provider
) -> None:
    landed = await sign_in(client, provider, ada(), next_="https://evil.example/")
    assert landed.headers["location"] == "/"
    landed = await sign_in(client, provider, ada(), next_="//evil.example/x")
    assert landed.headers["location"] == "/"


async def test_the_login_page_offers_google_only_when_configured(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    assert "Continue with Google" in (await client.get("/login")).text
    off = settings.model_copy(update={"google_client_id": None})
    async with started(off) as (app, _), http_client(app) as browser:
        assert "Continue with Google" not in (await browser.get("/login")).text
        assert (await browser.get("/auth/google/login")).status_code == 404
        assert (await browser.get("/auth/google/callback?code=x&state=y")).status_code == 404
        dashboard = Dashboard(browser)
        await dashboard.sign_up("ada@example.com")
        assert (await dashboard.post("/auth/google/link")).status == 404


async def test_a_signed_in_password_account_links_google(
    client: httpx.AsyncClient, app: ASGIApp, provider: Provider, db: Database
) -> None:
    dashboard = Dashboard(client)
    await dashboard.sign_up("ada@example.com")
    assert "Link Google account" in await dashboard.get("/account")
    started = (await dashboard.post("/auth/google/link")).response
    assert started.status_code == 200
    assert "Continue to Google" in started.text
    linked = await client.get(await authorize(provider, started, Person("g-ada", "a@gmail.com")))
    assert linked.headers["location"] == "/account?done=google"
    assert (await me(client) or {})["googleLinked"] is True
    page = await dashboard.get("/account?done=google")
    assert "Google account linked" in page
    assert "Linked: you can sign in with Google." in page
    # Google now signs in to this account, from another browser.
    async with http_client(app) as browser:
        await sign_in(browser, provider, Person("g-ada", "a@gmail.com"))
        assert (await me(browser) or {})["email"] == "ada@example.com"
    # A second account cannot take the same Google account.
    async with http_client(app) as browser:
        other = Dashboard(browser)
        await other.sign_up("bob@example.com")
        again = (await other.post("/auth/google/link")).response
        refused(await browser.get(await authorize(provider, again, Person("g-ada", "x@y.z"))), 409)
    assert await accounts(db) == [("ada@example.com", "g-ada"), ("bob@example.com", None)]


async def test_linking_needs_the_csrf_token(client: httpx.AsyncClient) -> None:
    await Dashboard(client).sign_up("ada@example.com")
    answer = await client.post("/auth/google/link", data={})
    assert answer.status_code == 403
    assert "location" not in answer.headers


async def test_a_new_account_needs_a_verified_email_too(
    client: httpx.AsyncClient, provider: Provider, db: Database
) -> None:
    refused(await sign_in(client, provider, ada(email_verified=False)), 403)
    assert await me(client) is None
    assert await accounts(db) == []


def test_production_refuses_a_client_id_without_its_secret() -> None:
    production = {
        "env": "production",
        "secret_key": SecretStr("s" * 40),
        "lookup_key": SecretStr("l" * 40),
        "encryption_keys": SecretStr(TEST_ENCRYPTION_KEYS),
        "google_client_id": CLIENT_ID,
    }
    with pytest.raises(ValueError, match="INFER_GOOGLE_CLIENT_SECRET must be set"):
        Settings(**production)  # type: ignore[arg-type]
    assert Settings(**production, google_client_secret=SecretStr("x")).google_enabled  # type: ignore[arg-type]
