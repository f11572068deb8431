"""The runtime clients against real servers on loopback: the simulator and tests/runtimes.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from runtimes import SECRET, USAGE_PROMPT_TOKENS, Dialect, FakeRuntime

from infer.errors import UpstreamError, UpstreamTimeout
from infer.models import Runtime
from infer.nodes.clients import client_for
from infer.nodes.clients.base import ChatChunk, ChatMessage, ChatRequest, Deadlines, Usage
from infer.nodes.http import create_http_client
from infer.nodes.transport import NodeHTTP
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

DEADLINES = Deadlines(connect=2, first_byte=5, idle=5, total=30, health=5)
SHORT = Deadlines(connect=1, first_byte=0.5, idle=0.5, total=5, health=0.5)
SLACK = 1.0  # seconds a deadline may be overshot on a busy machine
MODEL = "llama3.2:1b"
RUNTIMES: dict[Dialect, Runtime] = {
    "ollama": Runtime.OLLAMA,
    "exo": Runtime.EXO,
    "openai": Runtime.OPENAI,
}
ALL_DIALECTS = pytest.mark.parametrize("dialect", list(RUNTIMES))


def ask(text: str = "Why is the sky blue?", **fields: Any) -> ChatRequest:
    return ChatRequest(
        model=fields.pop("model", MODEL), messages=(ChatMessage("user", text),), **fields
    )


@pytest.fixture
async def http() -> AsyncIterator[NodeHTTP]:
    async with create_http_client(allow_private=True, deadlines=DEADLINES) as client:
        yield client


@contextlib.contextmanager
def fake(dialect: Dialect = "openai", **behaviour: Any) -> Iterator[tuple[FakeRuntime, str]]:
    runtime = FakeRuntime(dialect, **behaviour)
    with serve_in_thread(runtime) as url:
        yield runtime, url


def runtime_client(http: NodeHTTP, dialect: Dialect, url: str, **kwargs: Any) -> Any:
    return client_for(RUNTIMES[dialect], http, base_url=url, **kwargs)


async def collect(
    stream: AsyncIterator[ChatChunk], into: list[ChatChunk] | None = None
) -> list[ChatChunk]:
    chunks = [] if into is None else into
    async for chunk in stream:
        chunks.append(chunk)
    return chunks


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(chunk.content for chunk in chunks)


async def until(condition: Any, within: float = 3.0) -> bool:
    """Poll a condition that another thread (the server's) makes true."""
    deadline = time.monotonic() + within
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return bool(condition())


# --- Ollama, against the simulator ---------------------------------------------------------


async def direct_ollama_chat(url: str, request: ChatRequest, options: dict[str, Any]) -> Any:
    body = {"model": request.model, "stream": False, "options": options}
    body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
    async with httpx.AsyncClient() as plain:
        return (await plain.post(f"{url}/api/chat", json=body)).json()


async def test_ollama_probe_reports_version_models_and_what_is_loaded(
    http: NodeHTTP,
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL, "qwen2.5:7b"))) as url:
        client = client_for(Runtime.OLLAMA, http, base_url=url, deadlines=DEADLINES)
        before = await client.probe()
        await collect(client.stream_chat(ask()))
        after = await client.probe()
    assert before.version == "0.12.0"
    assert before.latency_ms > 0
    assert [(m.name, m.loaded) for m in before.models] == [(MODEL, False), ("qwen2.5:7b", False)]
    assert [(m.name, m.loaded) for m in after.models] == [(MODEL, True), ("qwen2.5:7b", False)]


async def test_ollama_relays_exactly_what_a_direct_call_returns(http: NodeHTTP) -> None:
    request = ask(seed=42, temperature=0.2)
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,))) as url:
        direct = await direct_ollama_chat(url, request, {"seed": 42})
        chunks = await collect(client_for("ollama", http, base_url=url).stream_chat(request))
    assert text_of(chunks) == direct["message"]["content"]
    assert chunks[-1].usage == Usage(direct["prompt_eval_count"], direct["eval_count"])
    assert chunks[-1].finish_reason == direct["done_reason"] == "stop"
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_ollama_honours_max_tokens(http: NodeHTTP) -> None:
    request = ask(seed=3, max_tokens=5)
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,))) as url:
        direct = await direct_ollama_chat(url, request, {"seed": 3, "num_predict": 5})
        chunks = await collect(client_for("ollama", http, base_url=url).stream_chat(request))
    assert text_of(chunks) == direct["message"]["content"]
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage == Usage(direct["prompt_eval_count"], 5)


