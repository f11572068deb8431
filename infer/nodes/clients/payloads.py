"""Reading untrusted JSON from runtimes: typed field access that fails only as UpstreamError."""

from __future__ import annotations

from typing import Any

import orjson

from infer.errors import UpstreamError
from infer.nodes.clients.base import ChatRequest, Usage

# What OpenAI's API defines; anything else a runtime says is reported as "stop".
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def malformed(what: str) -> UpstreamError:
    """The error for an answer we cannot use; it names our expectation, never their text."""
    return UpstreamError(f"the node sent a malformed answer ({what})")


def parse_json(data: bytes | str) -> object:
    """Decode one JSON document; an UpstreamError if it is not strict JSON.

    Bad UTF-8, bad syntax, nesting past 1024 levels, NaN or Infinity.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:  # a ValueError, as stdlib json's
        raise malformed("invalid JSON") from exc


def as_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise malformed(f"{what} is not an object")
    return value


def as_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise malformed(f"{what} is not a list")
    return value


def as_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise malformed(f"{what} is not a string")
    return value


def optional_text(value: object, what: str) -> str | None:
    return None if value is None else as_text(value, what)


def optional_count(value: object, what: str) -> int | None:
    """A token count: absent (None) or a non-negative integer (JSON booleans are not)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise malformed(f"{what} is not a non-negative integer")
    return value


def parse_usage(value: object) -> Usage | None:
    """An OpenAI `usage` object; None when absent or null."""
    if value is None:
        return None
    usage = as_object(value, "usage")
    prompt = optional_count(usage.get("prompt_tokens"), "usage.prompt_tokens")
    completion = optional_count(usage.get("completion_tokens"), "usage.completion_tokens")
    if prompt is None or completion is None:
        raise malformed("usage lacks prompt_tokens or completion_tokens")
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def finish_reason(value: str) -> str:
    """Map a runtime's stop reason onto OpenAI's; an error reason is an UpstreamError."""
    if value == "error":
        raise UpstreamError("the node reported an error while answering")
    return value if value in FINISH_REASONS else "stop"


def reject_error(document: dict[str, Any]) -> None:
    """Raise if a streamed object is an error report (its text is not passed on)."""
    if document.get("error") is not None or document.get("object") == "error":
        raise UpstreamError("the node reported an error while answering")


def messages(request: ChatRequest, *, roles: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The conversation as OpenAI-style message objects, with roles renamed as given."""
    rename = roles or {}
    return [{"role": rename.get(m.role, m.role), "content": m.content} for m in request.messages]


def sampling(request: ChatRequest) -> dict[str, object]:
    """The sampling fields a request sets, under their OpenAI names (unset ones left out)."""
    fields: dict[str, object] = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "stop": list(request.stop) or None,
    }
    return {name: value for name, value in fields.items() if value is not None}
