"""POST /api/v1/embeddings: OpenAI's embeddings request and answer."""

from __future__ import annotations

import base64
import struct
import uuid
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infer.authentication import gateway_principal
from infer.billing.money import format_usd
from infer.completions.embedding import EmbeddingResult, create_embeddings
from infer.errors import BadInput, InferError
from infer.gateway.errors import error_response
from infer.gateway.validation import refusal
from infer.nodes.clients.embeddings import MAX_DIMENSIONS, EmbeddingRequest
from infer.resources import Resources
from infer.routing.preferences import parse_preferences
from infer.security.text import MAX_MODEL_NAME, MODEL_NAME_CHARACTERS, is_model_name

MAX_INPUTS = 2048  # as OpenAI's API
MAX_INPUT_BYTES = 1 << 20  # all inputs together, in UTF-8


class EmbeddingBody(BaseModel):
    """The fields of OpenAI's request that INFER honours; unknown extras are ignored."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    input: Any = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=MAX_DIMENSIONS)] | None = None
    user: str | None = None
    provider: dict[str, Any] | None = None

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not is_model_name(value):
            raise ValueError(
                f"a model name is 1 to {MAX_MODEL_NAME} characters: {MODEL_NAME_CHARACTERS}"
            )
        return value


def parse_inputs(value: object) -> tuple[str, ...]:
    """`input` as texts: a string or a list of strings, none empty, within the limits."""
    if value is None:
        raise BadInput("missing required parameter: input", param="input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        if isinstance(texts, list) and texts and all(_is_tokens(item) for item in texts):
            raise BadInput("token arrays are not supported as input; send text", param="input")
        raise BadInput("input must be a string or a list of strings", param="input")
    if not texts:
        raise BadInput("input must not be an empty list", param="input")
    if len(texts) > MAX_INPUTS:
        raise BadInput(f"input holds at most {MAX_INPUTS} items", param="input")
    if any(not text for text in texts):
        raise BadInput("input must not hold an empty string", param="input")
    if any("\x00" in text for text in texts):
        raise BadInput("input may not contain NUL characters", param="input")
    if sum(len(text.encode()) for text in texts) > MAX_INPUT_BYTES:
        raise BadInput(f"input is larger than {MAX_INPUT_BYTES >> 20} MiB", param="input")
    return tuple(texts)


def _is_tokens(item: object) -> bool:
    """A token id, or a list of them (OpenAI accepts these; runtimes' vocabularies differ)."""
    if isinstance(item, list):
        return all(isinstance(i, int) and not isinstance(i, bool) for i in item)
    return isinstance(item, int) and not isinstance(item, bool)


def parse_embedding_body(raw: bytes) -> tuple[EmbeddingBody, EmbeddingRequest]:
    try:
        body = EmbeddingBody.model_validate_json(raw)
    except ValidationError as exc:
        raise refusal(exc) from exc
    inputs = parse_inputs(body.input)
    return body, EmbeddingRequest(model=body.model, inputs=inputs, dimensions=body.dimensions)


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    # OpenAI's base64: the vector as little-endian 32-bit floats.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _answer(body: EmbeddingBody, result: EmbeddingResult) -> dict[str, object]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
            for i, v in enumerate(result.vectors)
        ],
        "model": body.model,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "total_tokens": result.prompt_tokens,
            "cost": format_usd(result.cost),
            "estimated": result.estimated,
        },
    }


async def embeddings(request: Request) -> Response:
    resources: Resources = request.state.resources
    request_id = uuid.uuid4().hex
    headers = {"x-request-id": request_id}
    try:
        principal = await gateway_principal(request, resources)
        body, wanted = parse_embedding_body(await request.body())
        result = await create_embeddings(
            resources.completions,
            buyer=principal,
            request=wanted,
            preferences=parse_preferences(body.provider),
            request_id=request_id,
        )
    except InferError as error:
        return error_response(error, headers)
    headers.update(result.rate_limits)
    payload = orjson.dumps(_answer(body, result))
    return Response(payload, headers=headers, media_type="application/json")


routes = [Route("/api/v1/embeddings", embeddings, methods=["POST"])]
