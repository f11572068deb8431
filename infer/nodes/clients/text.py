"""Legacy text completions: a prompt continued as it is, with no chat template.

Ollama's POST /api/generate with `raw: true` (NDJSON, the text under `response`) and an
OpenAI-compatible server's POST /v1/completions (SSE, the text under `choices[0].text`).
Exo has neither. The answer comes as the chat clients' do, in ChatChunk batches, so the
completion service relays, meters and settles it the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from infer.errors import UpstreamError
from infer.models import Runtime
from infer.nodes.clients.base import ChatChunk, ChatRequest, Deadlines, RuntimeClient, Usage
from infer.nodes.clients.clock import StreamClock
from infer.nodes.clients.ollama import OLLAMA_OPTIONS, OllamaClient
from infer.nodes.clients.openai import DONE, SSE, OpenAICompatibleClient
from infer.nodes.clients.payloads import (
    as_list,
    as_object,
    as_text,
    finish_reason,
    malformed,
    optional_count,
    optional_text,
    parse_json,
    parse_usage,
    reject_error,
    sampling,
)
from infer.nodes.clients.sse import EventDecoder
from infer.nodes.clients.wire import drain, open_stream, read_lines
from infer.nodes.transport import NodeHTTP

NDJSON = "application/x-ndjson"
TEXT_COMPLETION = frozenset({"text_completion"})


@dataclass(frozen=True)
class TextRequest(ChatRequest):
    """A legacy completion request. `messages` holds the prompt as one user message, for
    what counts a prompt (holds, metering, context); `prompt` is what the node is sent."""

    prompt: str = ""

    @property
    def needs(self) -> frozenset[str]:
        return TEXT_COMPLETION


def ollama_body(request: TextRequest) -> dict[str, object]:
    options = sampling(request)
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    options.update({k: v for k, v in request.extra.items() if k in OLLAMA_OPTIONS})
    return {
        "model": request.model,
        "prompt": request.prompt,
        "raw": True,  # no template: the prompt is continued as it stands
        "stream": True,
        "options": options,
    }


def parse_generate_line(line: bytes) -> ChatChunk:
    """One object of a streamed /api/generate answer; the one with `done` true closes it."""
    item = as_object(parse_json(line), "line")
    reject_error(item)
    done = item.get("done")
    if not isinstance(done, bool):
        raise malformed("done is not a boolean")
    content = as_text(item.get("response", ""), "response")
    if not done:
        return ChatChunk(content=content)
    reason = optional_text(item.get("done_reason"), "done_reason")
    prompt = optional_count(item.get("prompt_eval_count"), "prompt_eval_count")
    completion = optional_count(item.get("eval_count"), "eval_count")
    usage = None if prompt is None or completion is None else Usage(prompt, completion)
    return ChatChunk(content, "length" if reason == "length" else "stop", usage)


class OllamaTextClient(OllamaClient):
    """Ollama, probed as for chat; completions through POST /api/generate."""

    async def stream_batches(self, request: ChatRequest) -> AsyncGenerator[list[ChatChunk], None]:
        assert isinstance(request, TextRequest)
        clock = StreamClock(self.deadlines)
        last: ChatChunk | None = None
        body = ollama_body(request)
        async with (
            open_stream(
                self, "/api/generate", body, clock=clock, accept=NDJSON, model=request.model
            ) as response,
            contextlib.aclosing(read_lines(response, clock)) as batches,
        ):
            async for lines in batches:
                texts: list[ChatChunk] = []
                events = False
                try:
                    for line in lines:
                        if not line.strip():
                            continue
                        chunk = parse_generate_line(line)
                        events = True
                        if chunk.finish_reason:
                            last = chunk
                            break
                        if chunk.content:
                            texts.append(chunk)
                except UpstreamError:
                    if texts:
                        yield texts
                    raise
                if texts:
                    yield texts
                if last is not None:
                    await drain(response)
                    break
                if events:
                    clock.mark_event()
        if last is None:
            raise UpstreamError("the node ended the stream before the answer was finished")
        yield [last]


def openai_body(request: TextRequest) -> dict[str, object]:
    body: dict[str, object] = {k: v for k, v in request.extra.items() if k != "stream_options"}
    body |= sampling(request)
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    body |= {"model": request.model, "prompt": request.prompt, "stream": True}
    body["stream_options"] = {"include_usage": True}
    return body


def parse_text_chunk(data: bytes) -> ChatChunk:
    """One streamed `text_completion` chunk: choice 0's text and finish reason, and usage."""
    chunk = as_object(parse_json(data), "chunk")
    reject_error(chunk)
    usage = parse_usage(chunk.get("usage"))
    choices = chunk.get("choices")
    for item in as_list([] if choices is None else choices, "choices"):
        choice = as_object(item, "choice")
        if choice.get("index", 0) != 0:
            continue
        text = optional_text(choice.get("text"), "choice.text") or ""
        reason = optional_text(choice.get("finish_reason"), "choice.finish_reason")
        return ChatChunk(text, None if reason is None else finish_reason(reason), usage)
    return ChatChunk(usage=usage)


