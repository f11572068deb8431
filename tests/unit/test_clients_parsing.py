"""Pure parsing and request building of the runtime clients; httpx.MockTransport for the wire."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from infer.errors import BadInput, UpstreamError, UpstreamTimeout
from infer.models import Runtime
from infer.nodes.clients import (
    CLIENTS,
    ExoClient,
    OllamaClient,
    OpenAICompatibleClient,
    client_for,
    ollama,
    openai,
)
from infer.nodes.clients.base import ChatChunk, ChatMessage, ChatRequest, Usage
from infer.nodes.clients.sse import EventDecoder
from infer.nodes.clients.wire import MAX_LINE_BYTES, MAX_PROBE_BYTES

URL = "http://node.test:11434"


def ask(**fields: Any) -> ChatRequest:
    messages = (ChatMessage("developer", "Be brief."), ChatMessage("user", "Hi"))
    return ChatRequest(model="m", messages=messages, **fields)


def line(payload: object) -> bytes:
    return json.dumps(payload).encode()


# --- Ollama ---------------------------------------------------------------------------------


def test_ollama_body_translates_openai_fields_to_options() -> None:
    request = ask(max_tokens=7, temperature=0.1, top_p=0.9, stop=("END",), seed=5)
    body = ollama.chat_body(request)
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert body["options"] == {
        "num_predict": 7,
        "temperature": 0.1,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 5,
    }


def test_ollama_body_leaves_unset_fields_to_the_model() -> None:
    assert ollama.chat_body(ask())["options"] == {}
    penalties = ollama.chat_body(ask(presence_penalty=0.5, frequency_penalty=0.25))["options"]
    assert penalties == {"presence_penalty": 0.5, "frequency_penalty": 0.25}


def test_ollama_content_line() -> None:
    chunk = ollama.parse_line(
        line({"message": {"role": "assistant", "content": "Hi"}, "done": False})
    )
    assert chunk == ChatChunk(content="Hi")


def test_ollama_final_line_carries_counts_and_reason() -> None:
    final = {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length"}
    chunk = ollama.parse_line(line(final | {"prompt_eval_count": 26, "eval_count": 282}))
    assert chunk == ChatChunk(finish_reason="length", usage=Usage(26, 282))


@pytest.mark.parametrize("reason", ["stop", "load", None])
def test_ollama_other_done_reasons_are_stop(reason: str | None) -> None:
    final = {"done": True, "done_reason": reason, "prompt_eval_count": 1, "eval_count": 1}
    assert ollama.parse_line(line(final)).finish_reason == "stop"


def test_ollama_missing_prompt_count_means_no_usage() -> None:
    # Ollama omits a zero count, e.g. when the whole prompt came from its cache.
    chunk = ollama.parse_line(line({"done": True, "done_reason": "stop", "eval_count": 3}))
    assert chunk == ChatChunk(finish_reason="stop", usage=None)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        line({"message": {"content": "x"}}),
        line({"message": {"content": "x"}, "done": "no"}),
        line({"message": {"content": 5}, "done": False}),
        line({"message": "x", "done": False}),
        line({"done": False}),
        line({"done": True, "prompt_eval_count": -1, "eval_count": 1}),
        line({"done": True, "prompt_eval_count": True, "eval_count": 1}),
        line({"done": True, "prompt_eval_count": 1, "eval_count": 1.5}),
        line({"error": "model crashed: sk-secret"}),
        b"[" * 100_000,
    ],
)
def test_ollama_bad_lines_are_upstream_errors(raw: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        ollama.parse_line(raw)
    assert "sk-secret" not in caught.value.message


def test_ollama_model_names() -> None:
    document = {"models": [{"name": "a:latest"}, {"name": "b:7b"}, {"name": "a:latest"}]}
    assert ollama.model_names(document, "tags") == ("a:latest", "b:7b")
    with pytest.raises(UpstreamError):
        ollama.model_names({"models": [{"model": "no name"}]}, "tags")


# --- OpenAI-style SSE -----------------------------------------------------------------------


def test_openai_body_asks_for_usage_and_keeps_our_fields() -> None:
    extra = {"model": "other", "stream": False, "top_k": 3, "stream_options": {"x": 1}}
    body = openai.chat_body(ask(max_tokens=9, extra=extra), include_usage=True)
    assert body["model"] == "m"
    assert body["stream"] is True
    assert body["top_k"] == 3
    assert body["max_tokens"] == 9
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [  # roles go as given: these servers know "developer"
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


def test_exo_style_body_sends_no_stream_options() -> None:
    body = openai.chat_body(
        ask(extra={"stream_options": {"include_usage": True}}), include_usage=False
    )
    assert "stream_options" not in body


def chunk_data(delta: dict[str, Any] | None = None, **fields: Any) -> bytes:
    choice: dict[str, Any] = {"index": 0, "finish_reason": fields.pop("finish_reason", None)}
    if delta is not None:
        choice["delta"] = delta
    return line({"object": "chat.completion.chunk", "choices": [choice]} | fields)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (chunk_data({"content": "Hi"}), ChatChunk("Hi")),
        (chunk_data({"role": "assistant", "content": None}), ChatChunk()),
        (chunk_data({"reasoning_content": "hmm"}), ChatChunk()),
        (chunk_data(None, finish_reason="stop"), ChatChunk(finish_reason="stop")),
        (chunk_data({}, finish_reason="length"), ChatChunk(finish_reason="length")),
        (chunk_data({}, finish_reason="tool_calls"), ChatChunk(finish_reason="tool_calls")),
        (chunk_data({}, finish_reason="eos"), ChatChunk(finish_reason="stop")),
        (
            line({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
            ChatChunk(usage=Usage(3, 4)),
        ),
        (line({"choices": [{"index": 1, "delta": {"content": "other"}}]}), ChatChunk()),
        (line({"choices": None, "usage": None}), ChatChunk()),
    ],
)
def test_openai_chunks(data: bytes, expected: ChatChunk) -> None:
    assert openai.parse_chunk(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b'"text"',
        line({"choices": {}}),
        line({"choices": ["x"]}),
        line({"choices": [{"delta": "x"}]}),
        line({"choices": [{"delta": {"content": 1}}]}),
        line({"choices": [{"delta": {}, "finish_reason": 1}]}),
        line({"choices": [{"delta": {}, "finish_reason": "error"}]}),
        line({"choices": [], "usage": {"prompt_tokens": 3}}),
        line({"choices": [], "usage": {"prompt_tokens": "3", "completion_tokens": 1}}),
        line({"error": {"message": "sk-secret", "type": "InternalServerError", "code": 500}}),
        line({"object": "error", "message": "sk-secret"}),
    ],
)
def test_bad_openai_chunks_are_upstream_errors(data: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        openai.parse_chunk(data)
    assert "sk-secret" not in caught.value.message


def test_model_ids() -> None:
    assert openai.model_ids({"data": [{"id": "a"}, {"id": "b"}, {"id": "a"}]}) == ("a", "b")
    bad: object
    for bad in ({"data": "a"}, {"data": [{"id": 3}]}, [], {"models": []}):
        with pytest.raises(UpstreamError):
            openai.model_ids(bad)


def test_sse_decoder_joins_data_lines_and_skips_the_rest() -> None:
    decoder = EventDecoder()
    lines = [b": keep-alive", b"", b"event: message", b"id: 7", b"data: a", b"data:b", b"retry: 5"]
    assert [decoder.feed(x) for x in lines] == [None] * len(lines)
    assert decoder.feed(b"") == b"a\nb"
    assert decoder.feed(b"") is None
    assert decoder.feed(b"data: tail") is None
    assert decoder.flush() == b"tail"


def test_sse_decoder_caps_an_event() -> None:
    decoder = EventDecoder(limit=10)
    decoder.feed(b"data: 12345")
    with pytest.raises(UpstreamError, match="event larger"):
        decoder.feed(b"data: 67890")


# --- The wire, through httpx.MockTransport --------------------------------------------------


Handler = Callable[[httpx.Request], Any]
Mock = Callable[..., Any]


@pytest.fixture
async def mocked() -> AsyncIterator[Mock]:
    """Build a client whose HTTP goes to a handler; every one is closed afterwards."""
    opened: list[httpx.AsyncClient] = []

    def build(handler: Handler, client_class: Any = OpenAICompatibleClient, **kw: Any) -> Any:
        opened.append(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        return client_class(opened[-1], base_url=URL, **kw)

    yield build
    for http in opened:
        await http.aclose()


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def drain(client: Any) -> list[ChatChunk]:
    return await drain_request(client, ask())


async def drain_request(client: Any, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in client.stream_chat(request)]


SSE_BODY = (
    b": keep-alive\r\n\r\n"
    + b"".join(b"data: " + chunk_data({"content": t}) + b"\r\n\r\n" for t in ("Hel", "lo", "\n"))
    + b"data: "
    + chunk_data({}, finish_reason="stop", usage={"prompt_tokens": 2, "completion_tokens": 3})
    + b"\n\ndata: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 7, 64, len(SSE_BODY)])
async def test_stream_survives_any_chunking_and_crlf(mocked: Mock, size: int) -> None:
    client = mocked(lambda request: httpx.Response(200, content=pieces(SSE_BODY, size)))
    chunks = await drain(client)
    assert "".join(c.content for c in chunks) == "Hello\n"
    assert chunks[-1] == ChatChunk(finish_reason="stop", usage=Usage(2, 3))


async def test_stream_of_old_exo_ends_without_done(mocked: Mock) -> None:
    body = SSE_BODY.removesuffix(b"data: [DONE]\n\n")
    chunks = await drain(mocked(lambda request: httpx.Response(200, content=body), ExoClient))
    assert chunks[-1].finish_reason == "stop"


async def test_a_line_over_the_cap_is_refused(mocked: Mock) -> None:
    body = b"data: " + b"x" * MAX_LINE_BYTES + b"\n\n"
    client = mocked(lambda request: httpx.Response(200, content=pieces(body, 65536)))
    with pytest.raises(UpstreamError, match="longer than"):
        await drain(client)


async def test_a_declared_oversized_probe_body_is_refused_unread(mocked: Mock) -> None:
    headers = {"content-length": str(MAX_PROBE_BYTES + 1)}
    client = mocked(lambda request: httpx.Response(200, headers=headers, content=b"{}"))
    with pytest.raises(UpstreamError, match="larger than 4 MiB"):
        await client.probe()


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "expected", "message"),
    [
        (httpx.ConnectError("refused"), UpstreamError, "cannot connect"),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout, "in time"),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, "in time"),
        (httpx.ReadError("reset"), UpstreamError, "connection to the node failed"),
        (httpx.RemoteProtocolError("bad"), UpstreamError, "broke off"),
        (BadInput("endpoint address 127.0.0.1, a loopback address"), UpstreamError, "not allowed"),
    ],
)
async def test_transport_failures_become_upstream_errors(
    mocked: Mock, exc: Exception, expected: type[UpstreamError], message: str
) -> None:
    client = mocked(raising(exc), OllamaClient)
    for call in (client.probe, lambda: drain(client)):
        with pytest.raises(expected, match=message) as caught:
            await call()
        assert type(caught.value) is expected


async def test_a_nan_in_the_request_is_bad_input_not_a_node_failure(mocked: Mock) -> None:
    client = mocked(lambda request: httpx.Response(500), OllamaClient)
    with pytest.raises(BadInput, match="NaN"):
        await drain_request(client, ask(temperature=float("nan")))


async def test_token_is_sent_and_accept_encoding_is_identity(mocked: Mock) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": []})

    await mocked(handler, token="t0k").probe()
    assert seen[0].headers["authorization"] == "Bearer t0k"
    assert seen[0].headers["accept-encoding"] == "identity"


async def test_registry_covers_every_runtime() -> None:
    assert set(CLIENTS) == set(Runtime)
    async with httpx.AsyncClient() as http:
        assert isinstance(client_for("exo", http, base_url=URL), ExoClient)
        assert isinstance(client_for(Runtime.OLLAMA, http, base_url=URL + "/"), OllamaClient)
        assert client_for("openai", http, base_url=URL + "/").base_url == URL
        with pytest.raises(BadInput, match="unknown runtime"):
            client_for("vllm", http, base_url=URL)