async def test_ollama_first_byte_deadline_gives_upstream_timeout(
    http: NodeHTTP,
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(hang=True)) as url:
        client = client_for("ollama", http, base_url=url, deadlines=SHORT)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.5 s"):
            await collect(client.stream_chat(ask()))
    assert time.monotonic() - started < SHORT.first_byte + SLACK


async def test_ollama_drop_mid_stream_is_an_upstream_error(http: NodeHTTP) -> None:
    chunks: list[ChatChunk] = []
    with serve_simulator_in_thread(SimulatorConfig(drop_after_tokens=3)) as url:
        client = client_for("ollama", http, base_url=url, deadlines=SHORT)
        with pytest.raises(UpstreamError) as caught:
            await collect(client.stream_chat(ask(seed=1)), chunks)
    assert not isinstance(caught.value, UpstreamTimeout)
    assert len(chunks) == 3


async def test_ollama_500_does_not_echo_the_body(http: NodeHTTP) -> None:
    with (
        serve_simulator_in_thread(SimulatorConfig(error_rate=1)) as url,
        pytest.raises(UpstreamError) as caught,
    ):
        await collect(client_for("ollama", http, base_url=url).stream_chat(ask()))
    assert caught.value.message == "the node answered HTTP 500 to /api/chat"


async def test_ollama_unknown_model_is_an_upstream_error(http: NodeHTTP) -> None:
    client_request = ask(model="nope:1b")
    with (
        serve_simulator_in_thread() as url,
        pytest.raises(UpstreamError, match="does not serve model 'nope:1b'"),
    ):
        await collect(client_for("ollama", http, base_url=url).stream_chat(client_request))


# --- Exo and OpenAI-compatible servers ------------------------------------------------------


async def test_exo_relays_text_and_usage_from_the_finish_chunk(http: NodeHTTP) -> None:
    with fake("exo") as (runtime, url):
        chunks = await collect(runtime_client(http, "exo", url).stream_chat(ask(temperature=0.5)))
    assert text_of(chunks) == "".join(runtime.pieces)
    assert chunks[-1] == ChatChunk(finish_reason="stop", usage=Usage(USAGE_PROMPT_TOKENS, 5))
    body = runtime.chats()[0].json()
    assert body["stream"] is True
    assert body["temperature"] == 0.5
    assert "stream_options" not in body


async def test_exo_probe_offers_the_models_with_a_running_instance(
    http: NodeHTTP,
) -> None:
    with fake("exo", models=("a", "b"), running=("b",)) as (_, url):
        probe = await runtime_client(http, "exo", url).probe()
    assert [(m.name, m.loaded) for m in probe.models] == [("b", True)]


async def test_exo_probe_without_instance_listing_offers_the_model_list(
    http: NodeHTTP,
) -> None:
    with fake("exo", models=("a", "b")) as (_, url):
        probe = await runtime_client(http, "exo", url).probe()
    assert [(m.name, m.loaded) for m in probe.models] == [("a", False), ("b", False)]


async def test_exo_probe_falls_back_to_healthcheck(http: NodeHTTP) -> None:
    with fake("exo", legacy=True) as (runtime, url):
        probe = await runtime_client(http, "exo", url).probe()
    assert probe.models == ()
    assert "/healthcheck" in [s.path for s in runtime.seen]


async def test_exo_keepalive_comments_do_not_count_as_a_first_byte(
    http: NodeHTTP,
) -> None:
    with fake("exo", fault="comments_only") as (_, url):
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await collect(runtime_client(http, "exo", url, deadlines=SHORT).stream_chat(ask()))
    assert time.monotonic() - started < SHORT.first_byte + SLACK


async def test_openai_asks_for_usage_and_reads_it_from_the_final_chunk(
    http: NodeHTTP,
) -> None:
    with fake("openai") as (runtime, url):
        chunks = await collect(runtime_client(http, "openai", url).stream_chat(ask()))
    assert text_of(chunks) == "".join(runtime.pieces)
    assert chunks[-1] == ChatChunk(finish_reason="stop", usage=Usage(USAGE_PROMPT_TOKENS, 5))
    assert runtime.chats()[0].json()["stream_options"] == {"include_usage": True}


