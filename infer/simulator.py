"""An Ollama-compatible runtime that streams made-up text, for demos, tests and benchmarks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

OLLAMA_VERSION = "0.12.0"
TOKENS_PER_MESSAGE = 4
KEEP_ALIVE = timedelta(minutes=5)
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
JSON = "application/json; charset=utf-8"

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([bm])")
_WORDS = (
    "the", "a", "model", "token", "stream", "node", "answer", "light", "river", "signal",
    "market", "simple", "quiet", "fast", "layer", "weight", "gradient", "network", "reason",
    "because", "and", "but", "so", "it", "is", "was", "can", "will", "every", "some", "many",
    "blue", "green", "bright", "small", "large", "old", "new", "idea", "question", "context",
    "window", "memory", "sky", "scatter", "wave", "field", "of", "in", "on", "with", "from",
    "through", "between", "always", "often", "rarely", "clearly", "perhaps", "together",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """What the simulator serves, how fast, and how it misbehaves.

    `tokens_per_second` None or 0 streams without delay; `error_rate` is the fraction of
    chat requests answered 500; `hang` never answers chat requests; `drop_after_tokens`
    cuts the connection after that many tokens; `length_range` bounds the natural
    completion length when the request sets no limit.
    """

    models: tuple[str, ...] = ("llama3.2:1b",)
    tokens_per_second: float | None = None
    ttft_ms: float = 0
    error_rate: float = 0
    hang: bool = False
    drop_after_tokens: int | None = None
    seed: int | None = None
    length_range: tuple[int, int] = (16, 64)

    def __post_init__(self) -> None:
        low, high = self.length_range
        problems = [
            (not self.models, "at least one model is required"),
            ((self.tokens_per_second or 0) < 0, "tokens_per_second must not be negative"),
            (self.ttft_ms < 0, "ttft_ms must not be negative"),
            (not 0 <= self.error_rate <= 1, "error_rate must be between 0 and 1"),
            ((self.drop_after_tokens or 0) < 0, "drop_after_tokens must not be negative"),
            (not 1 <= low <= high, "length_range must be (low, high) with 1 <= low <= high"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(message)


def count_prompt_tokens(contents: Sequence[str]) -> int:
    """Prompt tokens of a request: per message, 4 plus one per word or punctuation mark."""
    return sum(TOKENS_PER_MESSAGE + len(_TOKEN_RE.findall(text)) for text in contents)


@dataclass(frozen=True, slots=True)
class Completion:
    """The pieces of one answer (one token each) and why it ended."""

    pieces: tuple[str, ...]
    done_reason: str


def _compose(rng: random.Random, limit: int | None, length_range: tuple[int, int]) -> Completion:
    """Made-up text; a limited completion is a prefix of the unlimited one."""
    natural = rng.randint(*length_range)
    count = natural if limit is None else min(natural, limit)
    pieces: list[str] = []
    capital, until_mark = True, rng.randint(4, 12)
    for _ in range(count):
        if until_mark == 0:
            pieces.append("." if rng.random() < 0.75 else ",")
            capital, until_mark = pieces[-1] == ".", rng.randint(4, 12)
            continue
        word = rng.choice(_WORDS)
        word = word.capitalize() if capital else word
        pieces.append(" " + word if pieces else word)
        capital, until_mark = False, until_mark - 1
    if count == natural:
        pieces[-1] = "."
    return Completion(tuple(pieces), "stop" if count == natural else "length")


@dataclass(frozen=True, slots=True)
class _Model:
    """A served model, with Ollama-shaped details derived from its name."""

    name: str
    family: str
    parameter_size: str
    size: int
    digest: str

    @classmethod
    def from_name(cls, name: str) -> _Model:
        base, _, tag = name.rpartition(":")
        family = re.match(r"[a-z]*", base.rsplit("/", 1)[-1].lower())
        size = _SIZE_RE.match(tag.lower())
        billions = float(size[1]) / (1 if size[2] == "b" else 1000) if size else 7.0
        return cls(
            name=name,
            family=(family[0] if family else "") or "llama",
            parameter_size=f"{size[1]}{size[2].upper()}" if size else "7B",
            size=int(billions * 0.6e9),  # about 4.8 bits per weight, as in Q4_K_M
            digest=hashlib.sha256(name.encode()).hexdigest(),
        )

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": "Q4_K_M",
        }

    def owner(self) -> str:
        parts = self.name.rpartition(":")[0].split("/")
        return parts[-2] if len(parts) > 1 else "library"


def _full_name(name: str) -> str:
    """Ollama's default tag: `llama3.2` means `llama3.2:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _timestamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _json(payload: object, status: int = 200) -> Response:
    return Response(_dumps(payload), status_code=status, media_type=JSON)


