"""The storefront as a new user tries it, without signing in: two providers measured on
real traffic, sorted by price and by latency, and reviews only from buyers they served."""

from __future__ import annotations

import openai
from test_gateway import MESSAGES, Market, market, platform_settings

from infer.audit import ClientInfo
from infer.billing.credits import grant_credits
from infer.marketplace.figures import refresh_figures
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

__all__ = ["market", "platform_settings"]  # fixtures shared with test_gateway

REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"
LISTING = """query($sort: ProviderSort!, $filter: ProviderFilter) {
  providers(sort: $sort, filter: $filter) {
    id name models stats { ttftMsP50 tokensPerSecondP50 requestsServed } } }"""
REVIEW = """mutation($p: ID!) { createReview(providerId: $p, rating: 5, comment: "quick") {
  id rating verified } }"""


async def _graphql(
    market: Market, query: str, variables: dict[str, object], key: str | None = None
) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await market.http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    return dict(response.json())


async def _operator(market: Market, email: str, url: str, model: str, price: str) -> str:
    key = await market._user(email)
    prices = [{"model": model, "inputPerMillion": price, "outputPerMillion": price}]
    node = {"name": "n1", "runtime": "OLLAMA", "endpoint": url, "prices": prices}
    body = await _graphql(market, REGISTER, {"input": node}, key)
    assert body["data"]["registerNode"]["status"] == "ONLINE", body  # type: ignore[index]
    found = await _graphql(market, "{ me { id } }", {}, key)
    return str(found["data"]["me"]["id"])  # type: ignore[index]


async def _ask(key: str, market: Market, model: str, times: int) -> None:
    client = openai.AsyncOpenAI(base_url=f"{market.url}/api/v1", api_key=key, max_retries=0)
    async with client:
        for _ in range(times):
            await client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]


async def _listed(market: Market, sort: str, **filter: object) -> list[dict[str, object]]:
    body = await _graphql(market, LISTING, {"sort": sort, "filter": filter or None})
    assert "errors" not in body, body
    return list(body["data"]["providers"])  # type: ignore[index]


async def test_a_visitor_sorts_providers_by_measured_figures_and_only_served_buyers_review(
    market: Market,
) -> None:
    fast_sim = SimulatorConfig(models=("fast:1b",), ttft_ms=0, tokens_per_second=1000)
    cheap_sim = SimulatorConfig(models=("cheap:1b",), ttft_ms=150, tokens_per_second=150)
    with (
        serve_simulator_in_thread(fast_sim) as fast_url,
        serve_simulator_in_thread(cheap_sim) as cheap_url,
    ):
        fast = await _operator(market, "fast@example.com", fast_url, "fast:1b", "5")
        cheap = await _operator(market, "cheap@example.com", cheap_url, "cheap:1b", "0.5")
        # One buyer uses only the fast provider, another only the cheap one.
        other_key = await market._user("other@example.com")
        await grant_credits(
            market.db, email="other@example.com", amount=10_000_000, client=ClientInfo.cli()
        )
        await _ask(market.buyer_key, market, "fast:1b", 6)
        await _ask(other_key, market, "cheap:1b", 6)
        await market.settled()
        await refresh_figures(market.db)

        by_price = await _listed(market, "PRICE")
        by_latency = await _listed(market, "LATENCY")
        cheap_only = await _listed(market, "LATENCY", maxPrice="2")
        fast_model = await _listed(market, "PRICE", model="fast:1b")

    assert [p["id"] for p in by_price] == [cheap, fast]
    assert [p["id"] for p in by_latency] == [fast, cheap]
    stats = {p["id"]: p["stats"] for p in by_latency}
    assert stats[fast]["ttftMsP50"] < stats[cheap]["ttftMsP50"]  # type: ignore[index]
    assert stats[fast]["tokensPerSecondP50"] > stats[cheap]["tokensPerSecondP50"]  # type: ignore[index]
    assert stats[cheap]["requestsServed"] == 6  # type: ignore[index]
    assert [p["id"] for p in cheap_only] == [cheap]
    assert [(p["id"], p["models"]) for p in fast_model] == [(fast, ["fast:1b"])]

    page = await _graphql(
        market,
        "query($p: ID!) { provider(id: $p) { offers { model inputPerMillion outputPerMillion"
        " stats { ttftMsP50 requestsServed } } } }",
        {"p": cheap},
        None,
    )
    [offer] = page["data"]["provider"]["offers"]  # type: ignore[index]
    assert (offer["model"], offer["inputPerMillion"], offer["outputPerMillion"]) == (
        "cheap:1b",
        "0.50",
        "0.50",
    )
    assert offer["stats"]["requestsServed"] == 6
    reviewed = await _graphql(market, REVIEW, {"p": fast}, market.buyer_key)
    assert reviewed["data"]["createReview"]["verified"] is True, reviewed  # type: ignore[index]
    refused = await _graphql(market, REVIEW, {"p": cheap}, market.buyer_key)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN", refused  # type: ignore[index]
    rated = await _listed(market, "RATING")
    assert [p["id"] for p in rated] == [fast, cheap]  # the unrated one last