async def test_openai_without_usage_reports_none(http: NodeHTTP) -> None:
    with fake("openai", usage=False) as (runtime, url):
        chunks = await collect(runtime_client(http, "openai", url).stream_chat(ask()))
    assert text_of(chunks) == "".join(runtime.pieces)
    assert chunks[-1] == ChatChunk(finish_reason="stop", usage=None)


async def test_openai_base_url_may_end_in_v1(http: NodeHTTP) -> None:
    with fake("openai", models=("m1",)) as (runtime, url):
        client = runtime_client(http, "openai", f"{url}/v1")
        probe = await client.probe()
        await collect(client.stream_chat(ask()))
    assert [m.name for m in probe.models] == ["m1"]
    assert [s.path for s in runtime.seen] == ["/v1/models", "/v1/chat/completions"]


@ALL_DIALECTS
async def test_max_tokens_is_honoured(http: NodeHTTP, dialect: Dialect) -> None:
    with fake(dialect) as (runtime, url):
        chunks = await collect(runtime_client(http, dialect, url).stream_chat(ask(max_tokens=2)))
    assert text_of(chunks) == "".join(runtime.pieces[:2])
    assert chunks[-1] == ChatChunk(finish_reason="length", usage=Usage(USAGE_PROMPT_TOKENS, 2))


@ALL_DIALECTS
async def test_bearer_token_goes_with_every_request(http: NodeHTTP, dialect: Dialect) -> None:
    with fake(dialect) as (runtime, url):
        client = runtime_client(http, dialect, url, token="node-token-1")
        await client.probe()
        await collect(client.stream_chat(ask()))
        count = len(runtime.seen)
        await runtime_client(http, dialect, url).probe()
    assert count >= 2
    assert all(
        s.headers.get("authorization") == "Bearer node-token-1" for s in runtime.seen[:count]
    )
    assert all("authorization" not in s.headers for s in runtime.seen[count:])
    assert runtime.seen[0].headers["user-agent"].startswith("infer/")


# --- Misbehaving runtimes -------------------------------------------------------------------


@ALL_DIALECTS
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("bad_json", "invalid JSON"),
        ("not_strict_json", "invalid JSON"),
        ("wrong_types", "content is not a string"),
        ("error_event", "reported an error"),
        ("truncated", "before the answer was finished"),
        ("endless_line", "longer than 1024 KiB"),
        ("redirect", "HTTP 302"),
        ("gzip", "compressed"),
    ],
)
async def test_a_bad_answer_is_an_upstream_error(
    http: NodeHTTP, dialect: Dialect, fault: Any, message: str
) -> None:
    with (
        fake(dialect, fault=fault) as (runtime, url),
        pytest.raises(UpstreamError, match=message) as caught,
    ):
        await collect(runtime_client(http, dialect, url, deadlines=SHORT).stream_chat(ask()))
    assert SECRET not in str(caught.value)
    if fault == "redirect":
        assert len(runtime.seen) == 1


@ALL_DIALECTS
async def test_probe_does_not_follow_a_redirect(http: NodeHTTP, dialect: Dialect) -> None:
    with (
        fake(dialect, fault="redirect") as (runtime, url),
        pytest.raises(UpstreamError, match="HTTP 302"),
    ):
        await runtime_client(http, dialect, url).probe()
    assert len(runtime.seen) == 1  # one call answered 302; nothing went to /elsewhere


@ALL_DIALECTS
async def test_500_message_does_not_echo_the_body(http: NodeHTTP, dialect: Dialect) -> None:
    with (
        fake(dialect, fault="error_500") as (_, url),
        pytest.raises(UpstreamError, match="HTTP 500") as caught,
    ):
        await collect(runtime_client(http, dialect, url).stream_chat(ask()))
    assert SECRET not in caught.value.message


@pytest.mark.parametrize("dialect", ["exo", "openai"])
async def test_hang_before_headers_gives_upstream_timeout(http: NodeHTTP, dialect: Dialect) -> None:
    with fake(dialect, fault="hang") as (_, url):
        client = runtime_client(http, dialect, url, deadlines=SHORT)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await collect(client.stream_chat(ask()))
        with pytest.raises(UpstreamTimeout, match="health check"):
            await client.probe()
    assert time.monotonic() - started < SHORT.first_byte + SHORT.health + 2 * SLACK


@ALL_DIALECTS
async def test_bytes_that_never_make_an_event_hit_the_first_byte_deadline(
    http: NodeHTTP, dialect: Dialect
) -> None:
    with fake(dialect, fault="drip") as (_, url):
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await collect(runtime_client(http, dialect, url, deadlines=SHORT).stream_chat(ask()))
    assert time.monotonic() - started < SHORT.first_byte + SLACK


