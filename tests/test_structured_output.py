"""response_format through the gateway (json_object, json_schema) and to each runtime's face."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pydantic
import pytest
from chat_market import assert_nothing_charged, post_chat, served_market
from runtimes import FakeRuntime
from test_gateway import Market

from infer.config import Settings
from infer.db import Database
from infer.gateway.body import parse_body
from infer.models import Runtime
from infer.nodes.clients import client_for
from infer.nodes.clients.base import Deadlines
from infer.nodes.http import create_http_client
from infer.nodes.transport import NodeHTTP
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

MODEL = "llama3.2:1b"
USER = {"role": "user", "content": "Describe the weather in Paris."}
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "degrees": {"type": "integer", "minimum": -40, "maximum": 50},
        "sunny": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "note": {"type": "string"},
    },
    "required": ["city", "degrees", "sunny", "tags"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}


class Weather(pydantic.BaseModel):
    city: str
    degrees: int
    sunny: bool


@pytest.fixture
async def market(settings: Settings, db: Database) -> AsyncIterator[Market]:
    async with served_market(settings, db, MODEL) as (market, _):
        yield market


async def test_a_json_schema_answer_validates_against_the_schema(market: Market) -> None:
    reply = await asyncio.to_thread(
        market.sync_client().chat.completions.create,
        model=MODEL,
        messages=[USER],
        response_format=JSON_SCHEMA,
    )
    answer = json.loads(reply.choices[0].message.content or "")
    jsonschema.validate(answer, SCHEMA)
    assert answer == {"city": "aa", "degrees": -40, "sunny": False, "tags": ["a"]}


@pytest.mark.parametrize("stream", [True, False])
async def test_the_sdks_parse_helpers_get_a_typed_answer(market: Market, stream: bool) -> None:
    client = market.sync_client()

    def ask() -> Any:
        if stream:
            with client.chat.completions.stream(
                model=MODEL, messages=[USER], response_format=Weather
            ) as events:
                return events.get_final_completion()
        return client.chat.completions.parse(model=MODEL, messages=[USER], response_format=Weather)

    reply = await asyncio.to_thread(ask)
    assert reply.choices[0].message.parsed == Weather(city="a", degrees=0, sunny=False)


async def test_json_object_answers_a_json_object(market: Market) -> None:
    reply = await asyncio.to_thread(
        market.sync_client().chat.completions.create,
        model=MODEL,
        messages=[USER],
        response_format={"type": "json_object"},
    )
    assert json.loads(reply.choices[0].message.content or "") == {"answer": "simulated"}


def _schema_format(**spec: object) -> dict[str, object]:
    return {"response_format": {"type": "json_schema", "json_schema": spec}}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        (_schema_format(name="w", schema={"type": "nope"}), "response_format"),
        (_schema_format(name="w", schema={"required": 5}), "response_format"),
        (_schema_format(name="w"), "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        (_schema_format(name="w", schema=5), "response_format.json_schema.schema"),
        (_schema_format(name="a name", schema={}), "response_format.json_schema.name"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"seed": 1.5}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
async def test_bad_structured_output_requests_are_400_and_cost_nothing(
    market: Market, change: dict[str, object], param: str
) -> None:
    response = await post_chat(market, {"model": MODEL, "messages": [USER], **change})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    await assert_nothing_charged(market)


@pytest.fixture
async def http() -> AsyncIterator[NodeHTTP]:
    deadlines = Deadlines(connect=2, first_byte=5, idle=5, total=30, health=5)
    async with create_http_client(allow_private=True, deadlines=deadlines) as client:
        yield client


def _request(**fields: object) -> Any:
    body = {"model": MODEL, "messages": [USER], **fields}
    return parse_body(json.dumps(body).encode(), max_tokens_limit=4096).to_chat_request(
        max_tokens=256
    )


@pytest.mark.parametrize("runtime", [Runtime.OLLAMA, Runtime.OPENAI])
async def test_each_runtime_face_answers_to_the_schema(http: NodeHTTP, runtime: Runtime) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as url:
        client = client_for(runtime, http, base_url=url)
        chunks = [c async for c in client.stream_chat(_request(response_format=JSON_SCHEMA))]
    jsonschema.validate(json.loads("".join(c.content for c in chunks)), SCHEMA)
    assert chunks[-1].finish_reason == "stop"


async def test_an_openai_compatible_server_gets_the_fields_as_openai_defines_them(
    http: NodeHTTP,
) -> None:
    runtime = FakeRuntime("openai")
    with serve_in_thread(runtime) as url:
        client = client_for(Runtime.OPENAI, http, base_url=url)
        request = _request(
            model="tiny-model",
            response_format=JSON_SCHEMA,
            seed=3,
            stop=["\n\n"],
            logprobs=True,
            top_logprobs=2,
        )
        [c async for c in client.stream_chat(request)]
    sent = runtime.chats()[0].json()
    assert sent["response_format"] == JSON_SCHEMA
    assert (sent["seed"], sent["stop"]) == (3, ["\n\n"])
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)


async def test_ollama_gets_the_schema_as_its_format(http: NodeHTTP) -> None:
    runtime = FakeRuntime("ollama")
    with serve_in_thread(runtime) as url:
        client = client_for(Runtime.OLLAMA, http, base_url=url)
        [
            c
            async for c in client.stream_chat(
                _request(model="tiny-model", response_format=JSON_SCHEMA)
            )
        ]
        [
            c
            async for c in client.stream_chat(
                _request(model="tiny-model", response_format={"type": "json_object"})
            )
        ]
    schema, plain = (seen.json() for seen in runtime.chats())
    assert schema["format"] == SCHEMA
    assert plain["format"] == "json"
    assert "response_format" not in schema
