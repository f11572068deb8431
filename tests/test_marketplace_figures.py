"""Measured figures: the rollup over real traffic and health checks, its lease, its math."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select
from test_gateway import MESSAGES, MODEL, Market, market, platform_settings

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.marketplace.figures import (
    FiguresRollup,
    percentile,
    refresh_figures,
    take_lease,
    tokens_per_second,
)
from infer.models import HealthCheck, MarketFigures, Node, NodeHealthRollup, User, utcnow
from infer.nodes.history import record_checks
from infer.schema.figures import ProviderStats
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

__all__ = ["market", "platform_settings"]  # fixtures shared with test_gateway

REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"
STATS = """{ providers { id stats { ttftMsP50 ttftMsP90 tokensPerSecondP50 tokensPerSecondP90
  ttftMsP50Last30m uptime1h uptime24h uptime7d successRate requestsServed tokensServed } } }"""


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([float(v) for v in range(1, 11)], 0.9) == pytest.approx(9.1)


def test_throughput_counts_tokens_after_the_first_and_skips_short_answers() -> None:
    assert tokens_per_second(21, ttft_ms=100, duration_ms=1100) == 20.0
    assert tokens_per_second(15, ttft_ms=100, duration_ms=1100) is None
    assert tokens_per_second(40, ttft_ms=None, duration_ms=1100) is None
    assert tokens_per_second(40, ttft_ms=500, duration_ms=500) is None


def test_stats_read_each_figure_from_its_period_and_are_null_without_rows() -> None:
    empty = ProviderStats.from_rows([])
    assert (empty.ttft_ms_p50, empty.uptime7d, empty.requests_served) == (None, None, 0)
    operator = uuid.uuid4()
    rows = [
        MarketFigures(operator_id=operator, period="30m", ttft_ms_p50=80.0, requests=5),
        MarketFigures(operator_id=operator, period="1h", uptime=1.0),
        MarketFigures(operator_id=operator, period="24h", ttft_ms_p50=120.0, requests=50),
        MarketFigures(operator_id=operator, period="7d", uptime=0.5, requests=300),
    ]
    stats = ProviderStats.from_rows(rows)
    assert (stats.ttft_ms_p50, stats.ttft_ms_p50_last30m) == (120.0, 80.0)
    assert (stats.uptime1h, stats.uptime24h, stats.uptime7d) == (1.0, None, 0.5)
    assert stats.requests_served == 50


async def _operator(market: Market, email: str, url: str, model: str) -> uuid.UUID:
    key = await market._user(email)
    prices = [{"model": model, "inputPerMillion": "1", "outputPerMillion": "2"}]
    node = {"name": "n1", "runtime": "OLLAMA", "endpoint": url, "prices": prices}
    response = await market.http.post(
        "/graphql",
        json={"query": REGISTER, "variables": {"input": node}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.json()["data"]["registerNode"]["status"] == "ONLINE", response.text
    async with market.db.session() as session:
        return (await session.exec(select(User.id).where(User.email == email))).one()


async def _ask(market: Market, model: str, times: int) -> None:
    client = market.async_client()
    for _ in range(times):
        await client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]


async def _stats(market: Market) -> dict[str, dict[str, object]]:
    response = await market.http.post(
        "/graphql",
        json={"query": STATS},
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )
    body = response.json()
    assert "errors" not in body, body
    return {p["id"]: p["stats"] for p in body["data"]["providers"]}


async def test_the_faster_provider_measures_faster_and_a_quiet_one_shows_no_latency(
    market: Market,
) -> None:
    fast_config = SimulatorConfig(models=("fast:1b",), ttft_ms=0, tokens_per_second=1000)
    slow_config = SimulatorConfig(models=("slow:1b",), ttft_ms=150, tokens_per_second=200)
    quiet_config = SimulatorConfig(models=("quiet:1b",))
    with (
        serve_simulator_in_thread(fast_config) as fast_url,
        serve_simulator_in_thread(slow_config) as slow_url,
        serve_simulator_in_thread(quiet_config) as quiet_url,
    ):
        fast = await _operator(market, "fast@example.com", fast_url, "fast:1b")
        slow = await _operator(market, "slow@example.com", slow_url, "slow:1b")
        quiet = await _operator(market, "quiet@example.com", quiet_url, "quiet:1b")
        await _ask(market, "fast:1b", 6)
        await _ask(market, "slow:1b", 6)
        await _ask(market, "quiet:1b", 2)
        await market.settled()
        await refresh_figures(market.db)
        stats = await _stats(market)
    fast_stats, slow_stats, quiet_stats = stats[str(fast)], stats[str(slow)], stats[str(quiet)]
    assert fast_stats["ttftMsP50"] < slow_stats["ttftMsP50"]  # type: ignore[operator]
    assert slow_stats["ttftMsP50"] >= 150  # type: ignore[operator]
    assert fast_stats["tokensPerSecondP50"] > slow_stats["tokensPerSecondP50"]  # type: ignore[operator]
    assert fast_stats["ttftMsP50Last30m"] == fast_stats["ttftMsP50"]
    assert (fast_stats["successRate"], fast_stats["requestsServed"]) == (1.0, 6)
    assert fast_stats["tokensServed"] > 6 * 16  # type: ignore[operator]
    assert quiet_stats["requestsServed"] == 2
    assert (quiet_stats["ttftMsP50"], quiet_stats["tokensPerSecondP50"]) == (None, None)
    async with market.db.session() as session:
        per_model = (
            await session.exec(
                select(MarketFigures).where(
                    MarketFigures.operator_id == slow, MarketFigures.model == "slow:1b"
                )
            )
        ).all()
    assert {row.period for row in per_model} == {"30m", "1h", "24h", "7d"}


async def test_uptime_is_the_share_of_good_health_checks_once_there_are_enough(
    market: Market,
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=("up:1b",))) as url:
        operator = await _operator(market, "up@example.com", url, "up:1b")
    now = utcnow()
    async with market.db.transaction() as session:
        node_id = (await session.exec(select(Node.id).where(Node.operator_id == operator))).one()
        await session.exec(sa.delete(NodeHealthRollup))  # the monitor's own checks
        # Last 1 h: two checks (not enough); last 24 h: 4 of which 3 good; 7 d: 3 of 6 good.
        ages_ok = [(10, True), (20, False), (120, True), (180, True), (3000, False), (5000, False)]
        checks = [
            HealthCheck(node_id=node_id, ok=ok, checked_at=now - timedelta(minutes=minutes))
            for minutes, ok in ages_ok
        ]
        await record_checks(session, checks)
    await refresh_figures(market.db, now=now)
    query = "query($id: ID!) { provider(id: $id) { stats { uptime1h uptime24h uptime7d } } }"
    anonymous = await market.http.post(
        "/graphql", json={"query": query, "variables": {"id": str(operator)}}
    )
    stats = anonymous.json()["data"]["provider"]["stats"]  # no sign-in needed
    assert stats["uptime1h"] is None
    assert stats["uptime24h"] == 0.75
    assert stats["uptime7d"] == 0.5


async def test_two_replicas_sweeping_at_once_compute_once(market: Market) -> None:
    one, two = FiguresRollup(market.db, interval=60), FiguresRollup(market.db, interval=60)
    # The app's own rollup took the lease at startup: a later time finds it expired.
    now = utcnow() + timedelta(minutes=10)
    swept = await asyncio.gather(one.sweep(now=now), two.sweep(now=now))
    assert sorted(swept) == [False, True]
    holder, other = (one, two) if swept[0] else (two, one)
    assert await holder.sweep(now=now + timedelta(seconds=60))  # renews its own lease
    assert not await other.sweep(now=now + timedelta(seconds=61))
    assert await other.sweep(now=now + timedelta(seconds=181))  # the holder stopped renewing


async def test_a_lease_is_taken_once_until_it_expires(db: Database) -> None:
    now = utcnow()
    ttl = timedelta(seconds=30)
    assert await take_lease(db, name="job", holder="a", ttl=ttl, now=now)
    assert not await take_lease(db, name="job", holder="b", ttl=ttl, now=now)
    assert await take_lease(db, name="job", holder="a", ttl=ttl, now=now + timedelta(seconds=5))
    assert await take_lease(db, name="job", holder="b", ttl=ttl, now=now + timedelta(seconds=40))
    async with db.session() as session:
        rows = (await session.exec(select(MarketFigures))).all()
    assert rows == []  # taking a lease computes nothing by itself


async def test_the_platform_keeps_the_figures_fresh_by_itself(
    platform_settings: Settings, db: Database
) -> None:
    settings = platform_settings.model_copy(update={"figures_interval": 0.2})
    with (
        serve_in_thread(create_app(settings), lifespan="on") as url,
        serve_simulator_in_thread(SimulatorConfig(models=(MODEL,))) as simulator,
    ):
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        await market.add_node(simulator, "n1")
        await _ask(market, MODEL, 5)
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            [stats] = (await _stats(market)).values()
            if stats["requestsServed"] == 5:
                break
            await asyncio.sleep(0.1)
        await market.close()
    assert stats["requestsServed"] == 5
    assert stats["ttftMsP50"] is not None