@ALL_DIALECTS
async def test_silence_mid_stream_is_a_stall(http: NodeHTTP, dialect: Dialect) -> None:
    chunks: list[ChatChunk] = []
    with fake(dialect, fault="stall") as (_, url):
        client = runtime_client(http, dialect, url, deadlines=SHORT)
        with pytest.raises(UpstreamError, match="stalled") as caught:
            await collect(client.stream_chat(ask()), chunks)
    assert not isinstance(caught.value, UpstreamTimeout)
    assert text_of(chunks) == "onetwo"


@ALL_DIALECTS
async def test_silence_after_the_finish_keeps_the_whole_answer(
    http: NodeHTTP, dialect: Dialect
) -> None:
    with fake(dialect, fault="linger") as (_, url):
        client = runtime_client(http, dialect, url, deadlines=SHORT)
        chunks = await collect(client.stream_chat(ask()))
    assert text_of(chunks) == "onetwo"
    assert chunks[-1] == ChatChunk(finish_reason="stop", usage=None)


@ALL_DIALECTS
async def test_total_deadline_ends_an_endless_answer(http: NodeHTTP, dialect: Dialect) -> None:
    deadlines = Deadlines(first_byte=0.5, idle=0.5, total=1.0, health=0.5)
    chunks: list[ChatChunk] = []
    with fake(dialect, fault="endless_events") as (_, url):
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="finish within 1 s"):
            await collect(
                runtime_client(http, dialect, url, deadlines=deadlines).stream_chat(ask()), chunks
            )
    assert time.monotonic() - started < deadlines.total + SLACK
    assert len(chunks) > 5


@pytest.mark.parametrize("dialect", ["exo", "openai"])
async def test_an_endless_probe_body_is_capped(http: NodeHTTP, dialect: Dialect) -> None:
    with (
        fake(dialect, fault="huge_probe") as (_, url),
        pytest.raises(UpstreamError, match="larger than 4 MiB"),
    ):
        await runtime_client(http, dialect, url).probe()


@ALL_DIALECTS
async def test_the_guard_refuses_loopback_without_allow_private(dialect: Dialect) -> None:
    async with create_http_client(allow_private=False, deadlines=DEADLINES) as strict:
        with fake(dialect) as (runtime, url):
            client = runtime_client(strict, dialect, url)
            with pytest.raises(UpstreamError, match="not allowed"):
                await client.probe()
            with pytest.raises(UpstreamError, match="not allowed"):
                await collect(client.stream_chat(ask()))
    assert runtime.seen == []


# --- Cancellation ---------------------------------------------------------------------------


@ALL_DIALECTS
async def test_closing_the_stream_disconnects_the_upstream(
    http: NodeHTTP, dialect: Dialect
) -> None:
    with fake(dialect, pieces=("x",) * 200, interval=0.02) as (runtime, url):
        stream = runtime_client(http, dialect, url).stream_chat(ask())
        for _ in range(3):
            await anext(stream)
        await stream.aclose()
        assert await until(runtime.disconnected.is_set)


@ALL_DIALECTS
async def test_cancelling_the_consumer_disconnects_the_upstream(
    http: NodeHTTP, dialect: Dialect
) -> None:
    chunks: list[ChatChunk] = []
    with fake(dialect, pieces=("x",) * 200, interval=0.02) as (runtime, url):
        task = asyncio.create_task(
            collect(runtime_client(http, dialect, url).stream_chat(ask()), chunks)
        )
        assert await until(lambda: len(chunks) >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await until(runtime.disconnected.is_set)


@ALL_DIALECTS
async def test_a_whole_answer_leaves_the_connection_reusable(
    http: NodeHTTP, dialect: Dialect
) -> None:
    with fake(dialect) as (runtime, url):
        client = runtime_client(http, dialect, url)
        await collect(client.stream_chat(ask()))
        await collect(client.stream_chat(ask()))
    assert runtime.seen[0].peer == runtime.seen[1].peer


@ALL_DIALECTS
async def test_a_whole_answer_is_not_a_disconnect(http: NodeHTTP, dialect: Dialect) -> None:
    with fake(dialect) as (runtime, url):
        await collect(runtime_client(http, dialect, url).stream_chat(ask()))
        await asyncio.sleep(0.1)
    assert not runtime.disconnected.is_set()
