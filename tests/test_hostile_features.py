"""A hostile buyer's tools, schemas and images: refused at the edge in OpenAI's form,
naming the param, before any node is called and with nothing charged."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from runtimes import FakeRuntime
from test_gateway import MESSAGES, MODEL, platform_settings, simulator
from test_hostile_market import AsgiMarket, _add_node, _auth, inproc
from test_key_budgets import KEYS, BudgetMarket
from test_key_budgets import market as budget_market

from infer.errors import UpstreamError
from infer.logs import Redacting, TextLines
from infer.models import Runtime
from infer.nodes.clients import client_for
from infer.nodes.clients.base import ChatChunk, ChatMessage, ChatRequest, Deadlines
from infer.nodes.http import create_http_client
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

__all__ = [
    "budget_market",
    "inproc",
    "platform_settings",
    "simulator",
]  # fixtures shared with other tests

HI = b'[{"role": "user", "content": "hi"}]'
TOOL = b'[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", %s}}}]'
SCHEMA = b'{"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", %s}}}'


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("tools", TOOL % b'"x": NaN', "tools"),
        ("tools", TOOL % b'"x": -Infinity', "tools"),
        ("tools", TOOL % b'"maxProperties": 1e400', "tools"),
        ("tools", TOOL % b'"maxProperties": 100000000000000000000000', "tools"),
        ("response_format", SCHEMA % b'"x": [Infinity]', "response_format"),
        ("response_format", SCHEMA % (b'"maxProperties": 1' + b"0" * 40), "response_format"),
    ],
    ids=["nan", "minus-infinity", "1e400", "big-integer", "infinity-in-schema", "big-in-schema"],
)
async def test_numbers_json_cannot_carry_in_tools_or_schemas_are_400_naming_the_param(
    inproc: tuple[AsgiMarket, Any], field: str, value: bytes, param: str
) -> None:
    market, _ = inproc
    # The simulator offers tools and JSON schemas, so only the edge's checks can refuse.
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,))) as url:
        await _add_node(market, url, "node", runtime="OLLAMA")
        before = await market.balance("buyer@example.com")
        body = b'{"model": "%s", "messages": %s, "%s": %s}' % (
            MODEL.encode(),
            HI,
            field.encode(),
            value,
        )
        response = await market.http.post(
            "/api/v1/chat/completions",
            content=body,
            headers=_auth(market) | {"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert str(error["param"]).startswith(param), error
        assert error["type"] == "invalid_request_error", error
        assert await market.usage() == []  # nothing metered: no node answered
        assert await market.balance("buyer@example.com") == before
    await market.assert_books_balance()


@dataclass
class LogprobFlood(FakeRuntime):
    """An OpenAI-compatible node that answers one word, then logprobs without end."""

    def _answer_pieces(self, max_tokens: object) -> tuple[tuple[str, ...], str]:
        return ("Hi",), "stop"

    async def _events(self, request: dict[str, Any]) -> AsyncIterator[bytes]:
        head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
        entry = {"token": "x" * 1000, "logprob": -0.5, "bytes": None, "top_logprobs": []}
        choice = {"index": 0, "delta": {"content": ""}, "logprobs": {"content": [entry] * 64}}
        flood = b"data: " + json.dumps(head | {"choices": [choice]}).encode() + b"\n\n"
        first = {"index": 0, "delta": {"role": "assistant", "content": "Hi"}}
        yield b"data: " + json.dumps(head | {"choices": [first]}).encode() + b"\n\n"
        for _ in range(2_000):  # 128 MB of logprobs for a 4-token answer
            yield flood
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield b"data: " + json.dumps(head | {"choices": [last]}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_logprobs_a_buyer_did_not_ask_for_are_neither_buffered_nor_relayed(
    inproc: tuple[AsgiMarket, Any], stream: bool
) -> None:
    """Logprobs are not output the buyer pays for, so the check on answers far beyond
    max_tokens never counted them: a node could make a whole answer hold (and a stream
    relay) as many as it could send before the total deadline, asked for or not."""
    market, _ = inproc
    with serve_in_thread(LogprobFlood(dialect="openai", models=(MODEL,))) as url:
        await _add_node(market, url, "flood", runtime="OPENAI")
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": stream}
        response = await market.http.post(
            "/api/v1/chat/completions", json=body, headers=_auth(market), timeout=60
        )
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) < 4096, f"{len(response.content)} bytes for a 4-token answer"
    assert b"logprobs" not in response.content
    await market.assert_books_balance()


async def test_a_node_sending_more_logprobs_than_max_tokens_allows_is_an_upstream_error() -> None:
    request = ChatRequest(
        model=MODEL, messages=(ChatMessage("user", "hi"),), max_tokens=4, logprobs=True
    )
    pieces: list[ChatChunk] = []

    async def collect(client: Any) -> None:
        async for batch in client.stream_batches(request):
            pieces.extend(batch)

    async with create_http_client(allow_private=True, deadlines=Deadlines()) as http:
        with serve_in_thread(LogprobFlood(dialect="openai", models=(MODEL,))) as url:
            client = client_for(Runtime.OPENAI, http, base_url=url)
            with pytest.raises(UpstreamError, match="far more logprobs than max_tokens"):
                await collect(client)
    kept = sum(len(piece.logprobs or ()) for piece in pieces)
    assert kept <= 4 * 4 + 16  # what an answer of 4 tokens may carry, not 128,000


@dataclass
class ToolIdFlood(FakeRuntime):
    """An OpenAI-compatible node whose tool calls carry ids of a megabyte each."""

    async def _events(self, request: dict[str, Any]) -> AsyncIterator[bytes]:
        head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
        for index in range(128):
            call = {"index": index, "id": "x" * 1_000_000, "function": {"name": "f"}}
            choice = {"index": 0, "delta": {"tool_calls": [call]}}
            yield b"data: " + json.dumps(head | {"choices": [choice]}).encode() + b"\n\n"
        last = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
        yield b"data: " + json.dumps(head | {"choices": [last]}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_nodes_tool_call_ids_are_bounded_like_a_buyers(
    inproc: tuple[AsgiMarket, Any], stream: bool
) -> None:
    """A tool call's id was counted as no output: 128 calls with ids of a megabyte made a
    128 MB answer (an id the buyer could not even send back: theirs are 256 at most)."""
    market, _ = inproc
    with serve_in_thread(ToolIdFlood(dialect="openai", models=(MODEL,))) as url:
        await _add_node(market, url, "flood", runtime="OPENAI")
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 64, "stream": stream}
        response = await market.http.post(
            "/api/v1/chat/completions", json=body, headers=_auth(market), timeout=60
        )
    assert len(response.content) < 1 << 20, f"{len(response.content)} bytes for 64 tokens"
    if stream:
        assert b'"code":"upstream_error"' in response.content
    else:
        assert response.status_code == 502, response.text[:300]
    await market.assert_books_balance()


ROTATE = (
    "mutation($id: ID!, $grace: Int) { rotateApiKey(id: $id, gracePeriodSeconds: $grace)"
    " { apiKey { id } secret } }"
)


@pytest.mark.parametrize("grace", [0, 604_800], ids=["at-once", "with-grace"])
async def test_a_rotated_keys_replacement_keeps_its_budget_allow_list_and_expiry(
    budget_market: BudgetMarket, grace: int
) -> None:
    """Rotating is what one does with a leaked key; its replacement came with no spend
    limit, no allow-list and no expiry, so the leak's remedy lifted every limit; and a grace
    period let the old key outlive its own expiry."""
    market = budget_market
    expires = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    await market.set_budget(
        limit="0.01", reset="DAILY", models=["qwen2.5:7b"], expires=expires.isoformat()
    )
    old = await market.key()
    rotated = await market.graphql(ROTATE, {"id": old["id"], "grace": grace})
    secret = rotated["data"]["rotateApiKey"]["secret"]  # type: ignore[index]
    new_id = rotated["data"]["rotateApiKey"]["apiKey"]["id"]  # type: ignore[index]
    keys = (await market.graphql(KEYS, {}, key=secret))["data"]["me"]["apiKeys"]  # type: ignore[index]
    new = next(key for key in keys if key["id"] == new_id)
    assert new["allowedModels"] == ["qwen2.5:7b"]
    assert new["expiresAt"] == old["expiresAt"]
    assert new["budget"]["spendLimit"] == "0.01"
    assert new["budget"]["reset"] == "DAILY"
    if grace:  # the old key's week of grace does not outlive its own three days
        was = next(key for key in keys if key["id"] == old["id"])
        assert was["expiresAt"] == old["expiresAt"]
    response = await market.http.post(
        "/api/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "model_not_allowed"


def test_text_logs_mask_keys_in_tracebacks_too() -> None:
    """The default (text) format masked messages but printed a traceback as raised: an
    exception naming a key or a bearer token reached the log whole."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextLines())
    handler.addFilter(Redacting())
    logger = logging.getLogger("infer.test-text-logs")
    logger.addHandler(handler)
    key = "inf_" + "A1b2C3d4E5" * 4 + "abcdefghi"
    try:
        try:
            raise ValueError(f"bad key {key}, header Authorization: Bearer s3cr3t-token")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "ValueError: bad key [redacted]" in text
    assert key not in text
    assert "s3cr3t-token" not in text


