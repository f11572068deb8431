"""Reading untrusted JSON from runtimes: typed field access that fails only as UpstreamError."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from typing import Any

import orjson

from infer.errors import UpstreamError
from infer.nodes.clients.base import ChatRequest, Image, Tool, ToolCallDelta, Usage

MAX_TOOL_CALLS = 128  # tool calls in one answer; a higher index is a malformed answer
# A tool call's id, as long as a buyer may send one back (infer/gateway/body.py).
MAX_TOOL_CALL_ID = 256
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


def mint_call_id() -> str:
    """An id for a tool call whose runtime gave none (Ollama), in OpenAI's style."""
    return f"call_{secrets.token_hex(12)}"


def tool_call_id(value: object) -> str | None:
    """A tool call's id, if it has one; longer than a buyer may send back is malformed."""
    found = optional_text(value, "tool call id")
    if found is not None and len(found) > MAX_TOOL_CALL_ID:
        raise malformed("tool call id too long")
    return found


def arguments_text(value: dict[str, Any], *, ensure_ascii: bool = True) -> str:
    """Tool call arguments sent as an object, as JSON text; nested past what the encoder
    can write (JSON itself allows 1024 levels) is malformed."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=ensure_ascii)
    except RecursionError as exc:
        raise malformed("tool call arguments nested too deeply") from exc


def tool_call_deltas(value: object) -> tuple[ToolCallDelta, ...]:
    """OpenAI's `tool_calls` of a delta or a message (arguments as text, or an object)."""
    if value is None:
        return ()
    found: list[ToolCallDelta] = []
    for number, item in enumerate(as_list(value, "tool_calls")):
        call = as_object(item, "tool call")
        position = optional_count(call.get("index"), "tool call index")
        position = number if position is None else position
        if position >= MAX_TOOL_CALLS:
            raise malformed("tool call index out of range")
        function = as_object(call.get("function") or {}, "tool call function")
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            arguments = arguments_text(arguments)
        found.append(
            ToolCallDelta(
                position,
                tool_call_id(call.get("id")),
                optional_text(function.get("name"), "tool call name"),
                optional_text(arguments, "tool call arguments") or "",
            )
        )
    return tuple(found)


def finish_reason(value: str) -> str:
    """Map a runtime's stop reason onto OpenAI's; an error reason is an UpstreamError."""
    if value == "error":
        raise UpstreamError("the node reported an error while answering")
    return value if value in FINISH_REASONS else "stop"


def reject_error(document: dict[str, Any]) -> None:
    """Raise if a streamed object is an error report (its text is not passed on)."""
    if document.get("error") is not None or document.get("object") == "error":
        raise UpstreamError("the node reported an error while answering")


def messages(
    request: ChatRequest, *, roles: dict[str, str] | None = None
) -> list[dict[str, object]]:
    """The conversation as OpenAI message objects, with roles renamed as given.

    Images go as content parts, tool calls with their arguments as JSON text.
    """
    rename = roles or {}
    found: list[dict[str, object]] = []
    for m in request.messages:
        item: dict[str, object] = {"role": rename.get(m.role, m.role), "content": m.content}
        if m.parts:
            item["content"] = [_part(part) for part in m.parts]
        if m.tool_calls:
            item["content"] = m.content or None
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
        found.append(item)
    return found


def _part(part: str | Image) -> dict[str, object]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    url: dict[str, object] = {"url": part.url}
    if part.detail is not None:
        url["detail"] = part.detail
    return {"type": "image_url", "image_url": url}


def tool_definitions(tools: Iterable[Tool]) -> list[dict[str, object]]:
    """The tools in OpenAI's form; unset fields left out."""
    found: list[dict[str, object]] = []
    for tool in tools:
        function: dict[str, object] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        if tool.parameters is not None:
            function["parameters"] = tool.parameters
        if tool.strict is not None:
            function["strict"] = tool.strict
        found.append({"type": "function", "function": function})
    return found


def openai_features(request: ChatRequest) -> dict[str, object]:
    """Tools, tool choice, response format and logprobs under OpenAI's names (unset left out)."""
    fields: dict[str, object] = {}
    if request.tools:
        fields["tools"] = tool_definitions(request.tools)
        if request.forced_tool is not None:
            fields["tool_choice"] = {"type": "function", "function": {"name": request.forced_tool}}
        elif request.tool_choice is not None:
            fields["tool_choice"] = request.tool_choice
        if request.parallel_tool_calls is not None:
            fields["parallel_tool_calls"] = request.parallel_tool_calls
    form = request.response_format
    if form is not None:
        if form.type == "json_object":
            fields["response_format"] = {"type": "json_object"}
        else:
            spec: dict[str, object] = {"name": form.name or "response", "schema": form.schema}
            if form.strict is not None:
                spec["strict"] = form.strict
            fields["response_format"] = {"type": "json_schema", "json_schema": spec}
    if request.logprobs:
        fields["logprobs"] = True
        if request.top_logprobs is not None:
            fields["top_logprobs"] = request.top_logprobs
    return fields


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
