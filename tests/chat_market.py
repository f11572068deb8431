"""A served platform with a simulator node, for the tests of tools, structured output and images."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from test_gateway import REGISTER, Market

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

CREDITS = 10_000_000


@contextlib.asynccontextmanager
async def served_market(
    settings: Settings, db: Database, *models: str
) -> AsyncIterator[tuple[Market, str]]:
    """A platform and one Ollama-faced simulator node serving `models` (seed 7)."""
    config = SimulatorConfig(models=models, seed=7)
    with (
        serve_simulator_in_thread(config) as simulator,
        serve_in_thread(create_app(settings), lifespan="on") as url,
    ):
        market = Market(url, db)
        await market.setup(credits=CREDITS)
        await add_node(market, simulator, models)
        try:
            yield market, simulator
        finally:
            await market.close()


async def add_node(market: Market, endpoint: str, models: tuple[str, ...]) -> None:
    """An Ollama node serving `models` at µ$1 a prompt token and µ$2 an answer token."""
    prices = [{"model": m, "inputPerMillion": "1", "outputPerMillion": "2"} for m in models]
    node = {"name": "sim", "runtime": "OLLAMA", "endpoint": endpoint, "prices": prices}
    response = await market.http.post(
        "/graphql",
        json={"query": REGISTER, "variables": {"input": node}},
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    assert response.json()["data"]["registerNode"]["status"] == "ONLINE", response.text


async def post_chat(market: Market, body: dict[str, object]) -> httpx.Response:
    return await market.http.post(
        "/api/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )


async def assert_nothing_charged(market: Market) -> None:
    """No usage recorded, the balance whole, the books balanced with no hold open."""
    assert await market.usage() == []
    assert await market.balance("buyer@example.com") == CREDITS
    await market.assert_books_balance()