@dataclass
class DeepArguments(FakeRuntime):
    """A node whose tool call's arguments are an object nested 1,000 deep (as JSON allows)."""

    async def _events(self, request: dict[str, Any]) -> AsyncIterator[bytes]:
        head = b'{"id":"c","object":"chat.completion.chunk","created":0,"model":"%s",' % (
            MODEL.encode()
        )
        deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
        call = b'{"index":0,"id":"call_1","function":{"name":"f","arguments":%s}}' % deep
        yield b'data: %s"choices":[{"index":0,"delta":{"tool_calls":[%s]}}]}\n\n' % (head, call)
        yield b'data: %s"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n' % (
            head
        )
        yield b"data: [DONE]\n\n"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_deeply_nested_tool_call_arguments_from_a_node_are_a_clean_upstream_error(
    inproc: tuple[AsgiMarket, Any], stream: bool
) -> None:
    """Arguments sent as an object are written out as JSON text: nested past Python's
    recursion limit that was a RecursionError, a 500 to the buyer."""
    market, _ = inproc
    with serve_in_thread(DeepArguments(dialect="openai", models=(MODEL,))) as url:
        await _add_node(market, url, "deep", runtime="OPENAI")
        before = await market.balance("buyer@example.com")
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 64, "stream": stream}
        response = await market.http.post(
            "/api/v1/chat/completions", json=body, headers=_auth(market), timeout=60
        )
        # The first event fails: no node could answer, before any stream began.
        assert response.status_code == 502, response.text[:300]
        assert response.json()["error"]["code"] == "upstream_error"
        assert await market.balance("buyer@example.com") == before
    await market.assert_books_balance()


