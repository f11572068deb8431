"""POST /api/v1/embeddings, served for real, called with the official `openai` SDK.

The simulator's vectors are deterministic (infer/simulator/embeddings.py), so the exact
numbers, token counts and charges are known in advance.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from test_gateway import Market

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread
from infer.simulator.embeddings import tokens, vector

EMBEDDER = "nomic-embed-text:v1"
CHAT = "llama3.2:1b"
REGISTER = """mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"""
DECLARE = """mutation($id: ID!, $model: String!, $caps: [String!]) {
  setModelCapabilities(nodeId: $id, model: $model, capabilities: $caps) { id }
}"""
CREATE_KEY = """mutation($n: String!, $s: [ApiKeyScope!]) {
  createApiKey(name: $n, scopes: $s) { secret }
}"""
PRICE_PER_MILLION = 250_000_000  # micro-USD: $250 per million input tokens
TEXTS = ["The quick brown fox.", "Jumps over the lazy dog, twice!"]


@pytest.fixture
async def market(settings: Settings, db: Database) -> AsyncIterator[Market]:
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        yield market
        await market.close()


@pytest.fixture
def simulator() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(models=(EMBEDDER, CHAT), seed=7)) as url:
        yield url


async def register(market: Market, endpoint: str, runtime: str = "OLLAMA") -> str:
    prices = [
        {"model": name, "inputPerMillion": "250", "outputPerMillion": "1"}
        for name in (EMBEDDER, CHAT)
    ]
    variables = {"input": {"name": "n", "runtime": runtime, "endpoint": endpoint, "prices": prices}}
    response = await market.http.post(
        "/graphql",
        json={"query": REGISTER, "variables": variables},
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    node = response.json()["data"]["registerNode"]
    assert node["status"] == "ONLINE", node
    return str(node["id"])


def float32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


async def test_embeddings_are_the_runtimes_vectors_and_billed_on_input_tokens(
    market: Market, simulator: str
) -> None:
    await register(market, simulator)
    before = await market.balance("buyer@example.com")
    answer = await market.async_client().embeddings.create(
        model=EMBEDDER, input=TEXTS, encoding_format="float"
    )
    expected_tokens = tokens(TEXTS)
    assert [item.embedding for item in answer.data] == [vector(EMBEDDER, t) for t in TEXTS]
    assert [item.index for item in answer.data] == [0, 1]
    assert answer.model == EMBEDDER
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == expected_tokens
    cost = expected_tokens * PRICE_PER_MILLION // 1_000_000
    assert await market.balance("buyer@example.com") == before - cost
    (usage,) = await market.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cost) == (expected_tokens, 0, cost)
    assert not usage.estimated
    await market.assert_books_balance()


async def test_base64_vectors_decode_to_the_same_numbers(market: Market, simulator: str) -> None:
    await register(market, simulator)
    # The SDK asks for base64 unless told otherwise, and decodes it.
    answer = market.sync_client().embeddings.create(model=EMBEDDER, input="one text", dimensions=8)
    assert answer.data[0].embedding == float32(vector(EMBEDDER, "one text", 8))


async def test_an_openai_compatible_node_declared_to_embed_serves_them(
    market: Market, simulator: str
) -> None:
    node = await register(market, simulator, runtime="OPENAI")
    client = market.sync_client()
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=EMBEDDER, input=TEXTS)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "model"
    assert raised.value.body["message"] == f"no node serving {EMBEDDER!r} supports embeddings"
    response = await market.http.post(
        "/graphql",
        json={
            "query": DECLARE,
            "variables": {"id": node, "model": EMBEDDER, "caps": ["embedding"]},
        },
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    assert "errors" not in response.json()
    answer = client.embeddings.create(model=EMBEDDER, input=TEXTS, encoding_format="float")
    assert [item.embedding for item in answer.data] == [vector(EMBEDDER, t) for t in TEXTS]
    assert answer.usage.prompt_tokens == tokens(TEXTS)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": EMBEDDER, "input": ""}, 400, "input"),
        ({"model": EMBEDDER, "input": []}, 400, "input"),
        ({"model": EMBEDDER, "input": ["fine", ""]}, 400, "input"),
        ({"model": EMBEDDER, "input": ["x"] * 2049}, 400, "input"),
        ({"model": EMBEDDER, "input": [1, 2, 3]}, 400, "input"),
        ({"model": EMBEDDER, "input": [[1, 2], [3]]}, 400, "input"),
        ({"model": EMBEDDER, "input": {"text": "x"}}, 400, "input"),
        ({"model": EMBEDDER, "input": ["a", 7]}, 400, "input"),
        ({"model": EMBEDDER}, 400, "input"),
        ({"input": "x"}, 400, "model"),
        ({"model": EMBEDDER, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": EMBEDDER, "input": "x", "dimensions": 0}, 400, "dimensions"),
        ({"model": CHAT, "input": "x"}, 400, "model"),
        ({"model": "nobody-serves-this", "input": "x"}, 404, "model"),
    ],
)
async def test_bad_input_is_refused_in_openais_form_and_costs_nothing(
    market: Market, simulator: str, body: dict[str, object], status: int, param: str
) -> None:
    await register(market, simulator)
    before = await market.balance("buyer@example.com")
    response = await market.http.post(
        "/api/v1/embeddings", json=body, headers={"Authorization": f"Bearer {market.buyer_key}"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert await market.usage() == []
    assert await market.balance("buyer@example.com") == before
    await market.assert_books_balance()


async def test_unknown_fields_are_ignored(market: Market, simulator: str) -> None:
    await register(market, simulator)
    response = await market.http.post(
        "/api/v1/embeddings",
        json={"model": EMBEDDER, "input": "x", "user": "u-1", "something_new": {"a": 1}},
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )
    assert response.status_code == 200
    assert response.json()["data"][0]["embedding"] == vector(EMBEDDER, "x")


async def test_a_node_key_may_not_embed(market: Market, simulator: str) -> None:
    await register(market, simulator)
    created = await market.http.post(
        "/graphql",
        json={"query": CREATE_KEY, "variables": {"n": "node", "s": ["NODES"]}},
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )
    key = created.json()["data"]["createApiKey"]["secret"]
    response = await market.http.post(
        "/api/v1/embeddings",
        json={"model": EMBEDDER, "input": "x"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"
    missing = await market.http.post("/api/v1/embeddings", json={"model": EMBEDDER, "input": "x"})
    assert missing.status_code == 401


async def test_a_buyer_without_funds_is_refused_before_any_node_is_called(
    settings: Settings, db: Database, simulator: str
) -> None:
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=0)
        try:
            await register(market, simulator)
            async with httpx.AsyncClient(base_url=url) as http:
                response = await http.post(
                    "/api/v1/embeddings",
                    json={"model": EMBEDDER, "input": TEXTS},
                    headers={"Authorization": f"Bearer {market.buyer_key}"},
                )
            assert response.status_code == 402
            assert await market.usage() == []
            await market.assert_books_balance()
        finally:
            await market.close()


SET_BUDGET = """mutation($id: ID!, $limit: Money, $reset: BudgetReset, $models: [String!]) {
  setApiKeyBudget(id: $id, spendLimit: $limit, reset: $reset, models: $models) { id }
}"""
KEYS = "{ me { apiKeys { id } } }"


async def test_a_keys_allow_list_and_budget_hold_for_embeddings(
    market: Market, simulator: str
) -> None:
    await register(market, simulator)
    auth = {"Authorization": f"Bearer {market.buyer_key}"}
    keys = await market.http.post("/graphql", json={"query": KEYS}, headers=auth)
    (key,) = keys.json()["data"]["me"]["apiKeys"]

    async def budget(**variables: object) -> None:
        body = {"query": SET_BUDGET, "variables": {"id": key["id"], **variables}}
        response = await market.http.post("/graphql", json=body, headers=auth)
        assert "errors" not in response.json(), response.json()

    async def embed() -> httpx.Response:
        body = {"model": EMBEDDER, "input": TEXTS}
        return await market.http.post("/api/v1/embeddings", json=body, headers=auth)

    await budget(models=[CHAT])
    refused = await embed()
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    # A budget smaller than the hold for these inputs ($250 per million tokens).
    await budget(models=None, limit="0.001", reset="DAILY")
    refused = await embed()
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "key_budget_exceeded"
    await budget(limit="1", reset="DAILY")
    assert (await embed()).status_code == 200
    assert len(await market.usage()) == 1
    await market.assert_books_balance()


async def test_an_input_longer_than_every_context_is_a_400_naming_input(
    market: Market, simulator: str
) -> None:
    node = await register(market, simulator)
    declare = """mutation($id: ID!, $model: String!) {
      setModelCapabilities(nodeId: $id, model: $model, capabilities: ["embedding"],
                           contextLength: 50) { id }
    }"""
    response = await market.http.post(
        "/graphql",
        json={"query": declare, "variables": {"id": node, "model": EMBEDDER}},
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    assert "errors" not in response.json()
    client = market.sync_client()
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=EMBEDDER, input=["short", "word " * 100])
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "input"
    assert "50 tokens" in raised.value.body["message"]
    # Each input is embedded on its own: many short ones fit.
    answer = client.embeddings.create(model=EMBEDDER, input=["word " * 20] * 10)
    assert len(answer.data) == 10


async def test_embeddings_are_in_the_metrics_and_a_refused_hold_is_not_left_open(
    settings: Settings, db: Database, simulator: str
) -> None:
    token = "metrics-token-" + "m" * 24
    limited = settings.model_copy(
        update={"metrics_token": SecretStr(token), "key_requests_per_minute": 1}
    )
    with serve_in_thread(create_app(limited), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        try:
            await register(market, simulator)
            auth = {"Authorization": f"Bearer {market.buyer_key}"}
            body = {"model": EMBEDDER, "input": TEXTS}
            ok = await market.http.post("/api/v1/embeddings", json=body, headers=auth)
            limited_out = await market.http.post("/api/v1/embeddings", json=body, headers=auth)
            await market.settled()
            scraped = await market.http.get(
                "/metrics", headers={"Authorization": f"Bearer {token}"}
            )
        finally:
            await market.close()
    assert (ok.status_code, limited_out.status_code) == (200, 429)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    assert samples[("infer_requests_total", (("model", EMBEDDER), ("status", "200")))] == 1
    assert samples[("infer_requests_total", (("model", EMBEDDER), ("status", "429")))] == 1
    tokens_in = (("direction", "in"), ("model", EMBEDDER))
    assert samples[("infer_tokens_total", tokens_in)] == tokens(TEXTS)
    assert samples[("infer_holds_open", ())] == 0
