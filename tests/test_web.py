"""The dashboard's edge: sign-up and log-in forms, CSRF, pages or blocks, escaping."""

from __future__ import annotations

import httpx
import pytest
from dashboard import PASSWORD, Dashboard

from infer.web.edge import safe_next


@pytest.fixture
def dashboard(client: httpx.AsyncClient) -> Dashboard:
    return Dashboard(client)


async def test_sign_up_lands_on_the_overview_with_the_header(dashboard: Dashboard) -> None:
    page = await dashboard.sign_up("ada@example.com")
    assert page.response.headers["location"] == "/"
    overview = await dashboard.get("/")
    assert overview.status == 200
    assert "Overview" in overview
    assert 'title="ada@example.com"' in overview.html
    assert "$0.00" in overview
    assert overview.response.headers["vary"].startswith("HX-Request")


async def test_anonymous_pages_send_to_log_in_and_back(dashboard: Dashboard) -> None:
    page = await dashboard.get("/keys?x=1")
    assert page.status == 303
    assert page.response.headers["location"] == "/login?next=%2Fkeys%3Fx%3D1"


async def test_a_wrong_password_is_shown_in_the_form_block(dashboard: Dashboard) -> None:
    await dashboard.sign_up("ada@example.com")
    await dashboard.post("/logout")
    await dashboard.get("/login")
    page = await dashboard.post(
        "/login", {"email": "ada@example.com", "password": "wrong one, long enough"}, htmx=True
    )
    assert page.status == 422
    assert "incorrect email or password" in page
    assert page.html.lstrip().startswith("<form")  # only the block, not the page


async def test_log_in_follows_next_only_on_this_site(dashboard: Dashboard) -> None:
    await dashboard.sign_up("ada@example.com")
    await dashboard.post("/logout")
    for target, expected in [("/usage?days=7", "/usage?days=7"), ("//evil.test/x", "/")]:
        await dashboard.get("/login")
        page = await dashboard.post(
            "/login", {"email": "ada@example.com", "password": PASSWORD, "next": target}
        )
        assert page.response.headers["location"] == expected
        await dashboard.post("/logout")


@pytest.mark.parametrize(
    "target",
    ["https://evil.test", "//evil.test", "/\\evil.test", "javascript:alert(1)", "/\x00x", ""],
)
def test_next_off_this_site_is_the_home_page(target: str) -> None:
    assert safe_next(target) == "/"


async def test_a_form_without_the_csrf_token_changes_nothing(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    await dashboard.sign_up("ada@example.com")
    page = await client.post("/logout", data={})
    assert page.status_code == 403
    assert "another site" in page.text
    assert (await dashboard.get("/")).status == 200  # still signed in


async def test_a_form_from_another_site_is_refused_even_with_a_token(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    await dashboard.sign_up("ada@example.com")
    await dashboard.get("/")
    for headers in ({"Origin": "https://evil.test"}, {"Sec-Fetch-Site": "cross-site"}):
        page = await client.post("/logout", data={"csrf_token": dashboard.token}, headers=headers)
        assert page.status_code == 403
    assert (await dashboard.get("/")).status == 200


async def test_htmx_failures_go_to_the_alert_area(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    await dashboard.get("/login")
    page = await client.post(
        "/logout", headers={"HX-Request": "true", "X-CSRF-Token": "forged" * 8}
    )
    assert page.status_code == 403
    assert page.headers["hx-retarget"] == "#alerts"
    assert "<html" not in page.text


async def test_log_out_ends_the_session(dashboard: Dashboard) -> None:
    await dashboard.sign_up("ada@example.com")
    await dashboard.get("/")
    page = await dashboard.post("/logout")
    assert page.response.headers["location"] == "/login"
    assert (await dashboard.get("/")).response.headers["location"] == "/marketplace"


async def test_pages_forbid_inline_script_and_other_origins(dashboard: Dashboard) -> None:
    page = await dashboard.get("/login")
    csp = page.response.headers["content-security-policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert "<script>" not in page.html
    assert " style=" not in page.html


async def test_a_sign_up_error_names_the_field(dashboard: Dashboard) -> None:
    await dashboard.get("/signup")
    page = await dashboard.post("/signup", {"email": "not-an-email", "password": "short"})
    assert page.status == 422
    assert 'aria-invalid="true"' in page.html


async def test_a_browser_gets_a_page_for_an_unknown_address(client: httpx.AsyncClient) -> None:
    page = await client.get("/no/such/page", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert "There is no page at this address." in page.text
    assert "<html" in page.text
    api = await client.get("/api/v1/nope", headers={"Accept": "text/html"})
    assert api.json()["error"]["code"] == "unknown_url"


async def test_the_log_in_page_says_when_a_session_has_ended(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    assert "ended" not in (await dashboard.get("/usage")).response.headers["location"]
    client.cookies.set("infer_session", "a.session.that.ended")
    page = await dashboard.get("/usage")
    assert page.response.headers["location"] == "/login?next=%2Fusage&ended=1"
    assert "Your session has ended" in await dashboard.get(page.response.headers["location"])
