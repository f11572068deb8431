"""The account page: profile, password change, sessions and my own audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from conftest import http_client
from dashboard import PASSWORD, Dashboard, Page
from sqlmodel import select
from starlette.types import ASGIApp

from infer.db import Database
from infer.models import Node, Runtime, User
from infer.web.account import short_agent

NEW_PASSWORD = "a brand new passphrase 42"
XSS = "<script>alert(1)</script>"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
def dashboard(client: httpx.AsyncClient) -> Dashboard:
    return Dashboard(client)


@asynccontextmanager
async def browser(app: ASGIApp, agent: str) -> AsyncIterator[Dashboard]:
    """Another browser, with its own cookies and user agent."""
    async with http_client(app) as http:
        http.headers["user-agent"] = agent
        yield Dashboard(http)


async def log_in(dashboard: Dashboard, email: str, password: str = PASSWORD) -> int:
    await dashboard.get("/login")
    page = await dashboard.post("/login", {"email": email, "password": password})
    return page.status


async def change(
    dashboard: Dashboard, current: str, new: str, repeat: str, htmx: bool = False
) -> Page:
    fields = {"current_password": current, "new_password": new, "repeat_password": repeat}
    return await dashboard.post("/account/password", fields, htmx=htmx)


async def session_ids(dashboard: Dashboard) -> list[str]:
    page = await dashboard.get("/account")
    return [part.split("/end")[0] for part in page.html.split('action="/account/sessions/')[1:]]


# Profile


async def test_the_page_shows_my_email_and_sessions(dashboard: Dashboard) -> None:
    await dashboard.sign_up("ann@example.com")
    page = await dashboard.get("/account")
    assert page.status == 200
    assert "ann@example.com" in page
    assert "this browser" in page
    assert "203.0.113.7" in page
    assert page.response.headers["vary"].startswith("HX-Request")


async def test_a_display_name_is_saved_and_shown(dashboard: Dashboard) -> None:
    await dashboard.sign_up("ann@example.com")
    await dashboard.get("/account")
    page = await dashboard.post("/account/name", {"name": "Ann GPUs"})
    assert page.status == 303
    assert page.response.headers["location"] == "/account?done=name"
    shown = await dashboard.get("/account?done=name")
    assert "Display name saved." in shown
    assert 'value="Ann GPUs"' in shown.html


async def test_a_display_name_taken_is_refused_inline(dashboard: Dashboard, app: ASGIApp) -> None:
    async with browser(app, "Bob's browser") as bob:
        await bob.sign_up("bob@example.com")
        assert (await bob.post("/account/name", {"name": "Fast Tokens"})).status == 303
    await dashboard.sign_up("ann@example.com")
    await dashboard.get("/account")
    page = await dashboard.post("/account/name", {"name": "fast tokens"}, htmx=True)
    assert page.status == 422
    assert "already uses this name" in page
    assert 'aria-invalid="true"' in page.html
    assert page.html.lstrip().startswith('<section id="profile"')  # only the block
    assert 'value="Fast Tokens"' not in (await dashboard.get("/account")).html


async def test_user_supplied_text_comes_back_escaped(dashboard: Dashboard, app: ASGIApp) -> None:
    async with browser(app, FIREFOX + XSS) as other:
        await other.sign_up("ann@example.com")
        named = await other.post("/account/name", {"name": "Ann" + XSS})
        assert named.status == 422  # never a valid name; the form shows it back, escaped
        assert XSS not in named.html
        assert 'value="Ann&lt;script&gt;' in named.html
        refused = await other.post("/account/description", {"description": XSS * 40}, htmx=True)
        assert refused.status == 422
        assert XSS not in refused.html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in refused.html
    await log_in(dashboard, "ann@example.com")
    page = await dashboard.get("/account")
    assert "Firefox on Linux" in page
    assert XSS not in page.html
    assert "&lt;script&gt;" in page.html


async def test_a_providers_description_is_saved_and_shown_escaped(
    dashboard: Dashboard, db: Database
) -> None:
    await dashboard.sign_up("ann@example.com")
    async with db.transaction() as session:  # a provider page needs a node, in any state
        user = (await session.exec(select(User).where(User.email == "ann@example.com"))).one()
        session.add(
            Node(operator_id=user.id, name="box", runtime=Runtime.OLLAMA, endpoint="http://h:9")
        )
    await dashboard.get("/account")
    saved = await dashboard.post("/account/description", {"description": "Fast " + XSS})
    assert saved.response.headers["location"] == "/account?done=description"
    page = await dashboard.get("/account?done=description")
    assert "Description saved." in page
    assert f'href="/marketplace/providers/{user.id}"' in page.html
    assert "Fast &lt;script&gt;alert(1)&lt;/script&gt;</textarea>" in page.html
    assert XSS not in page.html
    assert (await dashboard.post("/account/description", {"description": ""})).status == 303
    assert "></textarea>" in (await dashboard.get("/account")).html  # cleared


# Password


async def test_changing_the_password_replaces_it(dashboard: Dashboard, app: ASGIApp) -> None:
    await dashboard.sign_up("ann@example.com")
    await dashboard.get("/account")
    page = await change(dashboard, PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
    assert page.response.headers["location"] == "/account?done=password"
    shown = await dashboard.get("/account?done=password")
    assert shown.status == 200  # this browser stays signed in with a fresh session
    assert "Password changed; your other sessions have ended" in shown
    async with browser(app, "Other") as other:
        assert await log_in(other, "ann@example.com") == 422
        assert await log_in(other, "ann@example.com", NEW_PASSWORD) == 303


async def test_a_wrong_current_password_is_refused_and_nothing_changes(
    dashboard: Dashboard, app: ASGIApp
) -> None:
    await dashboard.sign_up("ann@example.com")
    await dashboard.get("/account")
    page = await change(dashboard, "not my password at all", NEW_PASSWORD, NEW_PASSWORD, True)
    assert page.status == 422
    assert "current password is not correct" in page
    assert page.html.lstrip().startswith('<section id="password"')
    assert "<html" not in page.html
    async with browser(app, "Other") as other:
        assert await log_in(other, "ann@example.com", NEW_PASSWORD) == 422
        assert await log_in(other, "ann@example.com") == 303


async def test_new_passwords_must_match_and_be_long_enough(dashboard: Dashboard) -> None:
    await dashboard.sign_up("ann@example.com")
    await dashboard.get("/account")
    differ = await change(dashboard, PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x")
    assert differ.status == 422
    assert "<html" in differ.html  # without JavaScript, the whole page with the error
    assert "the two new passwords are not the same" in differ
    short = await change(dashboard, PASSWORD, "short", "short")
    assert short.status == 422
    assert "password must be at least" in short
    assert 'id="f-new_password-error"' in short.html


# Sessions


async def test_ending_another_session_signs_that_browser_out(
    dashboard: Dashboard, app: ASGIApp
) -> None:
    await dashboard.sign_up("ann@example.com")
    async with browser(app, "Phone Browser/2") as phone:
        assert await log_in(phone, "ann@example.com") == 303
        assert (await phone.get("/account")).status == 200
        phone_session, mine = await session_ids(dashboard)
        assert "Phone Browser/2" in await dashboard.get("/account")
        page = await dashboard.post(f"/account/sessions/{phone_session}/end", htmx=True)
        assert page.status == 200
        assert page.html.lstrip().startswith('<section id="sessions"')
        assert "Session ended" in page
        assert "Phone Browser/2" not in page
        assert (await phone.get("/account")).status == 303  # to the log-in page
    assert await session_ids(dashboard) == [mine]


async def test_ending_this_session_logs_out(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    await dashboard.sign_up("ann@example.com")
    token = client.cookies["infer_session"]
    [mine] = await session_ids(dashboard)
    page = await dashboard.post(f"/account/sessions/{mine}/end")
    assert page.status == 303
    assert page.response.headers["location"].startswith("/login")
    client.cookies.set("infer_session", token)  # a kept copy of the cookie
    assert (await dashboard.get("/account")).status == 303


async def test_another_users_session_is_not_found_and_stays(
    dashboard: Dashboard, app: ASGIApp
) -> None:
    await dashboard.sign_up("ann@example.com")
    [anns] = await session_ids(dashboard)
    async with browser(app, "Bob's browser") as bob:
        await bob.sign_up("bob@example.com")
        await bob.get("/account")
        for wrong in (anns, "not-an-id"):
            assert (await bob.post(f"/account/sessions/{wrong}/end")).status == 404
    assert await session_ids(dashboard) == [anns]


async def test_a_form_without_the_csrf_token_changes_nothing(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    await dashboard.sign_up("ann@example.com")
    [mine] = await session_ids(dashboard)
    fields = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    fields["repeat_password"] = NEW_PASSWORD
    assert (await client.post("/account/password", data=fields)).status_code == 403
    assert (await client.post(f"/account/sessions/{mine}/end")).status_code == 403
    assert (await client.post("/account/name", data={"name": "Changed"})).status_code == 403
    assert await session_ids(dashboard) == [mine]
    assert 'value="Changed"' not in (await dashboard.get("/account")).html
    await dashboard.post("/logout")
    assert await log_in(dashboard, "ann@example.com") == 303


# Audit log


async def test_the_audit_log_shows_mine_only(dashboard: Dashboard, app: ASGIApp) -> None:
    await dashboard.sign_up("ann@example.com")
    await dashboard.post("/logout")
    await log_in(dashboard, "ann@example.com")
    await dashboard.get("/account")
    await change(dashboard, PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
    async with browser(app, "Bob's browser") as bob:
        await bob.sign_up("bob@example.com")
        await bob.post("/account/name", {"name": "Bob Node Co"})
    page = await dashboard.get("/account")
    assert "Logged in" in page
    assert "Password changed" in page
    assert "Display name set" not in page


async def test_the_audit_log_pages_by_a_cursor_in_the_url(dashboard: Dashboard) -> None:
    await dashboard.sign_up("ann@example.com")
    for _ in range(11):  # each pair is a log-out and a log-in: 23 entries with the sign-up
        await dashboard.post("/logout")
        await log_in(dashboard, "ann@example.com")
    first = await dashboard.get("/account")
    assert first.html.count("<td>Logged in</td>") == 10
    link = first.html.split('href="/account?after=')[1].split("#")[0]
    older = await dashboard.get(f"/account?after={link}", htmx=True)
    assert older.status == 200
    assert older.html.lstrip().startswith('<section id="audit"')
    assert "Signed up" in older
    assert "Older" not in older
    forged = await dashboard.get("/account?after=forged")
    assert forged.status == 422


@pytest.mark.parametrize(
    ("agent", "shown"),
    [
        (FIREFOX, "Firefox on Linux"),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.5 Safari/605.1.15",
            "Safari on macOS",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/126.0 Safari/537.36 Edg/126.0",
            "Edge on Windows",
        ),
        ("python-httpx/0.28.1", "python-httpx/0.28.1"),
        (None, "Unknown browser"),
    ],
)
def test_user_agents_read_as_browser_and_system(agent: str | None, shown: str) -> None:
    assert short_agent(agent) == shown
