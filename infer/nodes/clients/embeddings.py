"""Embeddings from a node's runtime: Ollama's POST /api/embed, OpenAI's POST /v1/embeddings.

Both are one JSON request and one JSON answer, read under the stream deadlines (first
byte, between bytes, in all) and capped in size by what the request can fairly produce.
Every vector is checked: one per input, all of one length, finite numbers only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infer.errors import UpstreamError
from infer.models import Runtime
from infer.nodes.clients.base import RuntimeClient
from infer.nodes.clients.clock import StreamClock
from infer.nodes.clients.payloads import (
    as_list,
    as_object,
    malformed,
    optional_count,
    parse_json,
    reject_error,
)
from infer.nodes.clients.wire import open_stream

JSON = "application/json"
MAX_DIMENSIONS = 65_536
# Bytes of JSON per number at most ("-0.012345678901234567," is 22): an answer past
# this for its inputs is not an embedding answer.
BYTES_PER_NUMBER = 32
MIN_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True)
class EmbeddingRequest:
    """Texts to embed with one model; `dimensions` where the runtime can shorten vectors."""

    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, in order, and the runtime's count of input tokens if any."""

    vectors: list[list[float]]
    prompt_tokens: int | None


def _call(client: RuntimeClient, request: EmbeddingRequest) -> tuple[str, dict[str, object]]:
    """The path and body for this runtime (always floats: base64 is the gateway's job)."""
    body: dict[str, object] = {"model": request.model, "input": list(request.inputs)}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if client.runtime == Runtime.OLLAMA:
        return "/api/embed", body
    # As for chat: a base URL that already ends in /v1 is the API root.
    api = "" if client.base_url.endswith("/v1") else "/v1"
    return f"{api}/embeddings", body | {"encoding_format": "float"}


async def embed(client: RuntimeClient, request: EmbeddingRequest) -> Embeddings:
    """The runtime's vectors for `request`; UpstreamError (or UpstreamTimeout) otherwise."""
    clock = StreamClock(client.deadlines)
    path, body = _call(client, request)
    limit = _answer_limit(request)
    async with open_stream(
        client, path, body, clock=clock, accept=JSON, model=request.model
    ) as response:
        received = bytearray()
        while True:
            try:
                chunk = await response.read(clock.deadline())
            except TimeoutError as exc:
                raise clock.expired() from exc
            if not chunk:
                break
            clock.check()
            clock.mark_event()
            received += chunk
            if len(received) > limit:
                raise UpstreamError("the node's embeddings are larger than its inputs allow")
    document = as_object(parse_json(bytes(received)), "embeddings")
    reject_error(document)
    if client.runtime == Runtime.OLLAMA:
        vectors = as_list(document.get("embeddings"), "embeddings")
        tokens = optional_count(document.get("prompt_eval_count"), "prompt_eval_count")
    else:
        vectors = _openai_vectors(document)
        usage = document.get("usage")
        usage = as_object({} if usage is None else usage, "usage")
        tokens = optional_count(usage.get("prompt_tokens"), "usage.prompt_tokens")
    return Embeddings(_checked(vectors, len(request.inputs), request.dimensions), tokens)


def _answer_limit(request: EmbeddingRequest) -> int:
    dimensions = request.dimensions or MAX_DIMENSIONS // 8  # 8192: the widest models today
    return max(MIN_ANSWER_BYTES, len(request.inputs) * dimensions * BYTES_PER_NUMBER)


def _openai_vectors(document: dict[str, object]) -> list[object]:
    """`data`'s embeddings in index order (a runtime may list them in any order)."""
    data = as_list(document.get("data"), "data")
    placed: dict[int, object] = {}
    for item in data:
        entry = as_object(item, "data item")
        index = optional_count(entry.get("index"), "data.index")
        if index is None or index in placed:
            raise malformed("data items lack distinct indexes")
        placed[index] = entry.get("embedding")
    if sorted(placed) != list(range(len(placed))):
        raise malformed("data indexes are not 0 to n-1")
    return [placed[i] for i in range(len(placed))]


def _checked(vectors: list[object], count: int, dimensions: int | None) -> list[list[float]]:
    if len(vectors) != count:
        raise malformed(f"{len(vectors)} embeddings for {count} inputs")
    checked: list[list[float]] = []
    width: int | None = None
    for vector in vectors:
        numbers = as_list(vector, "embedding")
        if not numbers or len(numbers) > MAX_DIMENSIONS:
            raise malformed("an embedding is empty or too long")
        if width is not None and len(numbers) != width:
            raise malformed("embeddings of different lengths")
        width = len(numbers)
        for number in numbers:
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise malformed("an embedding holds something other than numbers")
            if not math.isfinite(number):
                raise malformed("an embedding holds a number that is not finite")
        checked.append([float(n) for n in numbers])
    if dimensions is not None and width != dimensions:
        raise malformed(f"embeddings of {width} dimensions where {dimensions} were asked for")
    return checked