class OpenAITextClient(OpenAICompatibleClient):
    """An OpenAI-compatible server, probed as for chat; completions through /v1/completions."""

    async def stream_batches(self, request: ChatRequest) -> AsyncGenerator[list[ChatChunk], None]:
        assert isinstance(request, TextRequest)
        clock = StreamClock(self.deadlines)
        reason: str | None = None
        usage: Usage | None = None
        done = False
        decoder = EventDecoder()
        path = f"{self.api}/completions"
        body = openai_body(request)
        async with (
            open_stream(self, path, body, clock=clock, accept=SSE, model=request.model) as response,
            contextlib.aclosing(read_lines(response, clock)) as batches,
        ):
            try:
                async for lines in batches:
                    texts: list[ChatChunk] = []
                    events = False
                    for line in lines:
                        data = decoder.feed(line)
                        if data is None:
                            continue
                        events = True
                        if data.strip() == DONE:
                            done = True
                            break
                        chunk = parse_text_chunk(data)
                        usage = chunk.usage or usage  # the last figure is the cumulative one
                        reason = chunk.finish_reason or reason
                        if chunk.content:
                            texts.append(ChatChunk(content=chunk.content))
                    if texts:
                        yield texts
                    if done:
                        await drain(response)
                        break
                    if events:
                        clock.mark_event()
                else:  # the body ended; an event without its blank line still counts
                    data = decoder.flush()
                    if data is not None and data.strip() != DONE:
                        chunk = parse_text_chunk(data)
                        usage = chunk.usage or usage
                        reason = chunk.finish_reason or reason
                        if chunk.content:
                            yield [ChatChunk(content=chunk.content)]
            except UpstreamError:
                if reason is None:
                    raise
                # The answer was whole; only usage or [DONE] was still to come.
        if reason is None and not done:
            raise UpstreamError("the node ended the stream before the answer was finished")
        yield [ChatChunk(finish_reason=reason or "stop", usage=usage)]


TEXT_CLIENTS: dict[Runtime, type[RuntimeClient]] = {
    Runtime.OLLAMA: OllamaTextClient,
    Runtime.OPENAI: OpenAITextClient,
}


def text_client_for(
    runtime: Runtime | str,
    http: NodeHTTP,
    *,
    base_url: str,
    token: str | None = None,
    deadlines: Deadlines | None = None,
) -> RuntimeClient:
    """The text-completion client for a node's runtime (routing sends none to others)."""
    client_class = TEXT_CLIENTS.get(Runtime(runtime))
    if client_class is None:
        raise UpstreamError(f"a {Runtime(runtime).value} runtime has no text completions")
    return client_class(http, base_url=base_url, token=token, deadlines=deadlines)
