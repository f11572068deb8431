"""Small real runtimes for the client tests: Exo, OpenAI-compatible and Ollama dialects, faults.

Served on loopback with `infer.simulator.serve_in_thread`; each records what it was
sent and whether the client went away mid-answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.lowlevel
from starlette.types import Message, Receive, Scope, Send

Dialect = Literal["openai", "exo", "ollama"]
Fault = Literal[
    "bad_json",  # the first event is not JSON
    "wrong_types",  # content is a number
    "not_strict_json",  # a piece, then an event whose content is NaN (Python's json writes it)
    "error_event",  # a piece of text, then an error object in the stream
    "truncated",  # two pieces, then the body ends cleanly but without a finish
    "endless_line",  # 200, then one line that never ends
    "drip",  # a byte at a time, never a whole event
    "comments_only",  # SSE comments (keep-alives) and nothing else
    "stall",  # two pieces, then silence
    "linger",  # two pieces and a finish chunk, then silence: no usage, no [DONE], no end
    "endless_events",  # a piece every `interval` seconds, forever
    "error_500",  # 500 with a body holding a secret-looking string
    "hang",  # never sends response headers (to any request)
    "redirect",  # 302 to another path
    "gzip",  # claims a gzip-encoded body
    "huge_probe",  # the model list never ends
]
SECRET = "sk-live-DO-NOT-ECHO-0123456789"
CHAT_PATHS = ("/api/chat", "/v1/chat/completions")
USAGE_PROMPT_TOKENS = 11


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeRuntime:
    """An ASGI app speaking one runtime's dialect, with an optional fault.

    openai: usage on a final chunk with no choices, only if stream_options asks for it
    (never, with `usage=False`). exo: `: keep-alive` and progress comments, usage on the
    finish chunk, /healthcheck, and /ollama/api/ps when `running` is set (`legacy` drops
    /v1/models). ollama: NDJSON with the counts on the final object.
    """

    dialect: Dialect = "openai"
    fault: Fault | None = None
    pieces: tuple[str, ...] = ("Hello", ",", " wide", " world", "!")
    models: tuple[str, ...] = ("tiny-model",)
    usage: bool = True
    running: tuple[str, ...] | None = None
    legacy: bool = False
    interval: float = 0.0
    usage_scale: int = 1  # reported completion tokens per piece sent: 0 or 7 is a lying node
    seen: list[Seen] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def chats(self) -> list[Seen]:
        """The chat requests it was sent (not the monitor's probes, /api/show included)."""
        return [s for s in self.seen if s.method == "POST" and s.path in CHAT_PATHS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        seen = Seen(scope["method"], scope["path"], headers, body, tuple(scope["client"]))
        self.seen.append(seen)
        answered, started = False, False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not answered:  # uvicorn also reports a disconnect after a whole answer
                    self.disconnected.set()
                group.cancel_scope.cancel()

            group.start_soon(watch)
            await self._answer(seen, tracked_send)
            answered = True
            group.cancel_scope.cancel()
        if not started:  # the client left before any answer: close the exchange quietly
            await _respond(send, 499, b"")

    async def _answer(self, seen: Seen, send: Send) -> None:
        route = (seen.method, seen.path)
        if self.fault == "hang":
            await anyio.sleep_forever()
        if self.fault == "redirect":
            await _respond(send, 302, b"", [(b"location", b"/elsewhere")])
        elif self.fault == "error_500" and seen.method == "POST":
            await _respond(send, 500, json.dumps({"error": {"message": SECRET}}).encode())
        elif route in (("GET", "/v1/models"), ("GET", "/models")) and not self.legacy:
            await self._models(send)
        elif route == ("GET", "/healthcheck") and self.dialect == "exo":
            await _respond(send, 200, b'{"status":"ok"}')
        elif route == ("GET", "/ollama/api/ps") and self.running is not None:
            await _respond(send, 200, _ollama_list(self.running))
        elif route == ("GET", "/api/version") and self.dialect == "ollama":
            await _respond(send, 200, b'{"version":"0.12.0"}')
        elif route in (("GET", "/api/tags"), ("GET", "/api/ps")) and self.dialect == "ollama":
            await _respond(send, 200, _ollama_list(self.models))
        elif route == ("POST", "/v1/chat/completions") and self.dialect != "ollama":
            await self._stream(send, "text/event-stream", self._events(seen.json()))
        elif route == ("POST", "/api/chat") and self.dialect == "ollama":
            await self._stream(send, "application/x-ndjson", self._lines(seen.json()))
        else:
            await _respond(send, 404, b"404 page not found", content_type=b"text/plain")

    async def _models(self, send: Send) -> None:
        if self.fault == "huge_probe":
            await self._stream(send, "application/json", _forever(b'{"data":[' + b" " * 65536))
            return
        data = [{"id": m, "object": "model", "owned_by": "test"} for m in self.models]
        await _respond(send, 200, json.dumps({"object": "list", "data": data}).encode())

    async def _stream(self, send: Send, media_type: str, chunks: AsyncIterator[bytes]) -> None:
        headers = [(b"content-type", media_type.encode())]
        if self.fault == "gzip":
            headers.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if self.interval:
                await anyio.sleep(self.interval)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _answer_pieces(self, max_tokens: object) -> tuple[tuple[str, ...], str]:
        if isinstance(max_tokens, int) and max_tokens < len(self.pieces):
            return self.pieces[:max_tokens], "length"
        return self.pieces, "stop"

    async def _faulty(self, frame: Any, *, sse: bool) -> AsyncIterator[bytes]:
        """The chunks of a faulty answer; `frame` turns a text piece into one event."""
        if self.fault == "bad_json":
            broken = frame(None)
            yield broken[: len(broken) // 2] + b"\n\n"
        elif self.fault == "not_strict_json":
            yield frame("one")
            yield frame(float("nan"))
        elif self.fault in ("wrong_types", "error_event", "truncated", "stall", "linger"):
            yield frame("one")
            if self.fault == "wrong_types":
                yield frame(42)
            elif self.fault == "error_event":
                error = json.dumps({"error": {"message": SECRET} if sse else SECRET}).encode()
                yield b"data: " + error + b"\n\n" if sse else error + b"\n"
            elif self.fault == "truncated":
                yield frame("two")
            elif self.fault == "linger":
                yield frame("two")
                yield frame("", "stop") if sse else frame("", done=True)
                await anyio.sleep_forever()
            else:
                yield frame("two")
                await anyio.sleep_forever()
        elif self.fault == "endless_line":
            async for chunk in _forever(b"x" * 65536):
                yield chunk
        elif self.fault == "drip":
            async for chunk in _forever(b"d"):
                await anyio.sleep(0.02)
                yield chunk
        elif self.fault == "comments_only":
            while True:
                yield b": keep-alive\n\n" if sse else b"\n"
                await anyio.sleep(0.02)
        elif self.fault == "endless_events":
            while True:
                yield frame("again")
                await anyio.sleep(0.02)

    async def _events(self, request: dict[str, Any]) -> AsyncIterator[bytes]:
        model = request["model"]

        def event(payload: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        def chunk(content: Any, finish: str | None = None, **extra: Any) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": {"role": "assistant"}}
            if content is not None:
                choice["delta"]["content"] = content
            if finish is not None or self.dialect == "openai":
                choice["finish_reason"] = finish  # Exo leaves out what is None
            kind = "chat.completion" if self.dialect == "exo" else "chat.completion.chunk"
            head = {"id": "chatcmpl-1", "object": kind, "created": 0, "model": model}
            return event(head | {"choices": [choice]} | extra)

        if self.dialect == "exo":
            yield b": keep-alive\n\n"
        if self.fault is not None:
            async for faulty in self._faulty(chunk, sse=True):
                yield faulty
            return
        pieces, reason = self._answer_pieces(request.get("max_tokens"))
        usage = _usage(len(pieces) * self.usage_scale)
        if self.dialect == "exo":
            yield b': prefill_progress {"processed":3,"total":3}\n\n'
            for piece in pieces:
                yield chunk(piece)
            yield chunk("", reason, usage=usage | _exo_usage_details())
            yield b': generation_stats {"prompt_tps":1.0,"generation_tps":1.0}\n\n'
        else:
            yield chunk("")
            for piece in pieces:
                yield chunk(piece)
            yield chunk(None, reason)
            options = request.get("stream_options") or {}
            if self.usage and options.get("include_usage"):
                head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model}
                yield event(head | {"choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    async def _lines(self, request: dict[str, Any]) -> AsyncIterator[bytes]:
        model = request["model"]

        def line(content: Any, **extra: Any) -> bytes:
            message = {"role": "assistant", "content": content}
            head = {"model": model, "created_at": "2025-01-01T00:00:00Z", "message": message}
            return json.dumps(head | {"done": False} | extra).encode() + b"\n"

        if self.fault is not None:
            async for faulty in self._faulty(line, sse=False):
                yield faulty
            return
        pieces, reason = self._answer_pieces((request.get("options") or {}).get("num_predict"))
        for piece in pieces:
            yield line(piece)
        counts = {
            "prompt_eval_count": USAGE_PROMPT_TOKENS,
            "eval_count": len(pieces) * self.usage_scale,
        }
        yield line("", done=True, done_reason=reason, **counts)


def _usage(completion: int) -> dict[str, int]:
    total = USAGE_PROMPT_TOKENS + completion
    return {"prompt_tokens": USAGE_PROMPT_TOKENS, "completion_tokens": completion} | {
        "total_tokens": total
    }


def _exo_usage_details() -> dict[str, Any]:
    return {
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _ollama_list(names: tuple[str, ...]) -> bytes:
    return json.dumps({"models": [{"name": n, "model": n, "size": 0} for n in names]}).encode()


async def _forever(chunk: bytes) -> AsyncIterator[bytes]:
    while True:
        yield chunk
        await anyio.lowlevel.checkpoint()


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    content_type: bytes = b"application/json",
) -> None:
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": status, "headers": head + (headers or [])}
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
