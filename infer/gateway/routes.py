"""REST routes for buyers: POST /api/v1/chat/completions and GET /api/v1/models."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infer.authentication import gateway_principal
from infer.billing.money import format_usd
from infer.completions.completion import Completion, answer_finish
from infer.errors import InferError, UpstreamError
from infer.gateway.body import ChatCompletionBody, parse_large_body
from infer.gateway.errors import error_body, error_response
from infer.gateway.stream import DEADLINE_LEAD_SECONDS, BuyerStream
from infer.logs import request_id_of
from infer.models import UsageStatus
from infer.nodes.clients.base import ChatChunk
from infer.nodes.clients.payloads import mint_call_id
from infer.resources import Resources
from infer.routing.preferences import parse_preferences
from infer.routing.waiting import BuyerGone

T = TypeVar("T")


async def chat_completions(request: Request) -> Response:
    resources: Resources = request.state.resources
    settings = resources.settings
    request_id = request_id_of(request.scope)
    headers = {"x-request-id": request_id}
    try:
        principal = await gateway_principal(request, resources)
        body = await parse_large_body(
            await request.body(),
            max_tokens_limit=settings.max_tokens_limit,
            max_text_bytes=settings.max_body_bytes,
        )
        completion = await resources.completions.start(
            buyer=principal,
            request=body.to_chat_request(
                max_tokens=body.requested_max_tokens() or settings.default_max_tokens
            ),
            preferences=parse_preferences(body.provider),
            request_id=request_id,
            gone=functools.partial(_disconnect, request),
        )
    except InferError as error:
        return error_response(error, headers)
    except BuyerGone:
        return Response(status_code=499)  # left while waiting for a free node
    headers.update(completion.rate_limits)
    if body.stream:
        return BuyerStream(
            _events(completion, body),
            completion,
            write_timeout=settings.client_write_timeout,
            deadline=completion.started_at
            + settings.upstream_total_timeout
            - DEADLINE_LEAD_SECONDS,
            headers=headers | {"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    return await _whole(request, completion, body, headers)


def _id(completion: Completion) -> str:
    return f"chatcmpl-{completion.request_id}"


def usage_of(completion: Completion) -> dict[str, object]:
    """The answer's `usage`, as every completion route reports it."""
    usage = completion.usage
    assert usage is not None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost": format_usd(usage.cost),
        "estimated": usage.estimated,
    }


def sse_event(payload: object) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _events(completion: Completion, body: ChatCompletionBody) -> AsyncIterator[bytes]:
    created, model, ident = int(time.time()), body.model, _id(completion)

    def chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    # Every content event after the first differs only in its text: encode the rest once.
    head, _, tail = sse_event(chunk({"content": ""}, None)).partition(b'"content":""')
    head += b'"content":'
    status = UsageStatus.CLIENT_DISCONNECTED
    try:
        finish = None
        sent_role = False
        calls = _ToolCallEvents()
        async for batch in completion.batches():
            # The chunks that arrived together leave together: one write, not one each.
            events: list[bytes] = []
            for piece in batch:
                finish = piece.finish_reason or finish
                if piece.tool_calls or piece.logprobs is not None:
                    logprobs = piece.logprobs  # on the first of the piece's events
                    for delta in _deltas(piece, calls, first=not sent_role):
                        events.append(sse_event(_with_logprobs(chunk(delta, None), logprobs)))
                        sent_role, logprobs = True, None
                    continue
                if not piece.content:
                    continue
                if sent_role:
                    events += (head, orjson.dumps(piece.content), tail)
                else:
                    delta = {"role": "assistant", "content": piece.content}
                    events.append(sse_event(chunk(delta, None)))
                    sent_role = True
            if events:
                yield b"".join(events)
        status = UsageStatus.COMPLETED
        await completion.finish(status=status)
        last = chunk({}, answer_finish(finish or "stop", calls.made))
        if body.include_usage:
            usage = {**chunk({}, None), "choices": [], "usage": usage_of(completion)}
            yield sse_event(last) + sse_event(usage) + b"data: [DONE]\n\n"
        else:
            yield sse_event({**last, "usage": usage_of(completion)}) + b"data: [DONE]\n\n"
    except UpstreamError as error:
        status = UsageStatus.UPSTREAM_ERROR
        await completion.finish(status=status)
        yield sse_event(error_body(error))
        yield b"data: [DONE]\n\n"
    finally:
        await completion.finish(status=status)


class _ToolCallEvents:
    """Which tool calls a stream has opened (their first delta carries id and name)."""

    def __init__(self) -> None:
        self.opened: set[int] = set()

    @property
    def made(self) -> bool:
        return bool(self.opened)


def _deltas(piece: ChatChunk, calls: _ToolCallEvents, *, first: bool) -> list[dict[str, object]]:
    """The deltas for a piece with tool calls or logprobs, as OpenAI streams them: a call
    opens with its id, type and name (arguments ""), then its arguments come in fragments
    carrying only the index."""
    deltas: list[dict[str, object]] = []
    if piece.content or not piece.tool_calls:
        deltas.append({"content": piece.content})
    for call in piece.tool_calls:
        if call.position not in calls.opened:
            calls.opened.add(call.position)
            opening = {
                "index": call.position,
                "id": call.id or mint_call_id(),
                "type": "function",
                "function": {"name": call.name or "", "arguments": ""},
            }
            deltas.append({"tool_calls": [opening]})
        if call.arguments:
            fragment = {"index": call.position, "function": {"arguments": call.arguments}}
            deltas.append({"tool_calls": [fragment]})
    if first and deltas:
        deltas[0] = {"role": "assistant", "content": deltas[0].get("content")} | deltas[0]
    return deltas


def _with_logprobs(event: dict[str, Any], logprobs: tuple[Any, ...] | None) -> dict[str, Any]:
    if logprobs is not None:
        event["choices"][0]["logprobs"] = {"content": list(logprobs)}
    return event


async def _whole(
    request: Request, completion: Completion, body: ChatCompletionBody, headers: dict[str, str]
) -> Response:
    try:
        answer = await _unless_disconnected(request, completion.whole())
    except UpstreamError as error:
        return error_response(error, headers)
    finally:  # the buyer hung up: the upstream is cancelled, what it produced is charged
        await completion.finish(status=UsageStatus.CLIENT_DISCONNECTED)
    if answer is None:
        return Response(status_code=499)  # nobody is listening any more
    message: dict[str, object] = {"role": "assistant", "content": answer.text}
    if answer.tool_calls:
        message["content"] = answer.text or None
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in answer.tool_calls
        ]
    choice: dict[str, object] = {
        "index": 0,
        "message": message,
        "finish_reason": answer.finish_reason,
    }
    if answer.logprobs is not None:
        choice["logprobs"] = {"content": answer.logprobs}
    payload = {
        "id": _id(completion),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [choice],
        "usage": usage_of(completion),
    }
    return Response(orjson.dumps(payload), headers=headers, media_type="application/json")


async def _disconnect(request: Request) -> None:
    """Returns when the buyer disconnects (the body has been read: nothing else comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None as soon as the buyer disconnects (`work` is then cancelled).

    The body has been read, so the next message the server sends is the disconnect. A
    bare task watches for it (an anyio task group per request costs far more).
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        return None
    finally:
        watcher.cancel()


async def list_models(request: Request) -> Response:
    resources: Resources = request.state.resources
    try:
        await gateway_principal(request, resources)
    except InferError as error:
        return error_response(error)
    models = await resources.router.catalog.models()
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "infer"}
                for name in models
            ],
        }
    )


routes = [
    Route("/api/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/api/v1/models", list_models, methods=["GET"]),
]
