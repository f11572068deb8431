"""The operator pages: registering and tending nodes, earnings, notifications."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from conftest import CREATE_KEY, PASSWORD, SIGN_UP, http_client
from dashboard import Dashboard, Page
from starlette.types import ASGIApp

from infer.audit import ClientInfo
from infer.billing.credits import grant_credits
from infer.resources import Resources
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

MODEL = "llama3.2:1b"


@pytest.fixture
def dashboard(client: httpx.AsyncClient) -> Dashboard:
    return Dashboard(client)


@pytest.fixture
def runtime() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL, "qwen2.5:0.5b"), seed=3)) as url:
        yield url


@pytest.fixture
async def stranger(app: ASGIApp) -> AsyncIterator[Dashboard]:
    """Another signed-in user, in a browser of their own."""
    async with http_client(app) as http:
        other = Dashboard(http)
        await other.sign_up("eve@example.com")
        yield other


async def register(dashboard: Dashboard, endpoint: str, name: str = "desk") -> str:
    """Registers a node through the form; the id of the node page it leads to."""
    await dashboard.get("/nodes")
    page = await dashboard.post(
        "/nodes", {"name": name, "runtime": "OLLAMA", "endpoint": endpoint, "capacity": "2"}
    )
    assert page.status == 303, page.text
    match = re.fullmatch(r"/nodes/([0-9a-f-]{36})", page.response.headers["location"])
    assert match
    return match.group(1)


def price_fields(page: Page) -> dict[str, str]:
    """The prices form as the page fills it in: model-N, in-N, out-N."""
    fields = re.findall(r'name="((?:model|in|out)-\d+)" value="([^"]*)"', page.html)
    return dict(fields)


async def test_a_registered_node_is_listed_online_with_its_models(
    dashboard: Dashboard, runtime: str
) -> None:
    await dashboard.sign_up("op@example.com")
    await register(dashboard, runtime)
    page = await dashboard.get("/nodes")
    assert page.status == 200
    row = re.search(
        r"<tr>\s*<th scope=\"row\"><a href=\"/nodes/[^\"]+\">desk</a>.*?</tr>", page.html, re.S
    )
    assert row, page.html
    assert "Online" in row.group(0)
    assert runtime in row.group(0)
    assert re.search(r'<td class="num">2</td>\s*</tr>', row.group(0))  # two models
    assert "infer node agent" in page  # how to add another: the join flow's commands
    assert "inf_" not in page.html


async def test_the_status_block_refreshes_alone_for_htmx(
    dashboard: Dashboard, runtime: str
) -> None:
    await dashboard.sign_up("op@example.com")
    node_id = await register(dashboard, runtime)
    for path in ("/nodes", f"/nodes/{node_id}"):
        block = await dashboard.get(path, htmx=True)
        assert block.status == 200
        assert "<html" not in block.html
        assert 'hx-trigger="every 5s"' in block.html
        assert "Online" in block
        assert block.response.headers["vary"].startswith("HX-Request")
    assert "<html" in (await dashboard.get("/nodes")).html


async def test_register_errors_show_in_the_form_and_add_nothing(dashboard: Dashboard) -> None:
    await dashboard.sign_up("op@example.com")
    await dashboard.get("/nodes")
    bad = await dashboard.post(
        "/nodes",
        {"name": "desk", "runtime": "OLLAMA", "endpoint": "ftp://nowhere", "capacity": "lots"},
    )
    assert bad.status == 422
    assert "Capacity is a whole number" in bad
    block = await dashboard.post(
        "/nodes", {"name": "desk", "runtime": "OLLAMA", "endpoint": "ftp://nowhere"}, htmx=True
    )
    assert block.status == 422
    assert block.html.lstrip().startswith("<form")
    assert re.search(r'id="f-endpoint-error" class="error">endpoint', block.html)
    runtime = await dashboard.post(
        "/nodes", {"name": "desk", "runtime": "VLLM", "endpoint": "http://127.0.0.1:9"}
    )
    assert runtime.status == 422
    assert "Choose the kind of runtime" in runtime
    assert "You have no nodes yet" in await dashboard.get("/nodes")


async def test_prices_round_trip_and_a_bad_price_changes_nothing(
    dashboard: Dashboard, runtime: str
) -> None:
    await dashboard.sign_up("op@example.com")
    node_id = await register(dashboard, runtime)
    fields = price_fields(await dashboard.get(f"/nodes/{node_id}"))
    assert set(fields.values()) >= {MODEL, "0.00"}
    index = next(k[6:] for k, v in fields.items() if k.startswith("model-") and v == MODEL)
    saved = await dashboard.post(
        f"/nodes/{node_id}/prices", fields | {f"in-{index}": "0.25", f"out-{index}": "1.5"}
    )
    assert saved.status == 303
    after = price_fields(await dashboard.get(f"/nodes/{node_id}"))
    assert (after[f"in-{index}"], after[f"out-{index}"]) == ("0.25", "1.50")

    bad = await dashboard.post(
        f"/nodes/{node_id}/prices", after | {f"in-{index}": "cheap"}, htmx=True
    )
    assert bad.status == 422
    assert bad.html.lstrip().startswith("<form")
    assert "aria-invalid" in bad.html
    assert "such as 0.25" in bad
    too_dear = await dashboard.post(f"/nodes/{node_id}/prices", after | {f"in-{index}": "5000"})
    assert too_dear.status == 422
    assert "0 to 1000 USD" in too_dear
    assert price_fields(await dashboard.get(f"/nodes/{node_id}"))[f"in-{index}"] == "0.25"


async def test_settings_change_and_deregistering_needs_the_confirmation_form(
    dashboard: Dashboard, runtime: str
) -> None:
    await dashboard.sign_up("op@example.com")
    node_id = await register(dashboard, runtime)
    page = await dashboard.get(f"/nodes/{node_id}")
    assert '<details class="confirm">' in page.html
    assert "Yes, deregister desk" in page
    saved = await dashboard.post(
        f"/nodes/{node_id}/settings", {"name": "attic", "endpoint": runtime, "capacity": "3"}
    )
    assert saved.status == 303
    assert "attic" in await dashboard.get(f"/nodes/{node_id}")
    bad = await dashboard.post(
        f"/nodes/{node_id}/settings", {"name": "attic", "endpoint": runtime, "capacity": "0"}
    )
    assert bad.status == 422
    assert "capacity is 1 to 1024" in bad
    gone = await dashboard.post(f"/nodes/{node_id}/deregister")
    assert gone.response.headers["location"].startswith("/nodes")
    assert "You have no nodes yet" in await dashboard.get("/nodes")
    assert (await dashboard.get(f"/nodes/{node_id}")).status == 404


async def test_another_users_node_or_a_malformed_id_is_404_and_unchanged(
    dashboard: Dashboard, stranger: Dashboard, runtime: str
) -> None:
    await dashboard.sign_up("op@example.com")
    node_id = await register(dashboard, runtime)
    assert (await stranger.get(f"/nodes/{node_id}")).status == 404
    assert (await stranger.get("/nodes/not-a-node")).status == 404
    assert (await stranger.get(f"/nodes/{uuid.uuid4()}")).status == 404
    await stranger.get("/nodes")
    for action, data in [
        ("prices", {"model-0": MODEL, "in-0": "9", "out-0": "9"}),
        ("settings", {"name": "stolen"}),
        ("deregister", {}),
    ]:
        assert (await stranger.post(f"/nodes/{node_id}/{action}", data)).status == 404
    page = await dashboard.get(f"/nodes/{node_id}")
    assert page.status == 200
    assert "stolen" not in page
    assert "Online" in page


async def test_names_from_operators_and_runtimes_are_escaped(dashboard: Dashboard) -> None:
    config = SimulatorConfig(models=("<img src=x onerror=alert(1)>",))
    await dashboard.sign_up("op@example.com")
    with serve_simulator_in_thread(config) as url:
        node_id = await register(dashboard, url, name="<script>alert(1)</script>")
        pages = [await dashboard.get("/nodes"), await dashboard.get(f"/nodes/{node_id}")]
    for page in pages:
        assert "<script>alert(1)" not in page.html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
        assert "<img src=x" not in page.html


async def test_failed_checks_are_drawn_apart_with_their_error(
    dashboard: Dashboard, resources: Resources
) -> None:
    await dashboard.sign_up("op@example.com")
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,))) as url:
        node_id = await register(dashboard, url)
    await resources.monitor.check_now(uuid.UUID(node_id), force=True)  # the runtime is gone
    page = await dashboard.get(f"/nodes/{node_id}")
    assert len(re.findall(r'<rect class="bar"', page.html)) == 1
    assert len(re.findall(r'<rect class="bar bad"', page.html)) == 1
    assert "Recent failures" in page
    assert "Degraded" in page or "Offline" in page


async def test_earnings_show_a_settled_completion(
    dashboard: Dashboard, runtime: str, resources: Resources, app: ASGIApp
) -> None:
    await dashboard.sign_up("op@example.com")
    node_id = await register(dashboard, runtime)
    fields = price_fields(await dashboard.get(f"/nodes/{node_id}"))
    prices = {k: "100" for k in fields if k.startswith(("in-", "out-"))}
    assert (await dashboard.post(f"/nodes/{node_id}/prices", fields | prices)).status == 303
    async with http_client(app) as buyer:
        await buyer.post(
            "/graphql", json={"query": SIGN_UP, "variables": {"e": "b@example.com", "p": PASSWORD}}
        )
        created = await buyer.post("/graphql", json={"query": CREATE_KEY, "variables": {"n": "k"}})
        key = created.json()["data"]["createApiKey"]["secret"]
    await grant_credits(
        resources.db, email="b@example.com", amount=5_000_000, client=ClientInfo.cli()
    )
    done = await dashboard.http.post(
        "/api/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert done.status_code == 200, done.text
    page = await dashboard.get("/earnings")
    assert page.status == 200
    assert "Requests served 1 " in page
    assert re.search(r"Earned \$0\.0\d*[1-9]", page.text), page.text
    assert f'<a href="/nodes/{node_id}">desk</a>' in page.html
    assert f"<code>{MODEL}</code>" in page.html
    empty = await dashboard.get("/earnings?from=2020-01-01&to=2020-01-31")
    assert "Requests served 0 " in empty
    bad = await dashboard.get("/earnings?from=yesterday")
    assert bad.status == 422
    assert "YYYY-MM-DD" in bad


async def test_marking_notifications_read_lowers_the_header_count(
    dashboard: Dashboard, runtime: str
) -> None:
    await dashboard.sign_up("op@example.com")
    await register(dashboard, runtime, name="desk")
    await register(dashboard, runtime, name="attic")
    page = await dashboard.get("/notifications")
    assert "2 unread" in page
    assert "Node attic is online" in page
    assert "Node desk is online" in page
    assert page.text.index("Node attic") < page.text.index("Node desk")  # newest first
    one = re.search(r'action="(/notifications/[0-9a-f-]{36}/read)"', page.html)
    assert one
    assert (await dashboard.post(one.group(1))).status == 303
    assert "1 unread" in await dashboard.get("/notifications")
    done = await dashboard.post("/notifications/read", htmx=True)
    assert done.response.headers["hx-redirect"] == "/notifications"
    after = await dashboard.get("/notifications")
    assert " unread" not in after.text
    assert "All read." in after


async def test_a_tunnelled_node_is_shown_reached_through_its_agent(dashboard: Dashboard) -> None:
    await dashboard.sign_up("op@example.com")
    registered = await dashboard.http.post(
        "/graphql",
        json={
            "query": "mutation($i: RegisterNodeInput!) { registerNode(input: $i) { id } }",
            "variables": {"i": {"name": "home", "runtime": "OLLAMA", "tunnel": True}},
        },
        headers={"origin": "http://127.0.0.1:8000"},
    )
    node_id = registered.json()["data"]["registerNode"]["id"]
    listed, shown = await dashboard.get("/nodes"), await dashboard.get(f"/nodes/{node_id}")
    assert "agent's tunnel" in listed
    assert "through its agent's tunnel" in shown
    assert "tunnel://" not in listed.html + shown.html  # the internal address stays inside
    assert "--tunnel" in listed  # how an operator behind NAT joins
    saved = await dashboard.post(f"/nodes/{node_id}/settings", {"name": "home", "endpoint": ""})
    assert saved.status == 303, saved.text  # saving other settings keeps the tunnel
    assert "through its agent's tunnel" in await dashboard.get(f"/nodes/{node_id}")
