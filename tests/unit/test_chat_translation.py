"""Tools, formats and images in each runtime's own form, and back (pure functions)."""

from __future__ import annotations

import base64
import json

import jsonschema
import pytest

from infer.gateway.body import parse_body
from infer.gateway.routes import _deltas, _ToolCallEvents
from infer.nodes.clients import ollama, openai
from infer.nodes.clients.base import ChatChunk, ChatRequest, ToolCallDelta
from infer.simulator.features import minimal

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(8)).decode()
TOOL = {
    "type": "function",
    "function": {"name": "add", "parameters": {"type": "object", "properties": {}}},
}
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "add", "arguments": '{"a":1}'}}
    ],
}
LOOP = [
    {"role": "user", "content": [{"type": "text", "text": "Add"}, {
        "type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    CALLED,
    {"role": "tool", "tool_call_id": "call_9", "content": "2"},
]  # fmt: skip


def request(**fields: object) -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return parse_body(json.dumps(body).encode(), max_tokens_limit=100).to_chat_request(
        max_tokens=10
    )


def test_a_plain_request_needs_nothing_and_its_bodies_are_unchanged() -> None:
    plain = request()
    assert plain.needs == frozenset()
    assert set(openai.chat_body(plain, include_usage=False)) == {
        "max_tokens", "model", "messages", "stream",
    }  # fmt: skip
    assert ollama.chat_body(plain)["messages"] == [{"role": "user", "content": "Hi"}]


def test_needs_names_every_feature_used() -> None:
    used = request(
        messages=LOOP,
        tools=[TOOL],
        response_format={"type": "json_object"},
        logprobs=True,
    )
    assert used.needs == {"tools", "vision", "json_object", "logprobs"}


def test_ollama_gets_images_beside_the_text_and_arguments_as_objects() -> None:
    body = ollama.chat_body(request(messages=LOOP, tools=[TOOL]))
    assert body["messages"] == [
        {"role": "user", "content": "Add", "images": [PNG]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "add", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "2", "tool_call_id": "call_9", "tool_name": "add"},
    ]  # fmt: skip
    assert body["tools"] == [TOOL]


def test_ollama_is_offered_only_the_named_tool_and_none_for_tool_choice_none() -> None:
    other = {"type": "function", "function": {"name": "sub"}}
    forced = {"type": "function", "function": {"name": "sub"}}
    assert ollama.chat_body(request(tools=[TOOL, other], tool_choice=forced))["tools"] == [other]
    assert "tools" not in ollama.chat_body(request(tools=[TOOL], tool_choice="none"))


def test_openai_compatible_servers_get_openais_fields() -> None:
    body = openai.chat_body(
        request(messages=LOOP, tools=[TOOL], tool_choice="required", parallel_tool_calls=False),
        include_usage=True,
    )
    assert (body["tools"], body["tool_choice"], body["parallel_tool_calls"]) == (
        [TOOL], "required", False,
    )  # fmt: skip
    assert body["messages"][1] == CALLED  # type: ignore[index]
    assert body["messages"][2] == LOOP[2]  # type: ignore[index]


def test_ollamas_whole_tool_calls_get_ids_positions_and_json_text() -> None:
    line = {
        "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "add", "arguments": {"a": 1, "b": "ü"}}},
            {"id": "call_own", "function": {"name": "sub", "arguments": {}}},
        ]},
        "done": False,
    }  # fmt: skip
    chunk = ollama.parse_line(json.dumps(line).encode(), calls=2)
    first, second = chunk.tool_calls
    assert (first.position, first.name, first.arguments) == (2, "add", '{"a":1,"b":"ü"}')
    assert str(first.id).startswith("call_")
    assert (second.position, second.id) == (3, "call_own")


@pytest.mark.parametrize(
    "tool_calls",
    [[{"function": {"name": 5, "arguments": {}}}], [{"function": {"name": "f", "arguments": []}}]],
)
def test_a_malformed_ollama_tool_call_is_the_nodes_error(tool_calls: object) -> None:
    line = {"message": {"content": "", "tool_calls": tool_calls}, "done": False}
    with pytest.raises(Exception, match="malformed"):
        ollama.parse_line(json.dumps(line).encode())


def test_openai_tool_call_deltas_are_read_as_they_stream() -> None:
    opening = {"index": 0, "id": "call_1", "type": "function",
               "function": {"name": "add", "arguments": ""}}  # fmt: skip
    fragment = {"index": 0, "function": {"arguments": '{"a"'}}
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [opening]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [fragment]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    chunks = [openai.parse_chunk(json.dumps(e).encode()) for e in events]
    assert chunks[0].tool_calls == (ToolCallDelta(0, "call_1", "add", ""),)
    assert chunks[1].tool_calls == (ToolCallDelta(0, None, None, '{"a"'),)
    assert chunks[2].finish_reason == "tool_calls"


def _one(schema: dict[str, object], **more: object) -> dict[str, object]:
    return {"type": "object", "properties": {"p": schema}, "required": ["p"], **more}


@pytest.mark.parametrize(
    "schema",
    [
        _one({"type": "string", "maxLength": 0}),
        _one({"type": "number", "exclusiveMinimum": 2}),
        _one({"$ref": "#/$defs/E"}, **{"$defs": {"E": {"enum": ["x", "y"]}}}),
        _one({"anyOf": [{"type": "null"}, {"type": "integer"}]}),
        {"type": "array", "items": {"type": "boolean"}, "minItems": 2},
    ],
)
def test_the_simulators_minimal_instance_satisfies_the_schema(schema: dict[str, object]) -> None:
    jsonschema.validate(minimal(schema, schema), schema)


def test_logprobs_of_a_streamed_piece_are_kept_as_sent() -> None:
    token = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
    event = {
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [token]}}]
    }
    chunk = openai.parse_chunk(json.dumps(event).encode())
    assert (chunk.content, chunk.logprobs) == ("Hi", (token,))


def test_the_gateway_opens_each_call_then_sends_only_argument_fragments() -> None:
    calls = _ToolCallEvents()
    piece = ChatChunk(
        tool_calls=(ToolCallDelta(0, "call_a", "add", '{"a":'), ToolCallDelta(1, "call_b", "sub"))
    )
    later = ChatChunk(tool_calls=(ToolCallDelta(0, None, None, "1}"),))
    assert _deltas(piece, calls, first=True) + _deltas(later, calls, first=False) == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "add", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]},
        {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                         "function": {"name": "sub", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
    ]  # fmt: skip
    assert calls.made