class _Failure(Exception):
    """A request answered with an error; each API family renders it its own way."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Dropped(Exception):
    """Raised by a generation at the point where the connection is to be cut."""


@dataclass(slots=True)
class _Job:
    """One chat request, whichever API it came through."""

    model: str
    contents: list[str]
    stream: bool
    limit: int | None
    seed: int | None
    include_usage: bool = False


def _integer(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Failure(400, f"{name} must be an integer")
    return int(value)


def _text(content: object) -> str:
    """Text of a message content: a string, or OpenAI content parts (text parts only)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise _Failure(400, "invalid message format")


def _load(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise _Failure(400, "missing request body")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise _Failure(400, f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _Failure(400, "request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _Failure(400, "model is required")
    return data


def _messages(data: dict[str, Any]) -> list[str]:
    messages = data.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _Failure(400, "messages must be a list of objects")
    return [_text(m.get("content")) for m in messages]


def _parse_ollama_chat(data: dict[str, Any]) -> _Job:
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise _Failure(400, "options must be an object")
    limit = _integer(options.get("num_predict"), "num_predict")
    return _Job(
        model=data["model"],
        contents=_messages(data),
        stream=data.get("stream") is not False,
        limit=limit if limit and limit > 0 else None,  # Ollama: -1 and 0 mean no limit
        seed=_integer(options.get("seed"), "seed"),
    )


def _parse_ollama_generate(data: dict[str, Any]) -> _Job:
    job = _parse_ollama_chat(data | {"messages": None})
    job.contents = [_text(data.get(key)) for key in ("system", "prompt") if data.get(key)]
    return job


def _parse_openai_chat(data: dict[str, Any]) -> _Job:
    contents = _messages(data)
    if not contents:
        raise _Failure(400, "[] is too short - 'messages'")
    limit = _integer(data.get("max_completion_tokens"), "max_completion_tokens")
    limit = limit if limit is not None else _integer(data.get("max_tokens"), "max_tokens")
    options = data.get("stream_options") or {}
    return _Job(
        model=data["model"],
        contents=contents,
        stream=data.get("stream") is True,
        limit=limit if limit and limit > 0 else None,
        seed=_integer(data.get("seed"), "seed"),
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )


class _Generation:
    """One answer being produced: its text, pacing, fault points and Ollama metrics."""

    def __init__(self, config: SimulatorConfig, job: _Job, seed: int, started: int) -> None:
        rng = random.Random(f"{seed}\x00" + "\x00".join(job.contents))  # noqa: S311
        self.completion = _compose(rng, job.limit, config.length_range)
        self.prompt_tokens = count_prompt_tokens(job.contents)
        self.config = config
        self.job = job
        self.started = started
        self.loaded = self.first = self.done = time.perf_counter_ns()

    @property
    def text(self) -> str:
        return "".join(self.completion.pieces)

    async def pieces(self) -> AsyncIterator[str]:
        """Yields each token at the configured pace; raises _Dropped where configured."""
        rate, drop = self.config.tokens_per_second, self.config.drop_after_tokens
        if self.config.ttft_ms:
            await anyio.sleep(self.config.ttft_ms / 1000)
        self.first = time.perf_counter_ns()
        begin = anyio.current_time()
        for index, piece in enumerate(self.completion.pieces):
            if index == drop:
                raise _Dropped
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

    The stream stops when the client goes away; on _Dropped it returns without ending
    the body, so the server closes the connection mid-stream.
    """

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str) -> None:
        super().__init__(chunks, headers={"content-type": media_type})
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
            await self._pump(send)
            group.cancel_scope.cancel()

    async def _pump(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        started = False
        try:
            async for chunk in self.chunks:
                if not started:
                    await send(start)
                    started = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except _Dropped:
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


def _ollama_error(failure: _Failure) -> Response:
    return _json({"error": failure.message}, failure.status)


def _openai_error(failure: _Failure) -> Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(failure.status, "api_error")
    error = {"message": failure.message, "type": kind, "param": None, "code": None}
    return _json({"error": error}, failure.status)


class _Simulator:
    """The state of one simulator app: its models, recent use and random source."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.models = {m.name: m for m in map(_Model.from_name, map(_full_name, config.models))}
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
        ]

    def model(self, name: str) -> _Model:
        model = self.models.get(_full_name(name))
        if model is None:
            raise _Failure(404, f"model '{name}' not found")
        return model

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return _json({"version": OLLAMA_VERSION})

    async def tags(self, request: Request) -> Response:
        modified = _timestamp(self.modified_at)
        models = [
            {"name": m.name, "model": m.name, "modified_at": modified, "size": m.size}
            | {"digest": m.digest, "details": m.details()}
            for m in self.models.values()
        ]
        return _json({"models": models})

    async def ps(self, request: Request) -> Response:
        now = datetime.now(UTC)
        loaded = sorted(
            ((used + KEEP_ALIVE, self.models[name]) for name, used in self.last_used.items()),
            key=lambda item: item[0],
            reverse=True,
        )
        models = [
            {"name": m.name, "model": m.name, "size": m.size, "digest": m.digest}
            | {"details": m.details(), "expires_at": _timestamp(expires)}
            | {"size_vram": m.size, "context_length": 4096}
            for expires, m in loaded
            if expires > now
        ]
        return _json({"models": models})

    async def show(self, request: Request) -> Response:
        try:
            data = _load(await request.body())
            model = self.model(data["model"])
        except _Failure as failure:
            return _ollama_error(failure)
        return _json(
            {
                "modelfile": f"# Simulated by infer\nFROM {model.name}\n",
                "parameters": "num_ctx                        4096",
                "template": "{{ .Prompt }}",
                "details": model.details(),
                "model_info": {"general.architecture": model.family},
                "capabilities": ["completion"],
                "modified_at": _timestamp(self.modified_at),
            }
        )

    async def openai_models(self, request: Request) -> Response:
        created = int(self.modified_at.timestamp())
        data = [
            {"id": m.name, "object": "model", "created": created, "owned_by": m.owner()}
            for m in self.models.values()
        ]
        return _json({"object": "list", "data": data})

    async def openai_model(self, request: Request) -> Response:
        try:
            model = self.model(request.path_params["name"])
        except _Failure as failure:
            return _openai_error(failure)
        created = int(self.modified_at.timestamp())
        return _json(
            {"id": model.name, "object": "model", "created": created, "owned_by": model.owner()}
        )

    async def _start(
        self, request: Request, parse: Callable[[dict[str, Any]], _Job]
    ) -> _Job | _Generation | None:
        """Parses, validates and injects faults; None once a hung client has gone away."""
        started = time.perf_counter_ns()
        body = await request.body()
        if self.config.hang:
            await _until_disconnect(request.receive)
            return None
        job = parse(_load(body))
        model = self.model(job.model)
        if self.config.error_rate and self.random.random() < self.config.error_rate:
            raise _Failure(500, "simulated failure (error_rate)")
        self.last_used[model.name] = datetime.now(UTC)
        if not job.contents:
            return job
        seed = job.seed if job.seed is not None else self.config.seed
        seed = seed if seed is not None else self.random.getrandbits(64)
        return _Generation(self.config, job, seed, started)

    async def ollama_chat(self, request: Request) -> Response:
        return await self._ollama(request, _parse_ollama_chat, "message")

    async def ollama_generate(self, request: Request) -> Response:
        return await self._ollama(request, _parse_ollama_generate, "response")

    async def _ollama(
        self, request: Request, parse: Callable[[dict[str, Any]], _Job], key: str
    ) -> Response:
        try:
            started = await self._start(request, parse)
        except _Failure as failure:
            return _ollama_error(failure)
        if started is None:
            return Response(status_code=499)
        if isinstance(started, _Job):  # no messages: Ollama just loads the model
            empty = _ollama_object(started.model, key, "")
            return _json(empty | {"done_reason": "load", "done": True})
        if started.job.stream:
            return _Stream(_ollama_lines(started, key), NDJSON)
        try:
            async for _ in started.pieces():
                pass
        except _Dropped:
            return _Truncated(_dumps(_ollama_final(started, key, started.text)), media_type=JSON)
        return _json(_ollama_final(started, key, started.text))

    async def openai_chat(self, request: Request) -> Response:
        try:
            started = await self._start(request, _parse_openai_chat)
        except _Failure as failure:
            return _openai_error(failure)
        if started is None:
            return Response(status_code=499)
        assert isinstance(started, _Generation)  # OpenAI requests always carry messages
        completion_id = f"chatcmpl-{self.random.getrandbits(40):x}"
        if started.job.stream:
            return _Stream(_openai_events(started, completion_id), SSE)
        try:
            async for _ in started.pieces():
                pass
        except _Dropped:
            return _Truncated(_dumps(_openai_completion(started, completion_id)), media_type=JSON)
        return _json(_openai_completion(started, completion_id))


def _ollama_object(model: str, key: str, content: str) -> dict[str, Any]:
    value: object = {"role": "assistant", "content": content} if key == "message" else content
    return {"model": model, "created_at": _timestamp(), key: value}


def _ollama_final(generation: _Generation, key: str, content: str) -> dict[str, Any]:
    final = _ollama_object(generation.job.model, key, content)
    final |= {"done_reason": generation.completion.done_reason, "done": True}
    return final | generation.metrics()


async def _ollama_lines(generation: _Generation, key: str) -> AsyncIterator[bytes]:
    model = generation.job.model
    async for piece in generation.pieces():
        yield _dumps(_ollama_object(model, key, piece) | {"done": False}) + b"\n"
    yield _dumps(_ollama_final(generation, key, "")) + b"\n"


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
        return b"data: " + _dumps(payload) + b"\n\n"

    def choice(content: str, finish_reason: str | None) -> list[dict[str, Any]]:
        delta = {"role": "assistant", "content": content}
        return [{"index": 0, "delta": delta, "finish_reason": finish_reason}]

    async for piece in generation.pieces():
        yield event(_openai_chunk(generation, completion_id, choice(piece, None)))
    done_reason = generation.completion.done_reason
    yield event(_openai_chunk(generation, completion_id, choice("", done_reason)))
    if generation.job.include_usage:
        yield event(_openai_chunk(generation, completion_id, []) | {"usage": generation.usage()})
    yield b"data: [DONE]\n\n"


def _openai_completion(generation: _Generation, completion_id: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": generation.text}
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


def run_simulator(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 11434,
    *,
    access_log: bool = False,
) -> None:
    """Serves the simulator in the foreground until interrupted."""
    server_config = uvicorn.Config(
        create_simulator_app(config),
        host=host,
        port=port,
        access_log=access_log,
        timeout_graceful_shutdown=5,  # hung requests must not block Ctrl+C forever
    )
    uvicorn.Server(server_config).run()


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: Literal["on", "off"] = "off",
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serves any ASGI app in a background thread; yields its base URL, stops it on exit.

    The socket is bound before the thread starts (port 0 picks a free one), and the URL
    is yielded only once the server accepts connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            log_level=None,
            access_log=False,
            lifespan=lifespan,
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"server-{bound}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {startup_timeout}s")
            time.sleep(0.005)
        yield f"http://[{host}]:{bound}" if family == socket.AF_INET6 else f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()


@contextlib.contextmanager
def serve_simulator_in_thread(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Runs the simulator in a background thread; yields its base URL, stops it on exit."""
    with serve_in_thread(
        create_simulator_app(config), host=host, port=port, startup_timeout=startup_timeout
    ) as url:
        yield url
