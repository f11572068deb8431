"""POST /api/v1/completions: OpenAI's legacy text completion, streamed or whole."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infer.authentication import gateway_principal
from infer.completions.completion import Completion
from infer.errors import BadInput, InferError, UpstreamError
from infer.gateway.body import MAX_STOP, StreamOptions, Text
from infer.gateway.errors import error_body, error_response
from infer.gateway.routes import _unless_disconnected, sse_event, usage_of
from infer.gateway.stream import DEADLINE_LEAD_SECONDS, BuyerStream
from infer.gateway.validation import refusal
from infer.models import UsageStatus
from infer.nodes.clients.base import ChatMessage
from infer.nodes.clients.text import TextRequest
from infer.resources import Resources
from infer.routing.preferences import parse_preferences
from infer.security.text import MAX_MODEL_NAME, MODEL_NAME_CHARACTERS, is_model_name

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
OLLAMA_OPTIONS = ("top_k", "min_p", "repeat_penalty")


class CompletionBody(BaseModel):
    """The fields of OpenAI's request that INFER honours; unknown extras are ignored.

    Fields INFER knows but cannot honour (several prompts or choices, `echo`, `suffix`,
    `logprobs`, `best_of` above 1) are refused rather than dropped.
    """

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    echo: Literal[False] | None = None
    suffix: None = None
    logprobs: None = None
    user: Text | None = None
    provider: dict[str, Any] | None = None
    top_k: Annotated[int, Field(ge=-1, le=1_000_000)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0, le=10)] | None = None

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not is_model_name(value):
            raise ValueError(
                f"a model name is 1 to {MAX_MODEL_NAME} characters: {MODEL_NAME_CHARACTERS}"
            )
        return value

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def to_request(self, *, max_tokens: int) -> TextRequest:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        extra = {k: getattr(self, k) for k in OLLAMA_OPTIONS if getattr(self, k) is not None}
        return TextRequest(
            model=self.model,
            messages=(ChatMessage(role="user", content=self.text),),
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            extra=extra,
            prompt=self.text,
        )


def parse_completion_body(raw: bytes, *, max_tokens_limit: int) -> CompletionBody:
    try:
        body = CompletionBody.model_validate_json(raw)
    except ValidationError as exc:
        raise refusal(exc) from exc
    if not body.text:
        raise BadInput("prompt must not be empty", param="prompt")
    if body.max_tokens is not None and body.max_tokens > max_tokens_limit:
        message = f"max_tokens must be at most {max_tokens_limit} on this platform"
        raise BadInput(message, param="max_tokens")
    return body


async def completions(request: Request) -> Response:
    resources: Resources = request.state.resources
    settings = resources.settings
    request_id = uuid.uuid4().hex
    headers = {"x-request-id": request_id}
    try:
        principal = await gateway_principal(request, resources)
        body = parse_completion_body(
            await request.body(), max_tokens_limit=settings.max_tokens_limit
        )
        completion = await resources.completions.start(
            buyer=principal,
            request=body.to_request(max_tokens=body.max_tokens or DEFAULT_MAX_TOKENS),
            preferences=parse_preferences(body.provider),
            request_id=request_id,
        )
    except InferError as error:
        return error_response(error, headers)
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


def _chunk(
    completion: Completion, body: CompletionBody, text: str, finish: str | None
) -> dict[str, object]:
    return {
        "id": f"cmpl-{completion.request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }


async def _events(completion: Completion, body: CompletionBody) -> AsyncIterator[bytes]:
    status = UsageStatus.CLIENT_DISCONNECTED
    try:
        finish = None
        async for batch in completion.batches():
            events = []
            for piece in batch:
                finish = piece.finish_reason or finish
                if piece.content:
                    events.append(sse_event(_chunk(completion, body, piece.content, None)))
            if events:
                yield b"".join(events)
        status = UsageStatus.COMPLETED
        await completion.finish(status=status)
        last = _chunk(completion, body, "", finish or "stop")
        include = bool(body.stream_options and body.stream_options.include_usage)
        if include:
            usage = {
                **_chunk(completion, body, "", None),
                "choices": [],
                "usage": usage_of(completion),
            }
            yield sse_event(last) + sse_event(usage) + b"data: [DONE]\n\n"
        else:
            yield sse_event({**last, "usage": usage_of(completion)}) + b"data: [DONE]\n\n"
    except UpstreamError as error:
        status = UsageStatus.UPSTREAM_ERROR
        await completion.finish(status=status)
        yield sse_event(error_body(error)) + b"data: [DONE]\n\n"
    finally:
        await completion.finish(status=status)


async def _collect(completion: Completion) -> tuple[str, str]:
    """The whole text and its finish reason; a node that breaks off costs nothing."""
    parts: list[str] = []
    try:
        async for batch in completion.batches():
            parts += (piece.content for piece in batch)
    except UpstreamError:
        await completion.finish(status=UsageStatus.UPSTREAM_ERROR, charge=False)
        raise
    await completion.finish(status=UsageStatus.COMPLETED)
    return "".join(parts), completion.finish_reason or "stop"


async def _whole(
    request: Request, completion: Completion, body: CompletionBody, headers: dict[str, str]
) -> Response:
    try:
        answer = await _unless_disconnected(request, _collect(completion))
    except UpstreamError as error:
        return error_response(error, headers)
    finally:  # the buyer hung up: the upstream is cancelled, what it produced is charged
        await completion.finish(status=UsageStatus.CLIENT_DISCONNECTED)
    if answer is None:
        return Response(status_code=499)
    text, finish = answer
    payload = {**_chunk(completion, body, text, finish), "usage": usage_of(completion)}
    return Response(orjson.dumps(payload), headers=headers, media_type="application/json")


routes = [Route("/api/v1/completions", completions, methods=["POST"])]
