"""POST /api/v1/completions (legacy text completion), served for real, with the `openai` SDK.

An Ollama node is called at /api/generate with the prompt raw; an OpenAI-compatible one
at /v1/completions (here a small fake that continues any prompt with fixed words).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from test_gateway import MODEL, PRICES, Market

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

REGISTER = """mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"""
PROMPT = "Once upon a time"
WORDS = (" there", " was", " a", " node", ".")


@pytest.fixture
async def market(settings: Settings, db: Database) -> AsyncIterator[Market]:
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        yield market
        await market.close()


@pytest.fixture
def simulator() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as url:
        yield url


def text_server(seen: list[dict[str, object]]) -> Starlette:
    """An OpenAI-compatible server with /v1/models and a streaming /v1/completions."""

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(request: Request) -> Response:
        body = await request.json()
        seen.append(body)

        async def events() -> AsyncIterator[bytes]:
            for word in WORDS:
                choice = {"text": word, "index": 0, "logprobs": None, "finish_reason": None}
                yield b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"
            end = {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}
            yield b"data: " + json.dumps({"choices": [end]}).encode() + b"\n\n"
            usage = {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
            yield b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )


async def register(market: Market, endpoint: str, runtime: str = "OLLAMA") -> str:
    variables = {"input": {"name": "n", "runtime": runtime, "endpoint": endpoint, "prices": PRICES}}
    response = await market.http.post(
        "/graphql",
        json={"query": REGISTER, "variables": variables},
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    node = response.json()["data"]["registerNode"]
    assert node["status"] == "ONLINE", node
    return str(node["id"])


def generated(url: str, max_tokens: int) -> dict[str, object]:
    """What the runtime itself answers at /api/generate for PROMPT."""
    payload = {
        "model": MODEL,
        "prompt": PROMPT,
        "raw": True,
        "stream": False,
        "options": {"num_predict": max_tokens},
    }
    return httpx.post(f"{url}/api/generate", json=payload, timeout=10).json()  # type: ignore[no-any-return]


async def test_a_completion_is_the_runtimes_raw_continuation_and_billed(
    market: Market, simulator: str
) -> None:
    await register(market, simulator)
    direct = generated(simulator, 12)
    before = await market.balance("buyer@example.com")
    answer = market.sync_client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=12)
    assert answer.object == "text_completion"
    assert answer.choices[0].text == direct["response"]
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == direct["prompt_eval_count"]
    assert answer.usage.completion_tokens == direct["eval_count"]
    cost = answer.usage.prompt_tokens * 1 + answer.usage.completion_tokens * 2  # µ$1 / µ$2
    assert await market.balance("buyer@example.com") == before - cost
    await market.assert_books_balance()


async def test_a_streamed_completion_relays_the_same_text(market: Market, simulator: str) -> None:
    await register(market, simulator)
    direct = generated(simulator, 12)
    stream = market.sync_client().completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == direct["response"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == direct["eval_count"]
    (usage,) = await market.usage()
    assert usage.completion_tokens == direct["eval_count"]
    await market.assert_books_balance()


async def test_an_openai_compatible_node_is_called_at_v1_completions(market: Market) -> None:
    seen: list[dict[str, object]] = []
    with serve_in_thread(text_server(seen)) as url:
        await register(market, url, runtime="OPENAI")
        answer = market.sync_client().completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=7, temperature=0.5
        )
    assert answer.choices[0].text == "".join(WORDS)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 5)
    (sent,) = seen
    assert sent["prompt"] == PROMPT
    assert (sent["max_tokens"], sent["temperature"], sent["stream"]) == (7, 0.5, True)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "prompt": ""}, "prompt"),
        ({"model": MODEL, "prompt": []}, "prompt"),
        ({"model": MODEL, "prompt": ["one", "two"]}, "prompt"),
        ({"model": MODEL, "prompt": [1, 2, 3]}, "prompt"),
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": "x", "echo": True}, "echo"),
        ({"model": MODEL, "prompt": "x", "n": 2}, "n"),
        ({"model": MODEL, "prompt": "x", "best_of": 3}, "best_of"),
        ({"model": MODEL, "prompt": "x", "suffix": "end"}, "suffix"),
        ({"model": MODEL, "prompt": "x", "logprobs": 5}, "logprobs"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 10**9}, "max_tokens"),
    ],
)
async def test_bad_input_is_a_400_naming_the_param_and_costs_nothing(
    market: Market, simulator: str, body: dict[str, object], param: str
) -> None:
    await register(market, simulator)
    before = await market.balance("buyer@example.com")
    response = await market.http.post(
        "/api/v1/completions", json=body, headers={"Authorization": f"Bearer {market.buyer_key}"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert await market.usage() == []
    assert await market.balance("buyer@example.com") == before


async def test_unknown_fields_are_ignored_and_a_missing_model_is_a_404(
    market: Market, simulator: str
) -> None:
    await register(market, simulator)
    headers = {"Authorization": f"Bearer {market.buyer_key}"}
    response = await market.http.post(
        "/api/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 3, "something_new": [1]},
        headers=headers,
    )
    assert response.status_code == 200
    response = await market.http.post(
        "/api/v1/completions", json={"model": "nobody-has-it", "prompt": "x"}, headers=headers
    )
    assert response.status_code == 404
    with pytest.raises(openai.NotFoundError):
        market.sync_client().completions.create(model="nobody-has-it", prompt="x")
