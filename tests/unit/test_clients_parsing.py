"""Pure parsing and request building of the runtime clients; raw HTTP/1.1 for the wire."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

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
from infer.nodes.clients.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    Deadlines,
    RuntimeClient,
    Usage,
)
from infer.nodes.clients.sse import EventDecoder
from infer.nodes.clients.wire import MAX_LINE_BYTES, MAX_PROBE_BYTES
from infer.nodes.http import create_http_client
from infer.nodes.transport import NodeHTTP

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


def test_ollama_body_carries_ollamas_own_sampling_options() -> None:
    extra = {"top_k": 3, "min_p": 0.05, "repeat_penalty": 1.1, "logit_bias": {"1": 2.0}}
    body = ollama.chat_body(ask(max_tokens=9, extra=extra))
    assert body["options"] == {"num_predict": 9, "top_k": 3, "min_p": 0.05, "repeat_penalty": 1.1}


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


# --- The wire: raw HTTP/1.1 from a loopback server ------------------------------------------

DEADLINES = Deadlines(connect=2, first_byte=5, idle=5, total=10, health=5)
SHORT = Deadlines(connect=2, first_byte=0.3, idle=0.3, total=5, health=0.3)
Framing = Literal["length", "chunked", "close"]


@dataclass
class RawNode:
    """A loopback server answering every request with `answer`, written `piece` bytes at a time.

    After each answer it waits for the next request on the connection, unless `close` is set:
    then it closes the connection (with a TCP reset if `reset` is set too).
    """

    answer: bytes
    piece: int = 1 << 16
    close: bool = False
    reset: bool = False
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    handlers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.append(task)
        try:
            while request := await read_request(reader):
                self.requests.append(request)
                for start in range(0, len(self.answer), self.piece):
                    writer.write(self.answer[start : start + self.piece])
                    await writer.drain()
                    await asyncio.sleep(0)  # let the client see each piece on its own
                if self.close:
                    break
        except ConnectionError:
            pass  # the client went away mid-answer
        finally:
            if self.reset:
                linger = struct.pack("ii", 1, 0)
                writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, linger
                )
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request, head and body; b"" once the client has closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return head + (await reader.readexactly(int(length[1])) if length else b"")


def request_headers(request: bytes) -> dict[str, str]:
    lines = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, value in (x.split(":", 1) for x in lines)}


def reply(body: bytes, *, framing: Framing = "length", status: str = "200 OK") -> bytes:
    """A raw answer carrying `body`, framed by its length, by chunks, or by the close."""
    head = f"HTTP/1.1 {status}\r\n".encode()
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if framing == "close":
        return head + b"Connection: close\r\n\r\n" + body
    pieces = (body[start : start + 100] for start in range(0, len(body), 100))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


@dataclass
class Wire:
    """The loopback nodes of one test and the platform's HTTP client that reaches them."""

    http: NodeHTTP
    nodes: list[tuple[asyncio.Server, RawNode]] = field(default_factory=list)

    async def serve(self, answer: bytes, **behaviour: Any) -> RawNode:
        node = RawNode(answer, **behaviour)
        server = await asyncio.start_server(node.handle, "127.0.0.1", 0)
        node.port = server.sockets[0].getsockname()[1]
        self.nodes.append((server, node))
        return node

    def client(
        self,
        url: str,
        client_class: type[RuntimeClient] = OpenAICompatibleClient,
        *,
        token: str | None = None,
        deadlines: Deadlines = DEADLINES,
    ) -> RuntimeClient:
        return client_class(self.http, base_url=url, token=token, deadlines=deadlines)


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    async with create_http_client(allow_private=True, deadlines=DEADLINES) as http:
        wire = Wire(http)
        yield wire
    for server, node in wire.nodes:
        server.close()
        for task in node.handlers:  # each ends when the client closes its connection
            await asyncio.wait_for(task, timeout=2)


async def drain(client: RuntimeClient) -> list[ChatChunk]:
    return await drain_request(client, ask())


async def drain_request(client: RuntimeClient, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in client.stream_chat(request)]


SSE_BODY = (
    b": keep-alive\r\n\r\n"
    + b"".join(b"data: " + chunk_data({"content": t}) + b"\r\n\r\n" for t in ("Hel", "lo", "\n"))
    + b"data: "
    + chunk_data({}, finish_reason="stop", usage={"prompt_tokens": 2, "completion_tokens": 3})
    + b"\n\ndata: [DONE]\n\n"
)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("size", [1, 7, 64, 1 << 16])
async def test_stream_survives_any_chunking_and_crlf(
    wire: Wire, size: int, framing: Framing
) -> None:
    node = await wire.serve(reply(SSE_BODY, framing=framing), piece=size, close=framing == "close")
    chunks = await drain(wire.client(node.url))
    assert "".join(c.content for c in chunks) == "Hello\n"
    assert chunks[-1] == ChatChunk(finish_reason="stop", usage=Usage(2, 3))