@dataclass
class UninvitedToolCall(FakeRuntime):
    """A node that answers with a call of a function `f`, whatever the request offered."""

    async def _events(self, request: dict[str, Any]) -> AsyncIterator[bytes]:
        head = b'{"id":"c","object":"chat.completion.chunk","created":0,"model":"%s",' % (
            MODEL.encode()
        )
        call = (
            b'{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}'
        )
        yield b'data: %s"choices":[{"index":0,"delta":{"tool_calls":[%s]}}]}\n\n' % (head, call)
        yield b'data: %s"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n' % (
            head
        )
        yield b"data: [DONE]\n\n"


DECLARE_TOOLS = """mutation($id: ID!, $model: String!) {
  setModelCapabilities(nodeId: $id, model: $model, capabilities: ["completion", "tools"]) { id }
}"""


@pytest.mark.parametrize("offered", [None, "g"], ids=["no-tools", "another-tool"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_node_calling_a_tool_the_request_did_not_offer_is_an_upstream_error(
    inproc: tuple[AsgiMarket, Any], stream: bool, offered: str | None
) -> None:
    market, _ = inproc
    with serve_in_thread(UninvitedToolCall(dialect="openai", models=(MODEL,))) as url:
        node = await _add_node(market, url, "uninvited", runtime="OPENAI")
        declared = await market.http.post(
            "/graphql",
            json={"query": DECLARE_TOOLS, "variables": {"id": node, "model": MODEL}},
            headers={"Authorization": f"Bearer {market.operator_key}"},
        )
        assert "errors" not in declared.json(), declared.text
        before = await market.balance("buyer@example.com")
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": 64,
            "stream": stream,
        }
        if offered:
            body["tools"] = [{"type": "function", "function": {"name": offered}}]
        response = await market.http.post(
            "/api/v1/chat/completions", json=body, headers=_auth(market), timeout=60
        )
        # Seen in the node's first event: no node could answer, before any stream began.
        assert response.status_code == 502, response.text[:300]
        assert response.json()["error"]["code"] == "upstream_error"
        assert "the node called a tool the request did not offer" in response.text
        assert await market.balance("buyer@example.com") == before
    await market.assert_books_balance()
