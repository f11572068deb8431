"""Parsing the requests the simulator accepts, in Ollama's and OpenAI's dialects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from infer.simulator.features import Features, read_features


class Failure(Exception):
    """A request answered with an error; each API family renders it its own way."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Dropped(Exception):
    """Raised by a generation at the point where the connection is to be cut."""


@dataclass(slots=True)
class Job:
    """One chat request, whichever API it came through."""

    model: str
    contents: list[str]
    stream: bool
    limit: int | None
    seed: int | None
    include_usage: bool = False
    features: Features | None = None  # tools, a response format, images (features.py)


def _integer(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Failure(400, f"{name} must be an integer")
    return int(value)


def _text(content: object) -> str:
    """Text of a message content: a string, or OpenAI content parts (text parts only)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise Failure(400, "invalid message format")


def load_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise Failure(400, "missing request body")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise Failure(400, f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Failure(400, "request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise Failure(400, "model is required")
    return data


def _messages(data: dict[str, Any]) -> list[str]:
    messages = data.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Failure(400, "messages must be a list of objects")
    return [_text(m.get("content")) for m in messages]


def _features(data: dict[str, Any], dialect: str) -> Features | None:
    """The request's features, when it has any (a plain chat skips the reading)."""
    plain = not any(key in data for key in ("tools", "format", "response_format")) and all(
        isinstance(m, dict)
        and m.get("role") != "tool"
        and isinstance(m.get("content"), str)
        and not m.get("images")
        for m in data.get("messages") or []
    )
    return None if plain else read_features(data, dialect=dialect)


def parse_ollama_chat(data: dict[str, Any]) -> Job:
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise Failure(400, "options must be an object")
    limit = _integer(options.get("num_predict"), "num_predict")
    return Job(
        model=data["model"],
        contents=_messages(data),
        stream=data.get("stream") is not False,
        limit=limit if limit and limit > 0 else None,  # Ollama: -1 and 0 mean no limit
        seed=_integer(options.get("seed"), "seed"),
        features=_features(data, "ollama"),
    )


def parse_ollama_generate(data: dict[str, Any]) -> Job:
    job = parse_ollama_chat(data | {"messages": None})
    job.contents = [_text(data.get(key)) for key in ("system", "prompt") if data.get(key)]
    return job


def parse_openai_chat(data: dict[str, Any]) -> Job:
    contents = _messages(data)
    if not contents:
        raise Failure(400, "[] is too short - 'messages'")
    limit = _integer(data.get("max_completion_tokens"), "max_completion_tokens")
    limit = limit if limit is not None else _integer(data.get("max_tokens"), "max_tokens")
    options = data.get("stream_options") or {}
    return Job(
        model=data["model"],
        contents=contents,
        stream=data.get("stream") is True,
        limit=limit if limit and limit > 0 else None,
        seed=_integer(data.get("seed"), "seed"),
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        features=_features(data, "openai"),
    )
