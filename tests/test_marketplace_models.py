"""The model catalogue: models on sale from real simulated nodes, their offers and details."""

from __future__ import annotations

import uuid
from typing import Any

from conftest import GraphQLClient, http_client, started
from sqlmodel import col, select
from test_gateway import MESSAGES, Market, market, platform_settings

from infer.config import Settings
from infer.db import Database
from infer.marketplace.figures import refresh_figures
from infer.models import NodeModel, User
from infer.nodes.clients.details import ollama_show, openai_models
from infer.nodes.monitor import DETAILS_PER_CHECK
from infer.resources import Resources
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

__all__ = ["market", "platform_settings"]  # fixtures shared with test_gateway

REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"
MODELS = """query($filter: ModelFilter, $sort: ModelSort, $first: Int, $after: String) {
  models(filter: $filter, sort: $sort, first: $first, after: $after) {
    name contextLength capabilities family parameterSize quantization nodeCount requestsServed
    lowestInputPerMillion cursor
    offers { provider { id name } inputPerMillion outputPerMillion
             stats { ttftMsP50 tokensPerSecondP50 uptime24h requestsServed } } } }"""
ONE = "query($name: String!) { model(name: $name) { name offers { inputPerMillion } } }"


def test_a_lying_runtime_stores_no_junk_details() -> None:
    lie = {
        "details": {"family": "llama\u202e", "parameter_size": "8B" * 40, "quantization_level": 4},
        "model_info": {"general.architecture": "llama", "llama.context_length": 10**12},
        "capabilities": ["tools", "<script>", "vision"],
    }
    shown = ollama_show(lie)
    assert shown is not None
    assert (shown.family, shown.parameter_size, shown.quantization) == (None, None, None)
    assert (shown.context_length, shown.capabilities) == (None, ("tools", "vision"))
    assert ollama_show(["not", "an", "object"]) is None
    listing = {"data": [{"id": "a", "max_model_len": 32768}, {"id": "b", "context_length": True}]}
    assert {name: d.context_length for name, d in openai_models(listing).items()} == {"a": 32768}


