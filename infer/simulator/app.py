"""The simulator's HTTP app: Ollama's /api/* and OpenAI's /v1/*, with fault injection."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from infer.simulator import embeddings
from infer.simulator.features import ToolCall, chat_capabilities, plan
from infer.simulator.models import (
    JSON,
    KEEP_ALIVE,
    NDJSON,
    OLLAMA_VERSION,
    SSE,
    Model,
    SimulatorConfig,
    compose,
    count_prompt_tokens,
    dumps,
    full_name,
    json_response,
    timestamp,
)
from infer.simulator.requests import (
    Dropped,
    Failure,
    Job,
    load_body,
    parse_ollama_chat,
    parse_ollama_generate,
    parse_openai_chat,
)


class _Generation:
    """One answer being produced: its text, pacing, fault points and Ollama metrics."""

    def __init__(self, config: SimulatorConfig, job: Job, seed: int, started: int) -> None:
        rng = random.Random(f"{seed}\x00" + "\x00".join(job.contents))  # noqa: S311
        self.completion = compose(rng, job.limit, config.length_range)
        self.prompt_tokens = count_prompt_tokens(job.contents)
        self.tool_call: ToolCall | None = None
        if job.features is not None:
            self.prompt_tokens += job.features.prompt_tokens
            planned = plan(job.features, job.limit)
            if planned is not None:
                self.completion, self.tool_call = planned.completion, planned.tool_call
        self.config = config
        self.job = job
        self.started = started
        self.loaded = self.first = self.done = time.perf_counter_ns()

    @property
    def paced(self) -> bool:
        """Tokens come with a time to first token or at a set rate, not all at once."""
        return bool(self.config.ttft_ms or self.config.tokens_per_second)

    @property
    def text(self) -> str:
        return "".join(self.completion.pieces)

    async def pieces(self) -> AsyncIterator[str]:
        """Yields each token at the configured pace; raises Dropped where configured."""
        rate, drop = self.config.tokens_per_second, self.config.drop_after_tokens
        if self.config.ttft_ms:
            await anyio.sleep(self.config.ttft_ms / 1000)
        self.first = time.perf_counter_ns()
        begin = anyio.current_time()
        for index, piece in enumerate(self.completion.pieces):
            if index == drop:
                raise Dropped
            if rate and index:
                # Deadlines from the first token, so sleep overhead does not accumulate.
                await anyio.sleep(max(0.0, begin + index / rate - anyio.current_time()))
            yield piece
        self.done = time.perf_counter_ns()

    def metrics(self) -> dict[str, int]:
        return {
            "total_duration": max(1, self.done - self.started),
            "load_duration": max(1, self.loaded - self.started),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": max(1, self.first - self.loaded),
            "eval_count": len(self.completion.pieces),
            "eval_duration": max(1, self.done - self.first),
        }

    def usage(self) -> dict[str, int]:
        completion = len(self.completion.pieces)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


class _Stream(StreamingResponse):
    """A streamed body whose headers wait for the first chunk, as Ollama's do.

    The stream stops when the client goes away; on Dropped it returns without ending
    the body, so the server closes the connection mid-stream. With no pacing (`paced`
    false) the whole answer is ready at once and goes out in one write, as a fast
    server's tokens leave in few TCP segments, instead of one write per token.
    """

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str, *, paced: bool) -> None:
        super().__init__(chunks, headers={"content-type": media_type})
        self.chunks = chunks
        self.paced = paced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.paced:
            await self._all_at_once(send)
            return
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
            await self._pump(send)
            group.cancel_scope.cancel()

    async def _all_at_once(self, send: Send) -> None:
        held: list[bytes] = []
        dropped = False
        try:
            async for chunk in self.chunks:
                held.append(chunk)
        except Dropped:
            dropped = True
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        body = b"".join(held)
        await send({"type": "http.response.body", "body": body, "more_body": dropped})

    async def _pump(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        started = False
        try:
            async for chunk in self.chunks:
                if not started:
                    await send(start)
                    started = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Dropped:
            if not started:
                await send(start)
            return
        if not started:
            await send(start)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Truncated(Response):
    """A body announced in full but cut in half, then the connection is closed."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send(
            {
                "type": "http.response.body",
                "body": self.body[: len(self.body) // 2],
                "more_body": True,
            }
        )


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    await _until_disconnect(receive)
    scope.cancel()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _ollama_error(failure: Failure) -> Response:
    return json_response({"error": failure.message}, failure.status)


def _openai_error(failure: Failure) -> Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(failure.status, "api_error")
    error = {"message": failure.message, "type": kind, "param": None, "code": None}
    return json_response({"error": error}, failure.status)


