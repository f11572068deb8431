"""Client for Ollama's native API: /api/version, /api/tags, /api/ps, /api/show, NDJSON /api/chat."""

from __future__ import annotations

import contextlib
import json
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
    ToolCallDelta,
    Usage,
)
from infer.nodes.clients.clock import StreamClock, probe_deadline
from infer.nodes.clients.details import ollama_show
from infer.nodes.clients.payloads import (
    MAX_TOOL_CALLS,
    arguments_text,
    as_list,
    as_object,
    as_text,
    malformed,
    messages,
    mint_call_id,
    optional_count,
    optional_text,
    parse_json,
    reject_error,
    sampling,
    tool_call_id,
    tool_definitions,
)
from infer.nodes.clients.wire import drain, fetch_json, open_stream, read_lines

NDJSON = "application/x-ndjson"
OLLAMA_OPTIONS = ("top_k", "min_p", "repeat_penalty")
# Most chat templates know system, user, assistant and tool only.
ROLES = {"developer": "system"}


def chat_body(request: ChatRequest) -> dict[str, object]:
    """The /api/chat body; OpenAI's fields become `options`, as in Ollama's own /v1 layer.

    Unset fields stay unset, so the model's Modelfile defaults apply.
    """
    options = sampling(request)
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    # Ollama's own sampling options, passed on as the buyer set them.
    options.update({k: v for k, v in request.extra.items() if k in OLLAMA_OPTIONS})
    body: dict[str, object] = {
        "model": request.model,
        "messages": messages(request, roles=ROLES) if not request.needs else _messages(request),
        "stream": True,
        "options": options,
    }
    if request.tools and request.tool_choice != "none":
        # Ollama has no tool_choice: a named function is the only one offered.
        forced = request.forced_tool
        body["tools"] = tool_definitions(t for t in request.tools if forced in (None, t.name))
    form = request.response_format
    if form is not None:
        body["format"] = form.schema if form.type == "json_schema" else "json"
    return body


def _messages(request: ChatRequest) -> list[dict[str, object]]:
    """Messages in Ollama's form: images as base64 beside the text, tool calls' arguments
    as objects, a tool result naming the function it answers."""
    names = {c.id: c.name for m in request.messages for c in m.tool_calls}
    found: list[dict[str, object]] = []
    for m in request.messages:
        item: dict[str, object] = {"role": ROLES.get(m.role, m.role), "content": m.content}
        if m.parts:
            item["images"] = [image.data for image in m.images]
        if m.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
            item["tool_name"] = names.get(m.tool_call_id, "")
        found.append(item)
    return found


def parse_line(line: bytes, *, calls: int = 0) -> ChatChunk:
    """One object of a streamed /api/chat answer; the one with `done` true closes it.

    The counts sit on that last object. Ollama omits a count that is zero (a prompt
    served wholly from its cache), so with either missing, usage is None. Ollama sends
    each tool call whole, its arguments as an object, often without an id: they are
    numbered from `calls` (those already sent), given an id, and their arguments
    written as JSON text, as OpenAI's are.
    """
    item = as_object(parse_json(line), "line")
    reject_error(item)
    done = item.get("done")
    if not isinstance(done, bool):
        raise malformed("done is not a boolean")
    message = item.get("message")
    content = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    if message is not None or not done:
        message = as_object(message, "message")
        content = as_text(message.get("content"), "message.content")
        if message.get("tool_calls") is not None:
            tool_calls = _tool_calls(message["tool_calls"], calls)
    if not done:
        return ChatChunk(content, None, None, tool_calls)
    reason = optional_text(item.get("done_reason"), "done_reason")
    prompt = optional_count(item.get("prompt_eval_count"), "prompt_eval_count")
    completion = optional_count(item.get("eval_count"), "eval_count")
    usage = None if prompt is None or completion is None else Usage(prompt, completion)
    return ChatChunk(content, "length" if reason == "length" else "stop", usage, tool_calls)


def _tool_calls(value: object, calls: int) -> tuple[ToolCallDelta, ...]:
    found: list[ToolCallDelta] = []
    for number, item in enumerate(as_list(value, "tool_calls"), start=calls):
        if number >= MAX_TOOL_CALLS:
            raise malformed("too many tool calls")
        call = as_object(item, "tool call")
        function = as_object(call.get("function"), "tool call function")
        arguments = as_object(function.get("arguments", {}), "tool call arguments")
        found.append(
            ToolCallDelta(
                number,
                tool_call_id(call.get("id")) or mint_call_id(),
                as_text(function.get("name"), "tool call name"),
                arguments_text(arguments, ensure_ascii=False),
            )
        )
    return tuple(found)


def model_names(document: object, what: str) -> tuple[str, ...]:
    """The names in an /api/tags or /api/ps answer, in order, without repeats."""
    models = as_list(as_object(document, what).get("models"), f"{what} models")
    names = (as_text(as_object(m, f"{what} model").get("name"), "model name") for m in models)
    return tuple(dict.fromkeys(names))


class OllamaClient(RuntimeClient):
    """Probes version, tags and running models; streams POST /api/chat as NDJSON."""

    runtime = Runtime.OLLAMA

    async def probe(self) -> Probe:
        async with probe_deadline(self.deadlines):
            started = time.perf_counter()
            about = await fetch_json(self, "/api/version", missing_ok=True)
            latency_ms = (time.perf_counter() - started) * 1000
            names = model_names(await fetch_json(self, "/api/tags"), "tags")
            # An Ollama too old to have /api/ps answers 404: then nothing counts as loaded.
            running = await fetch_json(self, "/api/ps", missing_ok=True)
        version = None if about is None else as_object(about, "version").get("version")
        loaded = set() if running is None else set(model_names(running, "ps"))
        return Probe(
            latency_ms=latency_ms,
            models=tuple(ModelInfo(name, loaded=name in loaded) for name in names),
            version=optional_text(version, "version"),
        )

    async def describe(self, names: tuple[str, ...]) -> dict[str, ModelDetails]:
        """POST /api/show for each name, all within one health-check deadline.

        A model it does not know (404) says nothing, so it cannot hold up the others.
        """
        found: dict[str, ModelDetails] = {}
        async with probe_deadline(self.deadlines):
            for name in names:
                body: dict[str, object] = {"model": name}
                shown = ollama_show(await fetch_json(self, "/api/show", body=body, missing_ok=True))
                if shown is not None:
                    found[name] = shown
        return found

    async def stream_batches(self, request: ChatRequest) -> AsyncGenerator[list[ChatChunk], None]:
        clock = StreamClock(self.deadlines)
        body = chat_body(request)
        last: ChatChunk | None = None
        calls = 0  # tool calls sent so far
        async with (
            open_stream(
                self, "/api/chat", body, clock=clock, accept=NDJSON, model=request.model
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
                        chunk = parse_line(line, calls=calls)
                        events = True
                        calls += len(chunk.tool_calls)
                        if chunk.finish_reason:
                            last = chunk._replace(content="", tool_calls=())
                            if chunk.content or chunk.tool_calls:
                                texts.append(ChatChunk(chunk.content, None, None, chunk.tool_calls))
                            break
                        if chunk.content or chunk.tool_calls:
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
        if calls and last.finish_reason == "stop":
            last = last._replace(finish_reason="tool_calls")
        yield [last]
