"""A node that lies about its token counts is billed what the platform itself relayed."""

from __future__ import annotations

import json

import pytest
from runtimes import USAGE_PROMPT_TOKENS, FakeRuntime
from test_gateway import MESSAGES, MODEL, Market

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.simulator import serve_in_thread

CREDITS = 10_000_000
PIECES = ("Hello", ",", " wide", " world", "!")  # 5 chunks, 18 bytes: 3 to 18 tokens


async def _complete(market: Market, *, stream: bool) -> tuple[int, bool]:
    """One completion as a buyer sees it: the completion tokens and `estimated` it reports."""
    response = await market.http.post(
        "/api/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": stream},
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )
    assert response.status_code == 200, response.text
    if stream:
        events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
        assert events[-1] == "[DONE]"
        text = "".join(
            choice["delta"].get("content") or ""
            for event in events[:-1]
            for choice in json.loads(event)["choices"]
        )
        usage = json.loads(events[-2])["usage"]
    else:
        text = response.json()["choices"][0]["message"]["content"]
        usage = response.json()["usage"]
    assert text == "".join(PIECES)
    return usage["completion_tokens"], usage["estimated"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("usage_scale", "billed", "estimated"),
    [(0, 5, True), (7, 5, True), (1, 5, False)],
    ids=["reports-zero", "reports-seven-times", "honest"],
)
async def test_a_node_misreporting_completion_tokens_is_billed_the_relayed_chunks(
    settings: Settings,
    db: Database,
    stream: bool,
    usage_scale: int,
    billed: int,
    estimated: bool,
) -> None:
    runtime = FakeRuntime(dialect="ollama", models=(MODEL,), pieces=PIECES, usage_scale=usage_scale)
    with (
        serve_in_thread(runtime) as node,
        serve_in_thread(create_app(settings), lifespan="on") as url,
    ):
        market = Market(url, db)
        await market.setup(credits=CREDITS)
        await market.add_node(node, "liar")
        assert await _complete(market, stream=stream) == (billed, estimated)
        [record] = await market.usage()
        buyer = await market.balance("buyer@example.com")
        operator = await market.balance("operator@example.com")
        await market.close()
    cost = USAGE_PROMPT_TOKENS * 1 + billed * 2  # the test market's prices: µ$1 in, µ$2 out
    assert (record.completion_tokens, record.estimated) == (billed, estimated)
    assert record.prompt_tokens == USAGE_PROMPT_TOKENS
    assert record.cost == cost
    assert buyer == CREDITS - cost
    assert operator == record.operator_earning == cost - cost // 10
    await market.assert_books_balance()
