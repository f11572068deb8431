"""Pausing a node: no new requests (in-flight ones finish), health checks go on, resume."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import httpx
import pytest
from conftest import CREATE_KEY, PASSWORD, SIGN_UP
from dashboard import Dashboard

from infer.app import create_app
from infer.audit import ClientInfo
from infer.billing.credits import grant_credits
from infer.config import Settings
from infer.db import Database
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

MODEL = "llama3.2:1b"
PRICES = [{"model": MODEL, "inputPerMillion": "1", "outputPerMillion": "2"}]
REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"
NODE_FIELDS = "id status paused healthChecks { ok } servedToday { requests earnings }"
NODE = f"query($id: ID!) {{ node(id: $id) {{ {NODE_FIELDS} }} }}"
PAUSE = (
    f"mutation($id: ID!, $p: Boolean!) {{ setNodePaused(id: $id, paused: $p) {{ {NODE_FIELDS} }} }}"
)
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the sea."}]}


class Platform:
    """A served platform with a funded buyer, an operator and the operator's node."""

    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=30)
        self.buyer = ""
        self.operator = ""
        self.node_id = ""

    async def user(self, email: str) -> str:
        async with httpx.AsyncClient(base_url=str(self.http.base_url), timeout=30) as http:
            await http.post(
                "/graphql", json={"query": SIGN_UP, "variables": {"e": email, "p": PASSWORD}}
            )
            body = (
                await http.post("/graphql", json={"query": CREATE_KEY, "variables": {"n": "k"}})
            ).json()
        return str(body["data"]["createApiKey"]["secret"])

    async def graphql(self, query: str, variables: dict[str, object]) -> dict[str, object]:
        response = await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {self.operator}"},
        )
        body = response.json()
        assert "errors" not in body, body
        return body["data"]  # type: ignore[no-any-return]

    async def node(self) -> dict[str, object]:
        return (await self.graphql(NODE, {"id": self.node_id}))["node"]  # type: ignore[return-value]

    async def pause(self, paused: bool) -> dict[str, object]:
        data = await self.graphql(PAUSE, {"id": self.node_id, "p": paused})
        return data["setNodePaused"]  # type: ignore[return-value]

    async def complete(self) -> httpx.Response:
        return await self.http.post(
            "/api/v1/chat/completions",
            json={**CHAT, "max_tokens": 8},
            headers={"Authorization": f"Bearer {self.buyer}"},
        )


@pytest.fixture
def simulator() -> Iterator[str]:
    # Slow enough that a stream is still running while the test pauses its node.
    config = SimulatorConfig(models=(MODEL,), seed=7, tokens_per_second=20, length_range=(40, 40))
    with serve_simulator_in_thread(config) as url:
        yield url


@pytest.fixture
async def platform(settings: Settings, db: Database, simulator: str) -> AsyncIterator[Platform]:
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        platform = Platform(url)
        platform.buyer = await platform.user("buyer@example.com")
        platform.operator = await platform.user("operator@example.com")
        await grant_credits(
            db, email="buyer@example.com", amount=10_000_000, client=ClientInfo.cli()
        )
        variables = {
            "input": {"name": "sim", "runtime": "OLLAMA", "endpoint": simulator, "prices": PRICES}
        }
        node = (await platform.graphql(REGISTER, variables))["registerNode"]
        assert node["status"] == "ONLINE"  # type: ignore[index]
        platform.node_id = str(node["id"])  # type: ignore[index]
        yield platform
        await platform.http.aclose()


