"""Capability-aware routing, served for real: requests reach only nodes that can serve them.

Two simulator nodes serve one model: one as Ollama (its /api/show says completion and
tools), one as an OpenAI-compatible runtime, which says nothing of capabilities (so it
is taken to complete text only) until its operator declares them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator

import openai
import pytest
from test_gateway import MODEL, PRICES, Market

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

REGISTER = """mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"""
DECLARE = """mutation($id: ID!, $model: String!, $caps: [String!], $length: Int) {
  setModelCapabilities(nodeId: $id, model: $model, capabilities: $caps, contextLength: $length) {
    models { name capabilities contextLength declaredCapabilities declaredContextLength }
  }
}"""
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture
async def market(settings: Settings, db: Database) -> AsyncIterator[Market]:
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        yield market
        await market.close()


@pytest.fixture
def simulators() -> Iterator[tuple[str, str]]:
    config = SimulatorConfig(models=(MODEL,), seed=7)
    with serve_simulator_in_thread(config) as one, serve_simulator_in_thread(config) as two:
        yield one, two


async def register(market: Market, endpoint: str, name: str, runtime: str) -> str:
    variables = {
        "input": {"name": name, "runtime": runtime, "endpoint": endpoint, "prices": PRICES}
    }
    response = await market.http.post(
        "/graphql",
        json={"query": REGISTER, "variables": variables},
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    node = response.json()["data"]["registerNode"]
    assert node["status"] == "ONLINE", node
    return str(node["id"])


async def declare(
    market: Market, node_id: str, caps: list[str] | None, length: int | None = None
) -> dict[str, object]:
    variables = {"id": node_id, "model": MODEL, "caps": caps, "length": length}
    response = await market.http.post(
        "/graphql",
        json={"query": DECLARE, "variables": variables},
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    body: dict[str, object] = response.json()
    return body


def tool_request(market: Market) -> None:
    market.sync_client().chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=20
    )


async def test_tool_requests_reach_only_the_node_whose_model_has_tools(
    market: Market, simulators: tuple[str, str]
) -> None:
    plain = await register(market, simulators[1], "plain", "OPENAI")
    client = market.async_client()
    # Plain text is for any node: the plain one serves it.
    await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5)
    ollama = await register(market, simulators[0], "with-tools", "OLLAMA")
    for _ in range(8):
        await client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=20)
    assert Counter(str(u.node_id) for u in await market.usage()) == {plain: 1, ollama: 8}


async def test_no_node_with_tools_is_a_400_naming_tools_and_costs_nothing(
    market: Market, simulators: tuple[str, str]
) -> None:
    await register(market, simulators[1], "plain", "OPENAI")
    before = await market.balance("buyer@example.com")
    with pytest.raises(openai.BadRequestError) as raised:
        tool_request(market)
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["param"] == "tools"
    assert error["message"] == f"no node serving {MODEL!r} supports tools"
    assert await market.usage() == []
    assert await market.balance("buyer@example.com") == before
    await market.assert_books_balance()


async def test_a_declared_capability_is_routed_to_and_survives_health_checks(
    market: Market, simulators: tuple[str, str], settings: Settings
) -> None:
    plain = await register(market, simulators[1], "plain", "OPENAI")
    body = await declare(market, plain, ["completion", "tools"], 32768)
    assert body["data"] == {
        "setModelCapabilities": {
            "models": [
                {
                    "name": MODEL,
                    "capabilities": ["completion", "tools", "text_completion"],
                    "contextLength": 32768,
                    "declaredCapabilities": ["completion", "tools"],
                    "declaredContextLength": 32768,
                }
            ]
        }
    }
    # Registering again checks the node at once (and reads its models' details anew).
    await register(market, simulators[1], "plain", "OPENAI")
    tool_request(market)
    assert [str(u.node_id) for u in await market.usage()] == [plain]
    # The public catalogue shows what was declared too.
    query = f'{{ model(name: "{MODEL}") {{ capabilities contextLength }} }}'
    listed = (await market.http.post("/graphql", json={"query": query})).json()
    assert listed["data"]["model"] == {
        "capabilities": ["completion", "tools"],
        "contextLength": 32768,
    }
    # Null clears the declaration: the runtime's silence means text only again.
    await declare(market, plain, None)
    with pytest.raises(openai.BadRequestError):
        tool_request(market)


async def test_a_request_longer_than_any_context_names_what_to_shorten(
    market: Market, simulators: tuple[str, str]
) -> None:
    node = await register(market, simulators[0], "small", "OLLAMA")
    await declare(market, node, ["completion"], 1000)
    client = market.sync_client()
    long_prompt = [{"role": "user", "content": "word " * 2000}]  # about 2,500 tokens
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=long_prompt, max_tokens=10)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "messages"
    assert "1000 tokens" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2000)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "max_tokens"
    client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=100)
    assert len(await market.usage()) == 1


async def test_a_chat_with_an_embedding_model_is_a_400_naming_the_model(
    market: Market,
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=("nomic-embed-text:v1",))) as url:
        variables = {
            "input": {
                "name": "embedder",
                "runtime": "OLLAMA",
                "endpoint": url,
                "prices": [
                    {
                        "model": "nomic-embed-text:v1",
                        "inputPerMillion": "1",
                        "outputPerMillion": "0",
                    }
                ],
            }
        }
        await market.http.post(
            "/graphql",
            json={"query": REGISTER, "variables": variables},
            headers={"Authorization": f"Bearer {market.operator_key}"},
        )
        with pytest.raises(openai.BadRequestError) as raised:
            market.sync_client().chat.completions.create(
                model="nomic-embed-text:v1", messages=ASK, max_tokens=5
            )
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "model"
    assert "supports text or chat completions" in raised.value.body["message"]


@pytest.mark.parametrize(
    ("caps", "length", "code"),
    [
        (["teleportation"], None, "BAD_USER_INPUT"),
        ([], None, "BAD_USER_INPUT"),
        (["tools"], 0, "BAD_USER_INPUT"),
    ],
)
async def test_a_bad_declaration_is_refused(
    market: Market, simulators: tuple[str, str], caps: list[str], length: int | None, code: str
) -> None:
    node = await register(market, simulators[1], "plain", "OPENAI")
    body = await declare(market, node, caps, length)
    assert body["errors"][0]["extensions"]["code"] == code  # type: ignore[index]


async def test_only_the_nodes_operator_may_declare(
    market: Market, simulators: tuple[str, str]
) -> None:
    node = await register(market, simulators[1], "plain", "OPENAI")
    response = await market.http.post(
        "/graphql",
        json={"query": DECLARE, "variables": {"id": node, "model": MODEL, "caps": ["tools"]}},
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )
    assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    body = await declare(market, node, ["tools"])
    assert "errors" not in body
    variables = {"id": node, "model": "not-on-this-node", "caps": ["tools"]}
    response = await market.http.post(
        "/graphql",
        json={"query": DECLARE, "variables": variables},
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