async def _operator(market: Market, email: str, url: str, prices: dict[str, int]) -> uuid.UUID:
    key = await market._user(email)
    listed = [
        {"model": m, "inputPerMillion": str(p), "outputPerMillion": str(p)}
        for m, p in prices.items()
    ]
    node = {"name": "n1", "runtime": "OLLAMA", "endpoint": url, "prices": listed}
    response = await market.http.post(
        "/graphql",
        json={"query": REGISTER, "variables": {"input": node}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.json()["data"]["registerNode"]["status"] == "ONLINE", response.text
    async with market.db.session() as session:
        return (await session.exec(select(User.id).where(User.email == email))).one()


async def _anonymous(market: Market, query: str, **variables: object) -> dict[str, Any]:
    response = await market.http.post("/graphql", json={"query": query, "variables": variables})
    return response.json()  # type: ignore[no-any-return]


async def test_anonymous_buyers_see_every_offer_cheapest_first_with_details_and_stats(
    market: Market,
) -> None:
    one = SimulatorConfig(models=("shared:8b", "cheap:1b"), tokens_per_second=2000)
    two = SimulatorConfig(models=("shared:8b", "dear:70b"), tokens_per_second=2000)
    with serve_simulator_in_thread(one) as one_url, serve_simulator_in_thread(two) as two_url:
        cheap = await _operator(market, "a@example.com", one_url, {"shared:8b": 1, "cheap:1b": 1})
        dear = await _operator(market, "b@example.com", two_url, {"shared:8b": 3, "dear:70b": 9})
        client = market.async_client()
        for _ in range(12):  # one provider at least serves 5, enough for a latency
            await client.chat.completions.create(model="shared:8b", messages=MESSAGES)  # type: ignore[arg-type]
        await market.settled()
        await refresh_figures(market.db)
        body = await _anonymous(market, MODELS)
        assert "errors" not in body, body
        by_name = {m["name"]: m for m in body["data"]["models"]}
        assert list(by_name) == ["cheap:1b", "dear:70b", "shared:8b"]  # by name by default
        shared = by_name["shared:8b"]
        assert [o["provider"]["id"] for o in shared["offers"]] == [str(cheap), str(dear)]
        assert [o["inputPerMillion"] for o in shared["offers"]] == ["1.00", "3.00"]
        assert shared["lowestInputPerMillion"] == "1.00"
        assert shared["offers"][0]["provider"]["name"].startswith("provider-")
        # Details from the simulator's /api/show, read by the health check at registration.
        assert (shared["contextLength"], shared["family"], shared["parameterSize"]) == (
            8192,
            "shared",
            "8B",
        )
        assert (shared["quantization"], shared["capabilities"]) == (
            "Q4_K_M",
            ["completion", "tools"],
        )
        assert shared["nodeCount"] == 2
        served = sum(o["stats"]["requestsServed"] for o in shared["offers"])
        assert served == shared["requestsServed"] == 12
        assert any(o["stats"]["ttftMsP50"] is not None for o in shared["offers"])

        by_price = await _anonymous(market, MODELS, sort="PRICE", first=2)
        page = by_price["data"]["models"]
        assert [m["name"] for m in page] == ["cheap:1b", "shared:8b"]
        rest = await _anonymous(market, MODELS, sort="PRICE", first=2, after=page[-1]["cursor"])
        assert [m["name"] for m in rest["data"]["models"]] == ["dear:70b"]
        popular = await _anonymous(market, MODELS, sort="POPULARITY", first=1)
        assert [m["name"] for m in popular["data"]["models"]] == ["shared:8b"]

        filtered = await _anonymous(
            market, MODELS, filter={"search": "SHA", "capability": "tools", "maxPrice": "2"}
        )
        assert [m["name"] for m in filtered["data"]["models"]] == ["shared:8b"]
        none = await _anonymous(market, MODELS, filter={"minContextLength": 100000})
        assert none["data"]["models"] == []

        found = await _anonymous(market, ONE, name="dear:70b")
        assert found["data"]["model"]["offers"] == [{"inputPerMillion": "9.00"}]
    async with market.db.session() as session:
        rows = (await session.exec(select(NodeModel))).all()
    assert all(row.details_at is not None for row in rows)


def _code(body: dict[str, Any]) -> str:
    return str(body["errors"][0]["extensions"]["code"])


async def test_unknown_models_and_bad_arguments_are_clear_errors(market: Market) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=("solo:1b",))) as url:
        await _operator(market, "solo@example.com", url, {"solo:1b": 1})
        for name in ("nope:1b", "bad name", "x" * 500):
            assert _code(await _anonymous(market, ONE, name=name)) == "NOT_FOUND", name
        # Control characters in any argument are refused before a resolver runs.
        assert _code(await _anonymous(market, ONE, name="a\u0000")) == "BAD_USER_INPUT"
        cases: list[dict[str, object]] = [
            {"first": 0},
            {"first": 101},
            {"after": "%%%"},
            {"after": "bm90IGEgY3Vyc29y"},
            {"filter": {"capability": "flying"}},
            {"filter": {"minContextLength": -1}},
            {"filter": {"maxPrice": "-1"}},
            {"filter": {"search": "\u202e"}},
            {"filter": {"family": ""}},
        ]
        for variables in cases:
            body = await _anonymous(market, MODELS, **variables)
            assert _code(body) == "BAD_USER_INPUT", (variables, body)
        by_name = (await _anonymous(market, MODELS, first=1))["data"]["models"]
        other_sort = await _anonymous(market, MODELS, sort="PRICE", after=by_name[0]["cursor"])
        assert _code(other_sort) == "BAD_USER_INPUT"  # a cursor of another order


async def _described(db: Database) -> int:
    async with db.session() as session:
        rows = await session.exec(select(NodeModel).where(col(NodeModel.details_at).is_not(None)))
        return len(rows.all())


async def test_the_monitor_describes_a_few_models_per_check_and_then_not_again(
    graphql: GraphQLClient, user_key: str, resources: Resources, db: Database
) -> None:
    names = tuple(f"m{i}:1b" for i in range(DETAILS_PER_CHECK + 2))
    with serve_simulator_in_thread(SimulatorConfig(models=names)) as url:
        node = {"name": "box", "runtime": "OLLAMA", "endpoint": url}
        body = await graphql(REGISTER, {"input": node}, key=user_key)
        node_id = uuid.UUID(body["data"]["registerNode"]["id"])  # type: ignore[index]
        assert await _described(db) == DETAILS_PER_CHECK  # the check at registration
        await resources.monitor.check_now(node_id, force=True)
        assert await _described(db) == len(names)
        async with db.session() as session:
            before = {r.model: r.details_at for r in (await session.exec(select(NodeModel))).all()}
        await resources.monitor.check_now(node_id, force=True)
        async with db.session() as session:
            after = {r.model: r.details_at for r in (await session.exec(select(NodeModel))).all()}
    assert after == before  # fresh details are not read again within a day
    async with db.session() as session:
        row = (await session.exec(select(NodeModel).where(NodeModel.model == "m0:1b"))).one()
    assert (row.context_length, row.family, row.capabilities) == (8192, "m", "completion,tools")


async def test_model_reads_count_against_the_storefront_limit(settings: Settings) -> None:
    limited = settings.model_copy(update={"market_limit_address": "2/minute"})
    async with started(limited) as (app, _), http_client(app) as http:
        graphql = GraphQLClient(http)
        await graphql("{ models { name } }")
        await graphql('{ model(name: "x") { name } }', expect_errors=True)
        refused = await graphql("{ models { name } }", expect_errors=True)
    assert _code(refused) == "RATE_LIMITED"  # type: ignore[arg-type]