async def test_stream_of_old_exo_ends_without_done(wire: Wire) -> None:
    node = await wire.serve(reply(SSE_BODY.removesuffix(b"data: [DONE]\n\n")))
    chunks = await drain(wire.client(node.url, ExoClient))
    assert chunks[-1].finish_reason == "stop"


async def test_a_line_over_the_cap_is_refused(wire: Wire) -> None:
    node = await wire.serve(reply(b"data: " + b"x" * MAX_LINE_BYTES + b"\n\n"), piece=65536)
    with pytest.raises(UpstreamError, match="longer than"):
        await drain(wire.client(node.url))


async def test_a_declared_oversized_probe_body_is_refused_unread(wire: Wire) -> None:
    # Only the head and two bytes come: reading on would wait for the health deadline.
    node = await wire.serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n{}" % (MAX_PROBE_BYTES + 1)
    )
    with pytest.raises(UpstreamError, match="larger than 4 MiB"):
        await wire.client(node.url).probe()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CUT_SHORT = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial'
BROKEN_NODES: dict[str, dict[str, Any]] = {
    "silent": {"answer": b""},
    "closes mid-body": {"answer": CUT_SHORT, "close": True},
    "resets mid-body": {"answer": CUT_SHORT, "close": True, "reset": True},
    "garbage status line": {"answer": b"HTTP/1.1 two hundred OK\r\n\r\n"},
}


@pytest.mark.parametrize(
    ("node", "expected", "probe_message", "stream_message"),
    [
        ("closed port", UpstreamError, "cannot connect", "cannot connect"),
        (
            "silent",
            UpstreamTimeout,
            r"health check took longer than 0\.3 s",
            r"no answer within 0\.3 s",
        ),
        ("closes mid-body", UpstreamError, "broke off", "broke off"),
        ("resets mid-body", UpstreamError, "broke off", "broke off"),
        ("garbage status line", UpstreamError, "broke off", "broke off"),
    ],
)
async def test_transport_failures_become_upstream_errors(
    wire: Wire,
    node: str,
    expected: type[UpstreamError],
    probe_message: str,
    stream_message: str,
) -> None:
    if node == "closed port":
        url = f"http://127.0.0.1:{closed_port()}"
    else:
        url = (await wire.serve(**BROKEN_NODES[node])).url
    client = wire.client(url, OllamaClient, deadlines=SHORT)
    for call, message in ((client.probe, probe_message), (lambda: drain(client), stream_message)):
        with pytest.raises(expected, match=message) as caught:
            await call()
        assert type(caught.value) is expected


async def test_an_address_the_policy_refuses_is_an_upstream_error(wire: Wire) -> None:
    node = await wire.serve(reply(b"{}"))
    async with create_http_client(allow_private=False, deadlines=DEADLINES) as strict:
        client = OllamaClient(strict, base_url=node.url)
        for call in (client.probe, lambda: drain(client)):
            with pytest.raises(UpstreamError, match="not allowed") as caught:
                await call()
            assert type(caught.value) is UpstreamError
    assert node.requests == []


async def test_a_nan_in_the_request_is_bad_input_and_nothing_is_sent(wire: Wire) -> None:
    node = await wire.serve(reply(b"", status="500 Internal Server Error"))
    with pytest.raises(BadInput, match="NaN"):
        await drain_request(wire.client(node.url, OllamaClient), ask(temperature=float("nan")))
    assert node.handlers == []  # not even a connection


async def test_token_is_sent_and_accept_encoding_is_identity(wire: Wire) -> None:
    node = await wire.serve(reply(b'{"object": "list", "data": []}'))
    await wire.client(node.url, token="t0k").probe()
    headers = request_headers(node.requests[0])
    assert headers["authorization"] == "Bearer t0k"
    assert headers["accept-encoding"] == "identity"


async def test_registry_covers_every_runtime() -> None:
    assert set(CLIENTS) == set(Runtime)
    async with create_http_client(allow_private=False, deadlines=DEADLINES) as http:
        assert isinstance(client_for("exo", http, base_url=URL), ExoClient)
        assert isinstance(client_for(Runtime.OLLAMA, http, base_url=URL + "/"), OllamaClient)
        assert client_for("openai", http, base_url=URL + "/").base_url == URL
        with pytest.raises(BadInput, match="unknown runtime"):
            client_for("vllm", http, base_url=URL)
