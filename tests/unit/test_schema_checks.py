"""Tool and response schemas: checked once per process, and large bodies off the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
import pytest

from infer.errors import BadInput
from infer.gateway import body as body_module
from infer.gateway import features
from infer.gateway.body import OFF_LOOP_BYTES, parse_large_body


def _tools(count: int, *, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": f"tool_{tag}_{i}",
                "parameters": {
                    "type": "object",
                    "properties": {f"p{j}_{tag}_{i}": {"type": "string"} for j in range(8)},
                },
            },
        }
        for i in range(count)
    ]


def _raw(tools: list[dict[str, Any]]) -> bytes:
    messages = [{"role": "user", "content": "hi"}]
    return orjson.dumps({"model": "m", "messages": messages, "tools": tools})


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    checked: list[str] = []
    real = features._schema_problem

    def spy(schema: dict[str, Any]) -> str:
        checked.append(threading.current_thread().name)
        return real(schema)

    monkeypatch.setattr(features, "_schema_problem", spy)
    return checked


def test_an_agents_tools_are_checked_once_not_at_every_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = _spy(monkeypatch)
    raw = _raw(_tools(3, tag="once"))
    for _ in range(5):
        body_module.parse_body(raw, max_tokens_limit=100)
    assert len(checked) == 3  # one per distinct schema, whatever the turns


def test_a_bad_schema_is_refused_every_time_it_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    tools = _tools(1, tag="bad")
    tools[0]["function"]["parameters"]["properties"] = {"x": {"type": "no-such-type"}}
    for _ in range(2):
        with pytest.raises(BadInput) as refused:
            body_module.parse_body(_raw(tools), max_tokens_limit=100)
        assert refused.value.param == "tools.0.function.parameters"


def test_a_large_body_is_checked_on_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = _spy(monkeypatch)
    small, large = _raw(_tools(1, tag="small")), _raw(_tools(100, tag="large"))
    assert len(small) < OFF_LOOP_BYTES <= len(large)
    asyncio.run(parse_large_body(small, max_tokens_limit=100))
    asyncio.run(parse_large_body(large, max_tokens_limit=100))
    main = threading.main_thread().name
    assert checked[0] == main
    assert len(checked) == 101
    assert all(name != main for name in checked[1:])
