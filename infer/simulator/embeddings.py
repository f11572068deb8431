"""The simulator's embeddings: Ollama's POST /api/embed and OpenAI's POST /v1/embeddings.

A model is an embedding model when its name says so (it holds "embed", as nomic-embed-text
and mxbai-embed-large do, or "minilm"); /api/show then lists only "embedding" among its
capabilities. Vectors are deterministic: each number comes from a SHA-256 of the model,
the text and the position, so a test can compute the exact vector it should receive.
Token counts are the chat's: one per word or punctuation mark, per input.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from infer.simulator.models import count_prompt_tokens, json_response
from infer.simulator.requests import Failure, load_body

DIMENSIONS = 16  # small, so that a test can check every number
MAX_DIMENSIONS = 4096


def is_embedding_model(name: str) -> bool:
    lowered = name.lower()
    return "embed" in lowered or "minilm" in lowered


def capabilities(name: str) -> list[str]:
    """What /api/show reports for a model."""
    return ["embedding"] if is_embedding_model(name) else ["completion", "tools"]


def vector(model: str, text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """The simulator's embedding of `text`: unit length, each component in [-1, 1]."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(f"{model}\x00{text}\x00{counter}".encode()).digest()
        # Eight 32-bit words a digest, each as a number in [-1, 1).
        raw += (word / 2**31 - 1.0 for word in struct.unpack("<8I", digest))
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def tokens(inputs: Sequence[str]) -> int:
    """Input tokens: per input its words and marks (no per-message overhead)."""
    return sum(count_prompt_tokens([text]) - count_prompt_tokens([""]) for text in inputs)


def _request(data: dict[str, Any]) -> tuple[str, list[str], int]:
    model, given, dimensions = data.get("model"), data.get("input"), data.get("dimensions")
    if not isinstance(model, str) or not model:
        raise Failure(400, "model is required")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise Failure(400, "input must be a string or a list of strings")
    if dimensions is None:
        dimensions = DIMENSIONS
    if not isinstance(dimensions, int) or isinstance(dimensions, bool):
        raise Failure(400, "dimensions must be an integer")
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise Failure(400, f"dimensions must be 1 to {MAX_DIMENSIONS}")
    return model, inputs, dimensions


async def ollama_embed(
    request: Request, resolve: Callable[[str], str], error: Callable[[Failure], Response]
) -> Response:
    """Ollama's /api/embed: {"model", "embeddings": [[...]], "prompt_eval_count", ...}."""
    try:
        model, inputs, dimensions = _request(load_body(await request.body()))
        name = resolve(model)
    except Failure as failure:
        return error(failure)
    if not is_embedding_model(name):
        return error(Failure(400, f'"{model}" does not support embeddings'))
    return json_response(
        {
            "model": name,
            "embeddings": [vector(name, text, dimensions) for text in inputs],
            "total_duration": 1000,
            "load_duration": 1,
            "prompt_eval_count": tokens(inputs),
        }
    )


async def openai_embeddings(
    request: Request, resolve: Callable[[str], str], error: Callable[[Failure], Response]
) -> Response:
    """OpenAI's /v1/embeddings (always floats)."""
    try:
        model, inputs, dimensions = _request(load_body(await request.body()))
        name = resolve(model)
    except Failure as failure:
        return error(failure)
    if not is_embedding_model(name):
        return error(Failure(400, f"model '{model}' does not support embeddings"))
    count = tokens(inputs)
    data = [
        {"object": "embedding", "index": i, "embedding": vector(name, text, dimensions)}
        for i, text in enumerate(inputs)
    ]
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }
    )
