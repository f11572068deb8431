"""A hostile buyer's tools, schemas and images: refused at the edge in OpenAI's form,
naming the param, before any node is called and with nothing charged."""

from __future__ import annotations

from typing import Any

import pytest
from test_gateway import MODEL, platform_settings, simulator
from test_hostile_market import AsgiMarket, _add_node, _auth, inproc

from infer.simulator import SimulatorConfig, serve_simulator_in_thread

__all__ = ["inproc", "platform_settings", "simulator"]  # fixtures shared with other tests

HI = b'[{"role": "user", "content": "hi"}]'
TOOL = b'[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", %s}}}]'
SCHEMA = b'{"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", %s}}}'


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("tools", TOOL % b'"x": NaN', "tools"),
        ("tools", TOOL % b'"x": -Infinity', "tools"),
        ("tools", TOOL % b'"maxProperties": 1e400', "tools"),
        ("tools", TOOL % b'"maxProperties": 100000000000000000000000', "tools"),
        ("response_format", SCHEMA % b'"x": [Infinity]', "response_format"),
        ("response_format", SCHEMA % (b'"maxProperties": 1' + b"0" * 40), "response_format"),
    ],
    ids=["nan", "minus-infinity", "1e400", "big-integer", "infinity-in-schema", "big-in-schema"],
)
async def test_numbers_json_cannot_carry_in_tools_or_schemas_are_400_naming_the_param(
    inproc: tuple[AsgiMarket, Any], field: str, value: bytes, param: str
) -> None:
    market, _ = inproc
    # The simulator offers tools and JSON schemas, so only the edge's checks can refuse.
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,))) as url:
        await _add_node(market, url, "node", runtime="OLLAMA")
        before = await market.balance("buyer@example.com")
        body = b'{"model": "%s", "messages": %s, "%s": %s}' % (
            MODEL.encode(),
            HI,
            field.encode(),
            value,
        )
        response = await market.http.post(
            "/api/v1/chat/completions",
            content=body,
            headers=_auth(market) | {"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert str(error["param"]).startswith(param), error
        assert error["type"] == "invalid_request_error", error
        assert await market.usage() == []  # nothing metered: no node answered
        assert await market.balance("buyer@example.com") == before
    await market.assert_books_balance()
