"""Routing without I/O: scores, the order of attempts, preferences, and the Router's errors."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import replace

import pytest

from infer.errors import BadInput, NoNodeAvailable, NotFound
from infer.models import Runtime
from infer.routing import (
    Candidate,
    MemoryRouterState,
    NodeCatalog,
    NodeStats,
    Preferences,
    Router,
    parse_preferences,
)
from infer.routing.scoring import plan, score, throughput_sample
from infer.routing.state import STALE_SECONDS

NOW = 1_000_000.0
USD = 1_000_000  # micro-USD


def node(name: str, *, price: tuple[int, int] = (USD, 2 * USD), **changes: object) -> Candidate:
    candidate = Candidate(
        node_id=uuid.uuid4(),
        operator_id=uuid.uuid4(),
        name=name,
        runtime=Runtime.OLLAMA,
        endpoint=f"http://{name}.example:11434",
        token_ciphertext=None,
        token_key_version=None,
        model="llama3",
        input_price_per_million=price[0],
        output_price_per_million=price[1],
        capacity=4,
        health_latency_ms=None,
    )
    return replace(candidate, **changes)  # type: ignore[arg-type]


FAST = NodeStats(ttft_ms_ewma=100, tokens_per_second_ewma=80, measured_at=NOW)
SLOW = NodeStats(ttft_ms_ewma=900, tokens_per_second_ewma=15, measured_at=NOW)


def names(
    candidates: list[Candidate],
    stats: dict[uuid.UUID, NodeStats] | None = None,
    preferences: Preferences | None = None,
    seed: int = 1,
) -> list[str]:
    chosen = plan(
        candidates, stats or {}, preferences or Preferences(), random.Random(seed), now=NOW
    )
    return [candidate.name for candidate in chosen]


def test_the_faster_node_is_tried_first() -> None:
    a, b = node("a"), node("b")
    assert names([a, b], {a.node_id: SLOW, b.node_id: FAST}) == ["b", "a"]


def test_a_busy_node_loses_to_an_idle_equal_one() -> None:
    a, b = node("a"), node("b")
    stats = {a.node_id: replace(FAST, in_flight=3), b.node_id: FAST}
    assert all(names([a, b], stats, seed=seed)[0] == "b" for seed in range(50))


def test_two_equal_nodes_share_the_first_pick() -> None:
    a, b = node("a"), node("b")
    rng = random.Random(7)
    stats = {a.node_id: FAST, b.node_id: FAST}
    firsts = Counter(plan([a, b], stats, Preferences(), rng, now=NOW)[0].name for _ in range(1000))
    assert 350 <= firsts["a"] <= 650
    assert firsts["a"] + firsts["b"] == 1000


def test_a_few_milliseconds_apart_still_counts_as_equal() -> None:
    # Short answers (4 tokens: estimates near 100 ms) measured once during a 30 ms pause.
    a, b = node("a"), node("b")
    stats = {a.node_id: replace(FAST, ttft_ms_ewma=35), b.node_id: replace(FAST, ttft_ms_ewma=5)}
    rng = random.Random(3)
    firsts = Counter(
        plan([a, b], stats, Preferences(), rng, expected_output_tokens=4, now=NOW)[0].name
        for _ in range(1000)
    )
    assert 350 <= firsts["a"] <= 650
    # A real difference still decides: 150 ms more to the first token.
    stats[a.node_id] = replace(FAST, ttft_ms_ewma=155)
    assert all(
        plan([a, b], stats, Preferences(), rng, expected_output_tokens=4, now=NOW)[0].name == "b"
        for _ in range(200)
    )


def test_sort_by_price_puts_the_cheapest_first() -> None:
    dear, cheap = node("dear", price=(3 * USD, 6 * USD)), node("cheap", price=(USD, USD))
    stats = {dear.node_id: FAST, cheap.node_id: SLOW}
    assert names([dear, cheap], stats, Preferences(sort="price")) == ["cheap", "dear"]


def test_sort_by_throughput_puts_the_most_tokens_per_second_first() -> None:
    a, b = node("a"), node("b")
    stats = {a.node_id: replace(FAST, tokens_per_second_ewma=20), b.node_id: FAST}
    assert names([a, b], stats, Preferences(sort="throughput")) == ["b", "a"]


def test_max_price_drops_nodes_above_it() -> None:
    dear, cheap = node("dear", price=(3 * USD, 6 * USD)), node("cheap", price=(USD, USD))
    prefs = Preferences(max_price_prompt=2 * USD, max_price_completion=2 * USD)
    assert names([dear, cheap], {}, prefs) == ["cheap"]


def test_ordered_nodes_come_first_then_the_rest() -> None:
    a, b, c = node("a"), node("b"), node("c")
    stats = {a.node_id: FAST, b.node_id: SLOW, c.node_id: SLOW}
    prefs = Preferences(order=("c", str(b.node_id)))
    assert names([a, b, c], stats, prefs) == ["c", "b", "a"]


def test_without_fallbacks_only_ordered_nodes_are_tried() -> None:
    a, b, c = node("a"), node("b"), node("c")
    prefs = Preferences(order=("b",), allow_fallbacks=False)
    assert names([a, b, c], {}, prefs) == ["b"]


def test_without_fallbacks_or_order_only_the_best_is_tried() -> None:
    a, b = node("a"), node("b")
    stats = {a.node_id: SLOW, b.node_id: FAST}
    assert names([a, b], stats, Preferences(allow_fallbacks=False)) == ["b"]


def test_degraded_nodes_come_after_online_ones() -> None:
    a, b = node("a", degraded=True), node("b")
    assert names([a, b], {a.node_id: FAST, b.node_id: SLOW}) == ["b", "a"]


def test_a_cooling_down_node_comes_last() -> None:
    a, b, c = node("a"), node("b"), node("c")
    stats = {a.node_id: replace(FAST, cooldown_until=NOW + 5), b.node_id: SLOW}
    assert names([a, b, c], stats)[-1] == "a"


def test_an_overloaded_node_is_not_tried() -> None:
    a, b = node("a"), node("b")
    assert names([a, b], {a.node_id: NodeStats(in_flight=8)}) == ["b"]


def test_at_most_max_attempts_are_planned() -> None:
    candidates = [node(f"n{i}") for i in range(6)]
    chosen = plan(candidates, {}, Preferences(), random.Random(1), max_attempts=3, now=NOW)
    assert len(chosen) == 3


@pytest.mark.parametrize(
    ("tokens", "seconds", "sample"),
    [
        (4, 0.015, None),  # timed to the millisecond, 4 tokens say nothing about a node
        (15, 0.2, None),
        (16, 0.3, 50.0),  # the first token came at TTFT; the other 15 in 0.3 s
        (101, 1.0, 100.0),
        (200, 0.0, None),  # all at once: no interval to divide by
    ],
)
def test_throughput_is_sampled_only_from_answers_long_enough_to_tell(
    tokens: int, seconds: float, sample: float | None
) -> None:
    assert throughput_sample(tokens, seconds) == sample


def test_a_node_unused_for_long_is_scored_as_unmeasured_and_tried_again() -> None:
    # Its one slow answer was long ago (a model loading); its health check is quick now.
    a, b = node("a", health_latency_ms=20.0), node("b")
    stats = {a.node_id: SLOW, b.node_id: FAST}
    assert all(names([a, b], stats, seed=seed)[0] == "b" for seed in range(20))
    stats[a.node_id] = replace(SLOW, measured_at=NOW - STALE_SECONDS - 1)
    firsts = Counter(names([a, b], stats, seed=seed)[0] for seed in range(200))
    assert firsts["a"] >= 60


def test_unknown_latency_falls_back_to_the_health_check_then_a_prior() -> None:
    checked, unknown = node("checked", health_latency_ms=20.0), node("unknown")
    assert score(checked, NodeStats(), now=NOW) < score(unknown, NodeStats(), now=NOW)


def test_errors_make_a_node_score_worse() -> None:
    a = node("a")
    assert score(a, replace(FAST, error_ewma=0.5), now=NOW) > score(a, FAST, now=NOW)


def test_preferences_are_read_in_openrouter_shape() -> None:
    prefs = parse_preferences(
        {
            "sort": "price",
            "max_price": {"prompt": 0.15, "completion": 2},
            "order": ["a", "b"],
            "allow_fallbacks": False,
        }
    )
    assert prefs == Preferences("price", 150_000, 2 * USD, ("a", "b"), False)
    assert parse_preferences(None) == Preferences()


@pytest.mark.parametrize(
    "body",
    [
        "price",
        {"sort": "cheapest"},
        {"max_price": {"prompt": -1}},
        {"max_price": {"prompt": True}},
        {"max_price": {"request": 1}},
        {"order": "a"},
        {"order": [1]},
        {"allow_fallbacks": "no"},
        {"ignore": ["a"]},
    ],
)
def test_bad_preferences_are_refused(body: object) -> None:
    with pytest.raises(BadInput) as caught:
        parse_preferences(body)
    assert caught.value.param == "provider"


class _FixedCatalog(NodeCatalog):
    def __init__(self, candidates: list[Candidate]) -> None:
        self._fixed = candidates

    async def candidates(self, model: str) -> list[Candidate]:
        return [c for c in self._fixed if c.model == model]


async def test_router_says_not_found_for_a_model_nobody_serves() -> None:
    router = Router(_FixedCatalog([node("a")]), MemoryRouterState())
    with pytest.raises(NotFound):
        await router.plan("mistral")


async def test_router_says_no_node_available_when_all_are_over_max_price() -> None:
    router = Router(_FixedCatalog([node("a", price=(5 * USD, 5 * USD))]), MemoryRouterState())
    with pytest.raises(NoNodeAvailable):
        await router.plan("llama3", Preferences(max_price_prompt=USD))


async def test_router_counts_in_flight_requests_from_its_state() -> None:
    a, b = node("a"), node("b")
    state = MemoryRouterState()
    router = Router(_FixedCatalog([a, b]), state, rng=random.Random(3))
    for _ in range(3):
        await state.acquire(a.node_id)
    assert [c.name for c in await router.plan("llama3")] == ["b", "a"]