class _Simulator:
    """The state of one simulator app: its models, recent use and random source."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.models = {m.name: m for m in map(Model.from_name, map(full_name, config.models))}
        self.modified_at = datetime.now(UTC)
        self.last_used: dict[str, datetime] = {}
        self.random = random.Random(config.seed)  # noqa: S311 (made-up text, not secrets)

    def routes(self) -> list[Route]:
        return [
            Route("/", self.root),
            Route("/api/version", self.version),
            Route("/api/tags", self.tags),
            Route("/api/ps", self.ps),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/chat", self.ollama_chat, methods=["POST"]),
            Route("/api/generate", self.ollama_generate, methods=["POST"]),
            Route("/v1/models", self.openai_models),
            Route("/v1/models/{name:path}", self.openai_model),
            Route("/v1/chat/completions", self.openai_chat, methods=["POST"]),
            Route("/api/embed", self.ollama_embed, methods=["POST"]),
            Route("/v1/embeddings", self.openai_embeddings, methods=["POST"]),
        ]

    def model(self, name: str) -> Model:
        model = self.models.get(full_name(name))
        if model is None:
            raise Failure(404, f"model '{name}' not found")
        return model

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return json_response({"version": OLLAMA_VERSION})

    async def tags(self, request: Request) -> Response:
        modified = timestamp(self.modified_at)
        models = [
            {"name": m.name, "model": m.name, "modified_at": modified, "size": m.size}
            | {"digest": m.digest, "details": m.details()}
            for m in self.models.values()
        ]
        return json_response({"models": models})

    async def ps(self, request: Request) -> Response:
        now = datetime.now(UTC)
        loaded = sorted(
            ((used + KEEP_ALIVE, self.models[name]) for name, used in self.last_used.items()),
            key=lambda item: item[0],
            reverse=True,
        )
        models = [
            {"name": m.name, "model": m.name, "size": m.size, "digest": m.digest}
            | {"details": m.details(), "expires_at": timestamp(expires)}
            | {"size_vram": m.size, "context_length": 4096}
            for expires, m in loaded
            if expires > now
        ]
        return json_response({"models": models})

    async def show(self, request: Request) -> Response:
        try:
            data = load_body(await request.body())
            model = self.model(data["model"])
        except Failure as failure:
            return _ollama_error(failure)
        return json_response(
            {
                "modelfile": f"# Simulated by infer\nFROM {model.name}\n",
                "parameters": "num_ctx                        4096",
                "template": "{{ .Prompt }}",
                "details": model.details(),
                "model_info": {
                    "general.architecture": model.family,
                    f"{model.family}.context_length": 8192,
                },
                "capabilities": (
                    embeddings.capabilities(model.name)
                    if embeddings.is_embedding_model(model.name)
                    else chat_capabilities(model.name)
                ),
                "modified_at": timestamp(self.modified_at),
            }
        )

    async def ollama_embed(self, request: Request) -> Response:
        return await embeddings.ollama_embed(request, self._served, _ollama_error)

    async def openai_embeddings(self, request: Request) -> Response:
        return await embeddings.openai_embeddings(request, self._served, _openai_error)

    def _served(self, name: str) -> str:
        return self.model(name).name

    async def openai_models(self, request: Request) -> Response:
        created = int(self.modified_at.timestamp())
        data = [
            {"id": m.name, "object": "model", "created": created, "owned_by": m.owner()}
            for m in self.models.values()
        ]
        return json_response({"object": "list", "data": data})

    async def openai_model(self, request: Request) -> Response:
        try:
            model = self.model(request.path_params["name"])
        except Failure as failure:
            return _openai_error(failure)
        created = int(self.modified_at.timestamp())
        return json_response(
            {"id": model.name, "object": "model", "created": created, "owned_by": model.owner()}
        )

    async def _start(
        self, request: Request, parse: Callable[[dict[str, Any]], Job]
    ) -> Job | _Generation | None:
        """Parses, validates and injects faults; None once a hung client has gone away."""
        started = time.perf_counter_ns()
        body = await request.body()
        if self.config.hang:
            await _until_disconnect(request.receive)
            return None
        job = parse(load_body(body))
        model = self.model(job.model)
        if self.config.error_rate and self.random.random() < self.config.error_rate:
            raise Failure(500, "simulated failure (error_rate)")
        self.last_used[model.name] = datetime.now(UTC)
        if not job.contents:
            return job
        seed = job.seed if job.seed is not None else self.config.seed
        seed = seed if seed is not None else self.random.getrandbits(64)
        return _Generation(self.config, job, seed, started)

    async def ollama_chat(self, request: Request) -> Response:
        return await self._ollama(request, parse_ollama_chat, "message")

    async def ollama_generate(self, request: Request) -> Response:
        return await self._ollama(request, parse_ollama_generate, "response")

    async def _ollama(
        self, request: Request, parse: Callable[[dict[str, Any]], Job], key: str
    ) -> Response:
        try:
            started = await self._start(request, parse)
        except Failure as failure:
            return _ollama_error(failure)
        if started is None:
            return Response(status_code=499)
        if isinstance(started, Job):  # no messages: Ollama just loads the model
            empty = _ollama_object(started.model, key, "")
            return json_response(empty | {"done_reason": "load", "done": True})
        if started.job.stream:
            return _Stream(_ollama_lines(started, key), NDJSON, paced=started.paced)
        try:
            async for _ in started.pieces():
                pass
        except Dropped:
            return _Truncated(dumps(_ollama_final(started, key, started.text)), media_type=JSON)
        if started.tool_call is not None:
            final = _ollama_final(started, key, "")
            final[key]["tool_calls"] = _ollama_tool_calls(started.tool_call)
            return json_response(final)
        return json_response(_ollama_final(started, key, started.text))

    async def openai_chat(self, request: Request) -> Response:
        try:
            started = await self._start(request, parse_openai_chat)
        except Failure as failure:
            return _openai_error(failure)
        if started is None:
            return Response(status_code=499)
        assert isinstance(started, _Generation)  # OpenAI requests always carry messages
        completion_id = f"chatcmpl-{self.random.getrandbits(40):x}"
        if started.job.stream:
            return _Stream(_openai_events(started, completion_id), SSE, paced=started.paced)
        try:
            async for _ in started.pieces():
                pass
        except Dropped:
            return _Truncated(dumps(_openai_completion(started, completion_id)), media_type=JSON)
        return json_response(_openai_completion(started, completion_id))


def _ollama_object(model: str, key: str, content: str) -> dict[str, Any]:
    value: object = {"role": "assistant", "content": content} if key == "message" else content
    return {"model": model, "created_at": timestamp(), key: value}


def _ollama_final(generation: _Generation, key: str, content: str) -> dict[str, Any]:
    final = _ollama_object(generation.job.model, key, content)
    reason = generation.completion.done_reason
    final |= {"done_reason": "stop" if reason == "tool_calls" else reason, "done": True}
    return final | generation.metrics()


def _ollama_tool_calls(call: ToolCall) -> list[dict[str, Any]]:
    """As Ollama sends them: whole, the arguments an object, no id."""
    return [{"function": {"name": call.name, "arguments": json.loads(call.arguments)}}]


async def _ollama_lines(generation: _Generation, key: str) -> AsyncIterator[bytes]:
    model = generation.job.model
    call = generation.tool_call
    async for piece in generation.pieces():
        if call is None:
            yield dumps(_ollama_object(model, key, piece) | {"done": False}) + b"\n"
    if call is not None:  # Ollama parses the call once the model has written all of it
        line = _ollama_object(model, key, "")
        line[key]["tool_calls"] = _ollama_tool_calls(call)
        yield dumps(line | {"done": False}) + b"\n"
    yield dumps(_ollama_final(generation, key, "")) + b"\n"


def _openai_chunk(
    generation: _Generation, completion_id: str, choices: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": generation.job.model,
        "system_fingerprint": "fp_ollama",
        "choices": choices,
    }


async def _openai_events(generation: _Generation, completion_id: str) -> AsyncIterator[bytes]:
    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + dumps(payload) + b"\n\n"

    def choice(content: str, finish_reason: str | None) -> list[dict[str, Any]]:
        delta = {"role": "assistant", "content": content}
        return [{"index": 0, "delta": delta, "finish_reason": finish_reason}]

    def calling(delta: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "finish_reason": None}]

    call = generation.tool_call
    if call is not None:  # as OpenAI streams a call: id and name, then the arguments
        opening = {"index": 0, "id": call.id, "type": "function"}
        opening["function"] = {"name": call.name, "arguments": ""}
        delta = {"role": "assistant", "content": None, "tool_calls": [opening]}
        yield event(_openai_chunk(generation, completion_id, calling(delta)))
    async for piece in generation.pieces():
        if call is None:
            yield event(_openai_chunk(generation, completion_id, choice(piece, None)))
        else:
            fragment = {"index": 0, "function": {"arguments": piece}}
            yield event(
                _openai_chunk(generation, completion_id, calling({"tool_calls": [fragment]}))
            )
    done_reason = generation.completion.done_reason
    yield event(_openai_chunk(generation, completion_id, choice("", done_reason)))
    if generation.job.include_usage:
        yield event(_openai_chunk(generation, completion_id, []) | {"usage": generation.usage()})
    yield b"data: [DONE]\n\n"


def _openai_completion(generation: _Generation, completion_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": generation.text}
    if generation.tool_call is not None:
        call = generation.tool_call
        function = {"name": call.name, "arguments": call.arguments}
        message = {"role": "assistant", "content": None}
        message["tool_calls"] = [{"id": call.id, "type": "function", "function": function}]
    choice = {"index": 0, "message": message, "finish_reason": generation.completion.done_reason}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": generation.job.model,
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
        "usage": generation.usage(),
    }


async def _not_found(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer as Ollama's router does."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    text = {404: "404 page not found", 405: "405 method not allowed"}.get(status, str(exc))
    return PlainTextResponse(text, status_code=status)


def create_simulator_app(config: SimulatorConfig | None = None) -> Starlette:
    """An ASGI app speaking Ollama's native and OpenAI-compatible APIs."""
    simulator = _Simulator(config or SimulatorConfig())
    return Starlette(routes=simulator.routes(), exception_handlers={HTTPException: _not_found})