async def test_a_paused_node_gets_no_new_requests_while_its_stream_finishes(
    platform: Platform,
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=8)) as other:
        variables = {
            "input": {"name": "sim-2", "runtime": "OLLAMA", "endpoint": other, "prices": PRICES}
        }
        second = str((await platform.graphql(REGISTER, variables))["registerNode"]["id"])  # type: ignore[index]
        headers = {"Authorization": f"Bearer {platform.buyer}"}
        body = {**CHAT, "stream": True, "max_tokens": 40}
        await platform.pause(True)  # the stream must start on the slow node
        await platform.graphql(PAUSE, {"id": second, "p": True})
        await platform.pause(False)
        async with platform.http.stream(
            "POST", "/api/v1/chat/completions", json=body, headers=headers
        ) as stream:
            await platform.graphql(PAUSE, {"id": second, "p": False})
            lines = stream.aiter_lines()
            first = await anext(line async for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"]
            paused = await platform.pause(True)
            assert (paused["status"], paused["paused"]) == ("PAUSED", True)
            for _ in range(5):
                assert (await platform.complete()).status_code == 200
            rest = [line async for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        finish = [json.loads(line[6:])["choices"][0].get("finish_reason") for line in rest[:-1]]
        assert [reason for reason in finish if reason] in (["stop"], ["length"])
        other_node = (await platform.graphql(NODE, {"id": second}))["node"]
    assert (await platform.node())["servedToday"]["requests"] == 1  # type: ignore[index]
    assert other_node["servedToday"]["requests"] == 5  # type: ignore[index]


async def test_health_checks_go_on_while_paused_and_resuming_restores_the_status(
    platform: Platform, simulator: str
) -> None:
    await platform.pause(True)
    before = len((await platform.node())["healthChecks"])  # type: ignore[arg-type]
    # Registering again checks the node at once, as the monitor would.
    variables = {"input": {"name": "sim", "runtime": "OLLAMA", "endpoint": simulator}}
    assert (await platform.graphql(REGISTER, variables))["registerNode"]["status"] == "PAUSED"  # type: ignore[index]
    node = await platform.node()
    assert len(node["healthChecks"]) == before + 1  # type: ignore[arg-type]
    assert node["status"] == "PAUSED"
    resumed = await platform.pause(False)
    assert (resumed["status"], resumed["paused"]) == ("ONLINE", False)
    assert (await platform.complete()).status_code == 200


async def test_a_paused_node_is_no_offer_on_the_market(platform: Platform) -> None:
    query = "{ models { name } }"
    assert (await platform.graphql(query, {}))["models"] == [{"name": MODEL}]
    await platform.pause(True)
    assert (await platform.graphql(query, {}))["models"] == []
    response = await platform.http.get(
        "/api/v1/models", headers={"Authorization": f"Bearer {platform.buyer}"}
    )
    assert response.json()["data"] == []


async def test_served_today_counts_the_nodes_settled_requests_and_earnings(
    platform: Platform,
) -> None:
    assert (await platform.node())["servedToday"] == {"requests": 0, "earnings": "0.00"}
    reply = (await platform.complete()).json()
    cost = reply["usage"]["prompt_tokens"] * 1 + reply["usage"]["completion_tokens"] * 2
    earned = cost - cost // 10  # the platform keeps its 10 % fee
    served = (await platform.node())["servedToday"]
    assert served["requests"] == 1  # type: ignore[index]
    assert Decimal(served["earnings"]) * 1_000_000 == earned  # type: ignore[index]


async def test_pausing_someone_elses_node_is_not_found(platform: Platform) -> None:
    other = await platform.user("other@example.com")
    response = await platform.http.post(
        "/graphql",
        json={"query": PAUSE, "variables": {"id": platform.node_id, "p": True}},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert (await platform.node())["paused"] is False


@pytest.fixture
def dashboard(client: httpx.AsyncClient) -> Dashboard:
    return Dashboard(client)


async def _registered(dashboard: Dashboard) -> str:
    await dashboard.sign_up("operator@example.com")
    await dashboard.get("/nodes")
    form = {"name": "desk", "runtime": "OLLAMA", "endpoint": "http://127.0.0.1:9"}
    page = await dashboard.post("/nodes", form)
    assert page.status == 303, page.text
    return page.response.headers["location"].rsplit("/", 1)[1]


async def test_the_node_page_pauses_and_resumes_in_place(dashboard: Dashboard) -> None:
    node_id = await _registered(dashboard)
    await dashboard.get(f"/nodes/{node_id}")
    page = await dashboard.post(f"/nodes/{node_id}/pause", {"back": "node"}, htmx=True)
    assert page.status == 200
    assert 'id="node-status"' in page.html
    assert "Paused: it gets no new requests" in page.text
    assert f'action="/nodes/{node_id}/resume"' in page.html
    page = await dashboard.post(f"/nodes/{node_id}/resume", {"back": "node"})
    assert page.status == 303
    assert page.response.headers["location"] == f"/nodes/{node_id}"
    page = await dashboard.get(f"/nodes/{node_id}")
    assert f'action="/nodes/{node_id}/pause"' in page.html
    assert "Paused:" not in page.text


async def test_the_node_list_pauses_a_node_and_shows_it_paused(dashboard: Dashboard) -> None:
    node_id = await _registered(dashboard)
    await dashboard.get("/nodes")
    page = await dashboard.post(f"/nodes/{node_id}/pause", {"back": "list"}, htmx=True)
    assert page.status == 200
    assert "status-PAUSED" in page.html
    assert f'action="/nodes/{node_id}/resume"' in page.html
    page = await dashboard.post(f"/nodes/{node_id}/resume", {"back": "list"})
    assert page.response.headers["location"] == "/nodes"


async def test_pausing_needs_the_csrf_token(dashboard: Dashboard) -> None:
    node_id = await _registered(dashboard)
    dashboard.token = "forged"
    page = await dashboard.post(f"/nodes/{node_id}/pause", {"back": "list"})
    assert page.status == 403
    page = await dashboard.get(f"/nodes/{node_id}")
    assert f'action="/nodes/{node_id}/pause"' in page.html
