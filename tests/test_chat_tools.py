"""Tools through the gateway, with the official `openai` SDK: an agent loop against a simulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from chat_market import CREDITS, assert_nothing_charged, post_chat, served_market
from test_gateway import Market

from infer.config import Settings
from infer.db import Database
from infer.gateway.body import parse_body
from infer.models import Runtime
from infer.nodes.clients import client_for
from infer.nodes.clients.base import Deadlines
from infer.nodes.http import create_http_client
from infer.nodes.transport import NodeHTTP
from infer.simulator import SimulatorConfig, count_prompt_tokens, serve_simulator_in_thread
from infer.simulator.features import Features

MODEL = "llama3.2:1b"
QUESTION = "What is the weather in Paris?"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": 3}},
            "required": ["zone"],
        },
    },
}
USER = {"role": "user", "content": QUESTION}


@pytest.fixture
async def market(settings: Settings, db: Database) -> AsyncIterator[Market]:
    async with served_market(settings, db, MODEL) as (market, _):
        yield market


def _prompt_tokens(*tools: dict[str, Any]) -> int:
    """What the simulator counts for the question and these tool definitions."""
    defined = [(t["function"]["name"], t["function"]["parameters"]) for t in tools]
    return count_prompt_tokens([QUESTION]) + Features(tools=defined).prompt_tokens


@pytest.mark.parametrize("stream", [True, False])
async def test_an_agent_loop_calls_a_tool_and_answers_with_its_result(
    market: Market, stream: bool
) -> None:
    client = market.sync_client()

    def ask() -> Any:
        if stream:
            with client.chat.completions.stream(
                model=MODEL, messages=[USER], tools=[WEATHER]
            ) as events:
                kinds = [event.type for event in events]
                assert "tool_calls.function.arguments.done" in kinds
                return events.get_final_completion()
        return client.chat.completions.create(model=MODEL, messages=[USER], tools=[WEATHER])

    first = await asyncio.to_thread(ask)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "a", "unit": "c"}
    assert first.usage.prompt_tokens == _prompt_tokens(WEATHER)

    result = {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}
    final = await asyncio.to_thread(
        client.chat.completions.create,
        model=MODEL,
        messages=[USER, choice.message.model_dump(exclude_none=True), result],
        tools=[WEATHER],
    )
    assert final.choices[0].message.content == "The tool said: 18 degrees and sunny."
    assert final.choices[0].finish_reason == "stop"
    spent = sum(u.prompt_tokens + 2 * u.completion_tokens for u in (first.usage, final.usage))
    assert await market.balance("buyer@example.com") == CREDITS - spent
    await market.assert_books_balance()


async def test_a_streamed_tool_call_has_openais_shape(market: Market) -> None:
    response = await post_chat(
        market, {"model": MODEL, "messages": [USER], "tools": [WEATHER], "stream": True}
    )
    events = [json.loads(e[6:]) for e in response.text.split("\n\n") if e.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    opening = deltas[0]
    assert opening["role"] == "assistant"
    assert opening["content"] is None
    [call] = opening["tool_calls"]
    assert call["index"] == 0
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [d["tool_calls"][0] for d in deltas[1:-1]]
    assert all(set(f) == {"index", "function"} for f in fragments)
    assert "".join(f["function"]["arguments"] for f in fragments) == '{"city":"a","unit":"c"}'
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1]["usage"]["completion_tokens"] > 0


async def test_tool_choice_names_the_tool_to_call(market: Market) -> None:
    reply = await asyncio.to_thread(
        market.sync_client().chat.completions.create,
        model=MODEL,
        messages=[USER],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    [call] = reply.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_time", {"zone": 3})


async def test_tool_choice_none_answers_in_text(market: Market) -> None:
    reply = await asyncio.to_thread(
        market.sync_client().chat.completions.create,
        model=MODEL,
        messages=[USER],
        tools=[WEATHER],
        tool_choice="none",
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content


def _tool(name: str, **function: object) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, **function}}


def _called(arguments: str) -> dict[str, object]:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _tool_result(**fields: object) -> dict[str, object]:
    return {"role": "tool", "content": "18", **fields}


FORCED_UNKNOWN = {"type": "function", "function": {"name": "nope"}}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [_tool("get weather")]}, "tools.0.function.name"),
        ({"tools": [_tool("f", parameters={"type": 5})]}, "tools.0.function.parameters"),
        ({"tools": [_tool("f", parameters={"type": "string"})]}, "tools.0.function.parameters"),
        ({"tools": [WEATHER, WEATHER]}, "tools.1.function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
        ({"tools": [WEATHER] * 129}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": FORCED_UNKNOWN}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"messages": [USER, _tool_result(tool_call_id="call_1")]}, "messages.1.tool_call_id"),
        ({"messages": [USER, _tool_result()]}, "messages.1.tool_call_id"),
        ({"messages": [USER, _called("[1")]}, "messages.1.tool_calls.0.function.arguments"),
        ({"messages": [USER, _called("[1]")]}, "messages.1.tool_calls.0.function.arguments"),
        ({"messages": [{**USER, **_called("{}"), "role": "user"}]}, "messages.0.tool_calls"),
    ],
)
async def test_malformed_tools_are_400_and_cost_nothing(
    market: Market, change: dict[str, object], param: str
) -> None:
    response = await post_chat(market, {"model": MODEL, "messages": [USER], **change})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    await assert_nothing_charged(market)


async def test_the_sdk_raises_bad_request_for_an_unanswered_tool_message(market: Market) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await market.async_client().chat.completions.create(
            model=MODEL,
            messages=[USER, {"role": "tool", "tool_call_id": "call_x", "content": "18"}],
        )
    assert caught.value.param == "messages.1.tool_call_id"


@pytest.fixture
async def http() -> AsyncIterator[NodeHTTP]:
    deadlines = Deadlines(connect=2, first_byte=5, idle=5, total=30, health=5)
    async with create_http_client(allow_private=True, deadlines=deadlines) as client:
        yield client


@pytest.mark.parametrize("runtime", [Runtime.OLLAMA, Runtime.OPENAI])
async def test_each_runtime_face_returns_the_call_in_openais_pieces(
    http: NodeHTTP, runtime: Runtime
) -> None:
    body = {"model": MODEL, "messages": [USER], "tools": [WEATHER, TIME]}
    request = parse_body(json.dumps(body).encode(), max_tokens_limit=100).to_chat_request(
        max_tokens=100
    )
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as url:
        chunks = [c async for c in client_for(runtime, http, base_url=url).stream_chat(request)]
    deltas = [d for c in chunks for d in c.tool_calls]
    assert {d.position for d in deltas} == {0}
    assert [d.name for d in deltas if d.name] == ["get_weather"]
    assert str(deltas[0].id).startswith("call_")
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "a", "unit": "c"}
    assert chunks[-1].finish_reason == "tool_calls"
    if runtime == Runtime.OPENAI:  # an OpenAI-compatible server streams the arguments
        assert len(deltas) > 2
