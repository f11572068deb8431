"""Routing in a large market: a plan scores a bounded sample and keeps the guarantees."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

import pytest

from infer.errors import NoNodeAvailable
from infer.models import Runtime
from infer.routing import Candidate, MemoryRouterState, NodeCatalog, NodeStats, Preferences, Router
from infer.routing.index import ModelIndex
from infer.routing.sample import MAX_SCORED, SMALL

USD = 1_000_000  # micro-USD


def node(i: int, **changes: object) -> Candidate:
    candidate = Candidate(
        node_id=uuid.UUID(int=i + 1),
        operator_id=uuid.UUID(int=i + 1),
        name=f"n{i}",
        runtime=Runtime.OLLAMA,
        endpoint=f"http://n{i}.example:11434",
        token_ciphertext=None,
        token_key_version=None,
        model="llama3",
        input_price_per_million=USD,
        output_price_per_million=2 * USD,
        capacity=4,
        health_latency_ms=100.0,
    )
    return replace(candidate, **changes)  # type: ignore[arg-type]


def market(size: int, **changes: object) -> list[Candidate]:
    return [node(i, **changes) for i in range(size)]


class _IndexedCatalog(NodeCatalog):
    """The catalog as a plan sees it: one index per model, built once."""

    def __init__(self, candidates: list[Candidate]) -> None:
        self._index = ModelIndex(candidates)

    async def candidates(self, model: str) -> list[Candidate]:
        return list(self._index.candidates)

    async def index(self, model: str) -> ModelIndex | None:
        return self._index if model == "llama3" else None


class _CountingState(MemoryRouterState):
    """Counts the nodes a plan asks figures for: the candidates it scores."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def snapshot(self, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, NodeStats]:
        found = await super().snapshot(node_ids)
        self.asked += len(found)
        return found


def router(candidates: list[Candidate], seed: int = 1, **kwargs: object) -> Router:
    catalog = _IndexedCatalog(candidates)
    return Router(catalog, _CountingState(), rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]


def scored(r: Router) -> int:
    state = r.state
    assert isinstance(state, _CountingState)
    return state.asked


async def test_a_plan_scores_as_many_nodes_at_10000_as_at_100() -> None:
    counts = {}
    for size in (100, 1_000, 10_000):
        r = router(market(size))
        await r.plan("llama3")  # the views are made once, by the first plan
        before = scored(r)
        for _ in range(20):
            assert len(await r.plan("llama3")) == 3
        counts[size] = (scored(r) - before) / 20
    assert counts[10_000] <= counts[100] * 1.2
    assert counts[10_000] <= 48 < SMALL < MAX_SCORED


async def test_a_small_market_is_scored_whole() -> None:
    r = router(market(SMALL))
    await r.plan("llama3")
    assert scored(r) == SMALL


async def test_the_best_few_by_health_latency_are_always_in_the_plan() -> None:
    # 10,000 nodes 1 ms apart, as scoring all of them would: the first pick one of the
    # four fastest (power of two choices), the fastest two always among the attempts.
    candidates = [node(i, health_latency_ms=10.0 + i) for i in range(10_000)]
    random.Random(5).shuffle(candidates)
    r = router(candidates)
    for _ in range(200):
        attempts = {c.name for c in await r.plan("llama3")}
        assert {"n0", "n1"} < attempts < {"n0", "n1", "n2", "n3"}


async def test_a_fast_node_found_by_the_sample_keeps_its_traffic() -> None:
    # Its health check is as slow as everyone's; real traffic measured it much faster.
    candidates = market(10_000, health_latency_ms=2_000.0)
    fast = candidates[7_777]
    r = router(candidates, seed=3)
    await r.state.release(fast.node_id, ok=True, ttft_ms=20.0, tokens_per_second=200.0)
    firsts = [(await r.plan("llama3"))[0] for _ in range(3_000)]
    found = firsts.index(fast)  # the sample reaches it (about 1 plan in 600)
    later = firsts[found:]
    assert sum(c == fast for c in later) >= 0.9 * len(later)


async def test_equal_nodes_share_the_first_pick_across_the_market() -> None:
    r = router(market(1_000), seed=11)
    firsts = Counter([(await r.plan("llama3"))[0].name for _ in range(2_000)])
    assert len(firsts) >= 500  # not the first few by node id
    assert max(firsts.values()) <= 40


async def test_a_node_named_in_order_is_found_among_10000() -> None:
    r = router(market(10_000))
    only = Preferences(order=("n9876",), allow_fallbacks=False)
    assert [c.name for c in await r.plan("llama3", only)] == ["n9876"]
    assert scored(r) == 1
    first = Preferences(order=(str(uuid.UUID(int=4322)),))
    attempts = await r.plan("llama3", first)
    assert attempts[0].name == "n4321"
    assert len(attempts) == 3


async def test_max_price_is_applied_before_sampling() -> None:
    # One node in 10,000 is within the buyer's limit: the plan finds it, and only it.
    candidates = market(10_000)
    candidates[6_543] = node(6_543, input_price_per_million=USD // 10)
    r = router(candidates)
    limit = Preferences(max_price_prompt=USD // 2)
    assert [c.name for c in await r.plan("llama3", limit)] == ["n6543"]
    with pytest.raises(NoNodeAvailable, match="max_price"):
        await r.plan("llama3", Preferences(max_price_prompt=USD // 20))


async def test_max_price_on_both_prices_finds_the_node_under_both() -> None:
    # Half the market is cheap for prompts, half for completions; one node for both.
    candidates = [
        node(i, input_price_per_million=USD, output_price_per_million=9 * USD)
        if i % 2
        else node(i, input_price_per_million=9 * USD, output_price_per_million=USD)
        for i in range(10_000)
    ]
    candidates[4_000] = node(4_000, input_price_per_million=USD, output_price_per_million=USD)
    r = router(candidates)
    limit = Preferences(max_price_prompt=2 * USD, max_price_completion=2 * USD)
    assert [c.name for c in await r.plan("llama3", limit)] == ["n4000"]


async def test_sort_by_price_puts_the_cheapest_of_10000_first() -> None:
    candidates = market(10_000)
    candidates[1_234] = node(1_234, input_price_per_million=USD // 2)
    r = router(candidates)
    for _ in range(20):
        assert (await r.plan("llama3", Preferences(sort="price")))[0].name == "n1234"


async def test_online_nodes_come_before_10000_degraded_faster_ones() -> None:
    candidates = market(10_000, degraded=True, health_latency_ms=5.0)
    candidates[42] = node(42, health_latency_ms=900.0)
    attempts = await router(candidates).plan("llama3")
    assert attempts[0].name == "n42"
    assert len(attempts) == 3
    assert all(c.degraded for c in attempts[1:])


async def test_busy_nodes_come_after_idle_ones_in_a_large_market() -> None:
    candidates = market(1_000)
    r = router(candidates, seed=2)
    busy = {c.node_id for c in candidates[::2]}
    for node_id in busy:
        for _ in range(4):  # at capacity
            await r.state.acquire(node_id)
    for _ in range(100):
        assert all(c.node_id not in busy for c in await r.plan("llama3"))


@pytest.mark.parametrize("attempts", [1, 3, 5])
async def test_the_failover_list_is_as_long_as_asked_and_no_longer(attempts: int) -> None:
    r = router(market(10_000), max_attempts=attempts)
    assert len(await r.plan("llama3")) == attempts


async def test_the_same_seed_plans_the_same() -> None:
    candidates = market(5_000)
    plans = [[await router(candidates, seed=9).plan("llama3") for _ in range(5)] for _ in "ab"]
    assert plans[0] == plans[1]
