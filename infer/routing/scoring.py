"""Scoring candidates and ordering the attempts for one request: pure, no I/O."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping, Sequence

from infer.routing.catalog import Candidate
from infer.routing.preferences import Preferences, parse_preferences
from infer.routing.state import NodeStats

__all__ = [
    "Preferences",
    "affordable",
    "estimated_ms",
    "parse_preferences",
    "plan",
    "score",
    "throughput_sample",
    "tier",
]

PRIOR_TTFT_MS = 500.0  # a node never measured nor health-checked
PRIOR_TOKENS_PER_SECOND = 40.0
ERROR_WEIGHT = 4.0  # an error EWMA of 0.5 triples the score
OVERLOAD = 2  # at capacity x OVERLOAD requests in flight a node is not tried at all
NEAR = 0.15  # within 15 % of the best counts as near-equal for the first pick
# ... and so does within 50 ms: below that, one slow sample (a pause on either side)
# would send every request to the other of two equal nodes, and sequential traffic
# would never measure the loser again.
NEAR_MS = 50.0
POOL = 4  # the first pick is drawn from at most this many near-equal nodes
TIER_STEP = 1e9  # puts every node of a worse tier after every node of a better one
DEFAULT_PROMPT_TOKENS = 1_000
DEFAULT_OUTPUT_TOKENS = 256
# A shorter answer measures the clock more than the node: 4 tokens timed to the
# millisecond made equal nodes look 2x apart and one of them took all the traffic.
MIN_THROUGHPUT_TOKENS = 16

_NO_STATS = NodeStats()

# One row per candidate: (tier, sort key, score, position in the input, candidate).
_Row = tuple[int, float, float, int, Candidate]


def tier(candidate: Candidate, stats: NodeStats, now: float) -> int:
    """0 ready, 1 at capacity, 2 cooling down after failures; 3 more when degraded."""
    if stats.cooldown_until > now:
        base = 2
    elif stats.in_flight >= candidate.capacity:
        base = 1
    else:
        base = 0
    return base + 3 if candidate.degraded else base


def _tokens_per_second(stats: NodeStats, prior: float = PRIOR_TOKENS_PER_SECOND) -> float:
    tps = stats.tokens_per_second_ewma
    return prior if tps is None else max(tps, 0.1)


def throughput_sample(completion_tokens: int, generation_seconds: float) -> float | None:
    """Tokens/s after the first token, or None when the answer is too short to tell."""
    if completion_tokens < MIN_THROUGHPUT_TOKENS or generation_seconds <= 0:
        return None
    return (completion_tokens - 1) / generation_seconds


def estimated_ms(
    candidate: Candidate,
    stats: NodeStats,
    expected_output_tokens: int,
    *,
    prior_tokens_per_second: float = PRIOR_TOKENS_PER_SECOND,
    now: float | None = None,
) -> float:
    """Time to first token plus generation time, on an idle node.

    Figures older than STALE_SECONDS count as unknown, so that the node is tried again.
    """
    now = time.time() if now is None else now
    if not stats.latency_known(now):
        stats = _NO_STATS
    ttft = stats.ttft_ms_ewma
    if ttft is None:
        ttft = candidate.health_latency_ms
    if ttft is None:
        ttft = PRIOR_TTFT_MS
    tps = _tokens_per_second(stats, prior_tokens_per_second)
    return ttft + expected_output_tokens * 1000.0 / tps


def score(
    candidate: Candidate,
    stats: NodeStats,
    *,
    expected_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    now: float | None = None,
    prior_tokens_per_second: float = PRIOR_TOKENS_PER_SECOND,
) -> float:
    """Lower is better: estimated time, scaled by load and recent errors, worse tiers last."""
    now = time.time() if now is None else now
    load = 1.0 + stats.in_flight / candidate.capacity
    penalty = 1.0 + ERROR_WEIGHT * min(1.0, max(0.0, stats.error_ewma))
    estimate = estimated_ms(
        candidate,
        stats,
        expected_output_tokens,
        prior_tokens_per_second=prior_tokens_per_second,
        now=now,
    )
    estimate *= load * penalty
    return tier(candidate, stats, now) * TIER_STEP + estimate


def affordable(candidate: Candidate, preferences: Preferences) -> bool:
    prompt, completion = preferences.max_price_prompt, preferences.max_price_completion
    return (prompt is None or candidate.input_price_per_million <= prompt) and (
        completion is None or candidate.output_price_per_million <= completion
    )


def _near(row: _Row, best: _Row, sort: str | None) -> bool:
    """Whether `row` is close enough to the best to share the first pick with it."""
    if row[0] != best[0]:
        return False
    if sort == "price":
        return row[1] == best[1]
    if sort == "throughput":  # the key is minus tokens per second
        return row[1] <= best[1] * (1.0 - NEAR)
    return row[2] <= best[2] * (1.0 + NEAR) or row[2] - best[2] <= NEAR_MS


def _load(row: _Row, stats: Mapping[uuid.UUID, NodeStats]) -> float:
    candidate = row[4]
    return stats.get(candidate.node_id, _NO_STATS).in_flight / candidate.capacity


def _position(candidate: Candidate, order: Mapping[str, int]) -> int | None:
    by_name = order.get(candidate.name)
    by_id = order.get(str(candidate.node_id))
    if by_name is None or by_id is None:
        return by_id if by_name is None else by_name
    return min(by_name, by_id)


def plan(
    candidates: Sequence[Candidate],
    stats: Mapping[uuid.UUID, NodeStats],
    preferences: Preferences,
    rng: random.Random,
    *,
    max_attempts: int = 3,
    expected_prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    expected_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    now: float | None = None,
) -> list[Candidate]:
    """The candidates to try, in order, at most `max_attempts` of them (maybe none).

    Over `max_price` or overloaded nodes are dropped. Nodes named in `order` come first,
    in that order; the rest (none if fallbacks are not allowed) by tier, then the sort
    key. The first pick is the less loaded of two drawn from the near-equal best few.
    """
    now = time.time() if now is None else now
    sort = preferences.sort
    # A node not yet measured is assumed as fast as its measured peers, so that it gets
    # traffic (and so a measurement) instead of losing to them forever.
    measured = [
        tps
        for c in candidates
        if (figures := stats.get(c.node_id, _NO_STATS)).latency_known(now)
        and (tps := figures.tokens_per_second_ewma) is not None
    ]
    prior_tps = sum(measured) / len(measured) if measured else PRIOR_TOKENS_PER_SECOND
    order = {name: index for index, name in enumerate(preferences.order)}
    preferred: list[tuple[int, int, Candidate]] = []
    rows: list[_Row] = []
    for index, candidate in enumerate(candidates):
        if not affordable(candidate, preferences):
            continue
        node_stats = stats.get(candidate.node_id, _NO_STATS)
        if node_stats.in_flight >= candidate.capacity * OVERLOAD:
            continue
        node_tier = tier(candidate, node_stats, now)
        position = _position(candidate, order) if order else None
        if position is not None:
            preferred.append((node_tier, position, candidate))
            continue
        value = score(
            candidate,
            node_stats,
            expected_output_tokens=expected_output_tokens,
            now=now,
            prior_tokens_per_second=prior_tps,
        )
        if sort == "price":
            key = float(
                candidate.input_price_per_million * expected_prompt_tokens
                + candidate.output_price_per_million * expected_output_tokens
            )
        elif sort == "throughput":
            known = node_stats if node_stats.latency_known(now) else _NO_STATS
            key = -_tokens_per_second(known, prior_tps)
        else:
            key = value
        rows.append((node_tier, key, value, index, candidate))
    rows.sort()
    if not preferred and len(rows) > 1:
        pool = [row for row in rows[:POOL] if _near(row, rows[0], sort)]
        if len(pool) > 1:
            # Power of two choices: of two near-equal nodes, the less loaded one; on a
            # tie the first drawn, so idle equal nodes share requests at random.
            first, second = rng.sample(pool, 2)
            pick = second if _load(second, stats) < _load(first, stats) else first
            rows.remove(pick)
            rows.insert(0, pick)
    preferred.sort(key=lambda item: item[:2])
    attempts = [candidate for _, _, candidate in preferred]
    if preferences.allow_fallbacks:
        attempts.extend(row[4] for row in rows)
    elif not order:
        attempts.extend(row[4] for row in rows[:1])  # the primary only, no fallback
    return attempts[:max_attempts]
