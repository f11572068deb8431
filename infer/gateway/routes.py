"""REST routes for buyers: POST /api/v1/chat/completions and GET /api/v1/models."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from infer.accounts.principal import Principal
from infer.billing.money import format_usd
from infer.billing.pricing import estimate_prompt_tokens
from infer.errors import InferError, Unauthenticated, UpstreamError
from infer.gateway.body import ChatCompletionBody, parse_body
from infer.completions.service import Completion
from infer.gateway.errors import error_body, error_response
from infer.keys.limits import KeyLimits, admit
from infer.resources import Resources
from infer.routing.preferences import parse_preferences


async def _authenticate(request: Request, resources: Resources) -> Principal:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthenticated("send your API key as 'Authorization: Bearer inf_…'")
    return await resources.authenticator.authenticate(credentials.strip())


async def chat_completions(request: Request) -> Response:
    resources: Resources = request.state.resources
    request_id = uuid.uuid4().hex
    headers = {"x-request-id": request_id}
    try:
        principal = await _authenticate(request, resources)
        body = parse_body(await request.body())
        chat = body.to_chat_request(
            max_tokens=body.requested_max_tokens() or resources.settings.default_max_tokens
        )
        expected = estimate_prompt_tokens(m.content for m in chat.messages)

        async def admitted() -> None:
            headers.update(
                await admit(
                    resources.limiter,
                    principal,
                    defaults=KeyLimits(
                        resources.settings.key_requests_per_minute,
                        resources.settings.key_tokens_per_minute,
                    ),
                    tokens=expected + (chat.max_tokens or 0),
                )
            )

        completion = await resources.completions.start(
            buyer=principal,
            request=chat,
            preferences=parse_preferences(body.provider),
            request_id=request_id,
            admission=admitted,
        )
    except InferError as error:
        return error_response(error, headers)
    if body.stream:
        return StreamingResponse(
            _events(completion, body),
            media_type="text/event-stream",
            headers=headers | {"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    return await _whole(completion, body, headers)


def _id(completion: Completion) -> str:
    return f"chatcmpl-{completion.request_id}"


def _usage(completion: Completion) -> dict[str, object]:
    usage = completion.usage
    assert usage is not None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost": format_usd(usage.cost),
        "estimated": usage.estimated,
    }


def _sse(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _events(completion: Completion, body: ChatCompletionBody) -> AsyncIterator[bytes]:
    created, model, ident = int(time.time()), body.model, _id(completion)

    def chunk(delta: dict[str, str], finish: str | None) -> dict[str, object]:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    # Every content event after the first differs only in its text: encode the rest once.
    head, _, tail = _sse(chunk({"content": ""}, None)).partition(b'"content":""')
    head += b'"content":'
    status = "client_disconnected"
    try:
        finish = None
        sent_role = False
        async for batch in completion.batches():
            # The chunks that arrived together leave together: one write, not one each.
            events: list[bytes] = []
            for piece in batch:
                finish = piece.finish_reason or finish
                if not piece.content:
                    continue
                if sent_role:
                    events += (head, orjson.dumps(piece.content), tail)
                else:
                    delta = {"role": "assistant", "content": piece.content}
                    events.append(_sse(chunk(delta, None)))
                    sent_role = True
            if events:
                yield b"".join(events)
        status = "completed"
        await completion.finish(status=status)
        last = chunk({}, finish or "stop")
        if body.include_usage:
            usage = {**chunk({}, None), "choices": [], "usage": _usage(completion)}
            yield _sse(last) + _sse(usage) + b"data: [DONE]\n\n"
        else:
            yield _sse({**last, "usage": _usage(completion)}) + b"data: [DONE]\n\n"
    except UpstreamError as error:
        status = "upstream_error"
        await completion.finish(status=status)
        yield _sse(error_body(error))
        yield b"data: [DONE]\n\n"
    finally:
        await completion.finish(status=status)


async def _whole(
    completion: Completion, body: ChatCompletionBody, headers: dict[str, str]
) -> Response:
    parts: list[str] = []
    finish = None
    try:
        async for batch in completion.batches():
            for piece in batch:
                parts.append(piece.content)
                finish = piece.finish_reason or finish
    except UpstreamError as error:
        await completion.finish(status="upstream_error")
        return error_response(error, headers)
    finally:
        await completion.finish(status="completed" if finish else "client_disconnected")
    answer = orjson.dumps(
        {
            "id": _id(completion),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "finish_reason": finish or "stop",
                }
            ],
            "usage": _usage(completion),
        }
    )
    return Response(answer, headers=headers, media_type="application/json")


async def list_models(request: Request) -> Response:
    resources: Resources = request.state.resources
    try:
        await _authenticate(request, resources)
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
