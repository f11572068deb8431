"""The dashboard under attack: hostile input, forged requests, other people's ids."""

from __future__ import annotations

import re

import httpx
import pytest
from dashboard import PASSWORD, Dashboard
from test_gateway import REGISTER, Market, market, platform_settings

from infer.simulator import SimulatorConfig, serve_simulator_in_thread

__all__ = ["market", "platform_settings"]  # fixtures shared with test_gateway


@pytest.fixture
def dashboard(client: httpx.AsyncClient) -> Dashboard:
    return Dashboard(client)


@pytest.mark.parametrize(
    "path",
    [
        "/usage?to=9999-12-31",
        "/usage?from=0001-01-01&to=0001-01-02",
        "/usage?to=0001-01-03",
        "/usage.csv?to=9999-12-31",
        "/earnings?to=9999-12-31",
        "/earnings?to=0001-01-02",
        "/earnings?from=9999-12-31",
    ],
)
async def test_dates_at_the_ends_of_the_calendar_are_refused_beside_the_filter(
    dashboard: Dashboard, path: str
) -> None:
    await dashboard.sign_up("ada@example.com")
    page = await dashboard.get(path)
    assert page.status == 422
    assert page.response.headers["content-type"].startswith("text/html")
    assert 'aria-invalid="true"' in page.html


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("&".join(f"f{i}=1" for i in range(1200)), "application/x-www-form-urlencoded"),
        ("garbage", "multipart/form-data; boundary=zz"),
        ("garbage", "multipart/form-data"),
    ],
)
async def test_a_form_the_server_cannot_read_gets_a_page_and_changes_nothing(
    dashboard: Dashboard, client: httpx.AsyncClient, body: str, content_type: str
) -> None:
    await dashboard.sign_up("ada@example.com")
    await dashboard.get("/keys")
    response = await client.post(
        "/keys",
        content=f"name=sneaky&csrf_token={dashboard.token}&{body}",
        headers={"content-type": content_type, "accept": "text/html"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "could not be read" in response.text
    assert "sneaky" not in (await dashboard.get("/keys")).text


@pytest.mark.parametrize("htmx", [False, True])
async def test_a_next_path_beyond_latin_1_is_followed_encoded(
    dashboard: Dashboard, htmx: bool
) -> None:
    await dashboard.get("/signup")
    page = await dashboard.post(
        "/signup",
        {"email": "ada@example.com", "password": PASSWORD, "next": "/marketplace?search=中文"},
        htmx=htmx,
    )
    header = "hx-redirect" if htmx else "location"
    assert page.response.headers[header] == "/marketplace?search=%E4%B8%AD%E6%96%87"


async def test_a_model_named_with_dot_segments_links_to_its_own_page(market: Market) -> None:
    """A runtime may report `../../keys`; a browser would resolve the link to /keys."""
    name = "../../keys:latest"
    with serve_simulator_in_thread(SimulatorConfig(models=("../../keys",))) as runtime:
        variables = {
            "input": {
                "name": "n1",
                "runtime": "OLLAMA",
                "endpoint": runtime,
                "prices": [{"model": name, "inputPerMillion": "1", "outputPerMillion": "2"}],
            }
        }
        response = await market.http.post(
            "/graphql",
            json={"query": REGISTER, "variables": variables},
            headers={"Authorization": f"Bearer {market.operator_key}"},
        )
        assert response.json()["data"]["registerNode"]["status"] == "ONLINE", response.text
        async with httpx.AsyncClient(base_url=market.url) as http:
            catalogue = await Dashboard(http).get("/marketplace")
            hrefs = re.findall(r'href="(/marketplace/models/[^"]*)"', catalogue.html)
            assert len(hrefs) == 1
            # Where a browser goes: dot segments resolved as the URL standard says.
            target = httpx.URL(market.url).join(hrefs[0])
            assert target.path.startswith("/marketplace/models/")
            page = await Dashboard(http).get(target.raw_path.decode())
    assert page.status == 200
    assert name in page
