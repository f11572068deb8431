"""Client for OpenAI-compatible servers (llama.cpp, vLLM, LM Studio, LocalAI): /v1, SSE."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator

from infer.errors import UpstreamError
from infer.models import Runtime
from infer.nodes.clients.base import (
    ChatChunk,
    ChatRequest,
    ModelDetails,
    ModelInfo,
    Probe,
    RuntimeClient,
    Usage,
)
from infer.nodes.clients.clock import StreamClock, probe_deadline
from infer.nodes.clients.details import openai_models
from infer.nodes.clients.payloads import (
    as_list,
    as_object,
    as_text,
    finish_reason,
    messages,
    openai_features,
    optional_text,
    parse_json,
    parse_usage,
    reject_error,
    sampling,
    tool_call_deltas,
)
from infer.nodes.clients.sse import EventDecoder
from infer.nodes.clients.wire import drain, fetch_json, open_stream, read_lines

SSE = "text/event-stream"
DONE = b"[DONE]"
# Logprobs are not billed output, so the gateway's check on answers far beyond max_tokens
# does not see them: they are bounded here. An honest runtime sends one entry a token, and
# with 20 top logprobs a few KiB of event a token.
LOGPROB_ENTRIES_PER_TOKEN = 4
LOGPROB_BYTES_PER_TOKEN = 16 << 10
LOGPROB_SLACK_BYTES = 64 << 10
DEFAULT_MAX_TOKENS = 4096  # for a request that sets none (the platform always sets one)


def chat_body(request: ChatRequest, *, include_usage: bool) -> dict[str, object]:
    """The /v1/chat/completions body; `extra` goes first, so the fields we set always win."""
    body: dict[str, object] = {k: v for k, v in request.extra.items() if k != "stream_options"}
    body |= sampling(request)
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.needs:
        body |= openai_features(request)
    body |= {"model": request.model, "messages": messages(request), "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def parse_chunk(data: bytes) -> ChatChunk:
    """One streamed `chat.completion.chunk`: choice 0's text, tool calls, logprobs and
    finish reason, and usage."""
    chunk = as_object(parse_json(data), "chunk")
    reject_error(chunk)
    usage = parse_usage(chunk.get("usage"))
    choices = chunk.get("choices")
    for item in as_list([] if choices is None else choices, "choices"):
        choice = as_object(item, "choice")
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        delta = as_object({} if delta is None else delta, "choice.delta")
        content = optional_text(delta.get("content"), "delta.content") or ""
        reason = optional_text(choice.get("finish_reason"), "choice.finish_reason")
        calls = tool_call_deltas(delta.get("tool_calls"))
        logprobs = choice.get("logprobs")
        if logprobs is not None:
            tokens = as_object(logprobs, "choice.logprobs").get("content")
            logprobs = None if tokens is None else tuple(as_list(tokens, "logprobs.content"))
        return ChatChunk(
            content, None if reason is None else finish_reason(reason), usage, calls, logprobs
        )
    return ChatChunk(usage=usage)


def model_ids(document: object) -> tuple[str, ...]:
    """The ids in a /v1/models list, in order, without repeats."""
    data = as_list(as_object(document, "model list").get("data"), "model list data")
    ids = (as_text(as_object(item, "model").get("id"), "model id") for item in data)
    return tuple(dict.fromkeys(ids))


class _Answer:
    """What a stream has told beyond its text: the finish reason, usage, and [DONE].

    Logprobs are kept only when the request asked for them, and only as many as an
    answer of `max_tokens` can have.
    """

    def __init__(self, *, logprobs: bool = False, max_tokens: int | None = None) -> None:
        self.reason: str | None = None
        self.usage: Usage | None = None
        self.done = False
        self.logprobs = logprobs
        tokens = max_tokens or DEFAULT_MAX_TOKENS
        self.logprob_entries = LOGPROB_ENTRIES_PER_TOKEN * tokens + 16
        self.logprob_bytes = LOGPROB_BYTES_PER_TOKEN * tokens + LOGPROB_SLACK_BYTES

    def take(self, data: bytes) -> ChatChunk | None:
        """Absorb one event's data; return what it brings to relay (text, tool calls)."""
        if data.strip() == DONE:
            self.done = True
            return None
        chunk = parse_chunk(data)
        self.usage = chunk.usage or self.usage  # the last figure is the cumulative one
        self.reason = chunk.finish_reason or self.reason
        logprobs = chunk.logprobs if self.logprobs else None
        if logprobs:
            self.logprob_entries -= len(logprobs)
            self.logprob_bytes -= len(data)
            if self.logprob_entries < 0 or self.logprob_bytes < 0:
                raise UpstreamError("the node sent far more logprobs than max_tokens allows")
        if chunk.content or chunk.tool_calls or logprobs:
            return ChatChunk(chunk.content, None, None, chunk.tool_calls, logprobs)
        return None

    def last(self) -> ChatChunk:
        """The closing chunk; a stream that just stops, unfinished, is an error."""
        if self.reason is None and not self.done:
            raise UpstreamError("the node ended the stream before the answer was finished")
        return ChatChunk(finish_reason=self.reason or "stop", usage=self.usage)


class OpenAICompatibleClient(RuntimeClient):
    """Probes GET /v1/models; streams POST /v1/chat/completions, asking for usage.

    A base URL that already ends in /v1 is used as the API root as it is.
    """

    runtime = Runtime.OPENAI
    include_usage = True

    @property
    def api(self) -> str:
        """The path prefix of the OpenAI routes, relative to the base URL."""
        return "" if self.base_url.endswith("/v1") else "/v1"

    async def probe(self) -> Probe:
        async with probe_deadline(self.deadlines):
            started = time.perf_counter()
            names = model_ids(await fetch_json(self, f"{self.api}/models"))
            latency_ms = (time.perf_counter() - started) * 1000
        return Probe(latency_ms=latency_ms, models=tuple(ModelInfo(name) for name in names))

    async def describe(self, names: tuple[str, ...]) -> dict[str, ModelDetails]:
        """The context lengths its /v1/models list gives (vLLM's max_model_len)."""
        async with probe_deadline(self.deadlines):
            listing = await fetch_json(self, f"{self.api}/models", missing_ok=True)
        found = openai_models(listing)
        return {name: found[name] for name in names if name in found}

    async def stream_batches(self, request: ChatRequest) -> AsyncGenerator[list[ChatChunk], None]:
        clock = StreamClock(self.deadlines)
        body = chat_body(request, include_usage=self.include_usage)
        path = f"{self.api}/chat/completions"
        answer = _Answer(logprobs=bool(request.logprobs), max_tokens=request.max_tokens)
        decoder = EventDecoder()
        async with (
            open_stream(self, path, body, clock=clock, accept=SSE, model=request.model) as response,
            contextlib.aclosing(read_lines(response, clock)) as batches,
        ):
            try:
                async for lines in batches:
                    texts: list[ChatChunk] = []
                    events = False
                    try:
                        for line in lines:
                            data = decoder.feed(line)
                            if data is None:
                                continue
                            events = True
                            if piece := answer.take(data):
                                texts.append(piece)
                            if answer.done:
                                break
                    except UpstreamError:
                        if texts:
                            yield texts
                        raise
                    if texts:
                        yield texts
                    if answer.done:
                        await drain(response)
                        break
                    if events:
                        clock.mark_event()
                else:
                    data = decoder.flush()
                    if data is not None and (piece := answer.take(data)):
                        yield [piece]
            except UpstreamError:
                if answer.reason is None:
                    raise
                # The answer was whole; only usage or [DONE] was still to come.
        yield [answer.last()]
