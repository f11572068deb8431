"""Images in user messages: data URLs to vision models; remote, oversized or fake ones refused."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

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
from infer.simulator import count_prompt_tokens, serve_in_thread
from infer.simulator.features import IMAGE_TOKENS

MODEL = "llava:7b"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
JPEG = b"\xff\xd8\xff\xe0" + bytes(64)
QUESTION = "What is in these pictures?"
MiB = 1 << 20


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image(url: str, **fields: object) -> dict[str, object]:
    return {"type": "image_url", "image_url": {"url": url, **fields}}


def asking(*parts: dict[str, object]) -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION}, *parts]}]


@pytest.fixture
async def market(settings: Settings, db: Database) -> AsyncIterator[Market]:
    async with served_market(settings, db, MODEL) as (market, _):
        yield market


async def test_a_vision_model_sees_the_images_and_they_are_billed(market: Market) -> None:
    reply = await asyncio.to_thread(
        market.sync_client().chat.completions.create,
        model=MODEL,
        messages=asking(image(data_url(PNG), detail="low"), image(data_url(JPEG, "image/jpeg"))),  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == "I see 2 images."
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == count_prompt_tokens([QUESTION]) + 2 * IMAGE_TOKENS
    cost = reply.usage.prompt_tokens + 2 * reply.usage.completion_tokens
    assert await market.balance("buyer@example.com") == 10_000_000 - cost
    await market.assert_books_balance()


async def test_a_streamed_answer_about_an_image(market: Market) -> None:
    stream = await market.async_client().chat.completions.create(
        model=MODEL,
        messages=asking(image(data_url(PNG))),
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "I see 1 image."


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        ([image("https://example.com/cat.png")], "messages.0.content.1.image_url"),
        ([image("http://169.254.169.254/latest")], "messages.0.content.1.image_url"),
        ([image("file:///etc/passwd")], "messages.0.content.1.image_url"),
        ([image(data_url(PNG, "image/svg+xml"))], "messages.0.content.1.image_url"),
        ([image(data_url(JPEG))], "messages.0.content.1.image_url"),  # not a PNG
        ([image("data:image/png;base64,iVBORw0KGgo*")], "messages.0.content.1.image_url"),
        ([image("data:image/png," + "x" * 10)], "messages.0.content.1.image_url"),
        ([image(data_url(PNG), detail="huge")], "messages.0.content.1.image_url.detail"),
        ([{"type": "image_url"}], "messages.0.content.1.image_url"),
        ([image(data_url(PNG + bytes(10 * MiB)))], "messages.0.content.1.image_url"),
        ([image(data_url(PNG + bytes(MiB * 68 // 10)))] * 3, "messages.0.content.3.image_url"),
    ],
)
async def test_bad_images_are_400_naming_the_part_and_cost_nothing(
    market: Market, parts: list[dict[str, object]], param: str
) -> None:
    response = await post_chat(market, {"model": MODEL, "messages": asking(*parts)})
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    await assert_nothing_charged(market)


async def test_an_image_outside_a_user_message_is_refused(market: Market) -> None:
    system = {"role": "system", "content": [image(data_url(PNG))]}
    response = await post_chat(market, {"model": MODEL, "messages": [system, *asking()]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.content.0"


async def test_a_body_of_text_past_the_body_limit_is_413_even_on_the_chat_route(
    market: Market, settings: Settings
) -> None:
    text = "x" * (settings.max_body_bytes + 10)
    response = await post_chat(
        market, {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    )
    assert response.status_code == 413
    await assert_nothing_charged(market)


@pytest.fixture
async def http() -> AsyncIterator[NodeHTTP]:
    deadlines = Deadlines(connect=2, first_byte=5, idle=5, total=30, health=5)
    async with create_http_client(allow_private=True, deadlines=deadlines) as client:
        yield client


def _request(messages: list[dict[str, object]]) -> Any:
    body = {"model": "tiny-model", "messages": messages}
    return parse_body(json.dumps(body).encode(), max_tokens_limit=4096).to_chat_request(
        max_tokens=64
    )


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
async def test_each_runtime_gets_the_images_in_its_own_form(http: NodeHTTP, dialect: str) -> None:
    runtime = FakeRuntime(dialect)  # type: ignore[arg-type]
    parts = [image(data_url(PNG), detail="high"), {"type": "text", "text": "and?"}]
    with serve_in_thread(runtime) as url:
        kind = Runtime.OLLAMA if dialect == "ollama" else Runtime.OPENAI
        client = client_for(kind, http, base_url=url)
        [c async for c in client.stream_chat(_request(asking(*parts)))]
    [message] = runtime.chats()[0].json()["messages"]
    encoded = base64.b64encode(PNG).decode()
    if dialect == "ollama":
        assert message == {"role": "user", "content": QUESTION + "and?", "images": [encoded]}
    else:
        assert message["content"] == [
            {"type": "text", "text": QUESTION},
            {"type": "image_url", "image_url": {"url": data_url(PNG), "detail": "high"}},
            {"type": "text", "text": "and?"},
        ]
