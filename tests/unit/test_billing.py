"""Pure billing arithmetic: costs, fee splits and token metering."""

from __future__ import annotations

from decimal import Decimal

import pytest

from infer.billing.metering import meter, typical_prompt_tokens
from infer.billing.pricing import cost, estimate_prompt_tokens, fee_ppm, split
from infer.nodes.clients.base import Usage


def test_cost_is_exact_and_rounds_up_to_the_micro_dollar() -> None:
    assert (
        cost(
            prompt_tokens=1_000_000,
            completion_tokens=0,
            input_per_million=150_000,
            output_per_million=0,
        )
        == 150_000
    )
    assert (
        cost(prompt_tokens=1, completion_tokens=1, input_per_million=1, output_per_million=1) == 1
    )
    assert (
        cost(prompt_tokens=0, completion_tokens=0, input_per_million=9, output_per_million=9) == 0
    )


@pytest.mark.parametrize("amount", [0, 1, 9, 10, 11, 999_999, 12_345_678])
def test_the_fee_split_always_adds_up(amount: int) -> None:
    parts = split(amount, fee_parts_per_million=fee_ppm(Decimal("0.10")))
    assert parts.earning + parts.fee == amount
    assert parts.fee == amount // 10


def test_the_prompt_bound_is_never_below_the_typical_estimate() -> None:
    contents = ["héllo wörld " * 50, "system prompt"]
    assert estimate_prompt_tokens(contents) >= typical_prompt_tokens(contents)


BASE = {
    "prompt_bound": 100,
    "prompt_typical": 30,
    "relayed_chunks": 10,
    "relayed_bytes": 40,
    "max_tokens": 20,
}


def test_reported_usage_is_used_when_it_is_plausible() -> None:
    got = meter(reported=Usage(50, 10), complete=True, **BASE)  # type: ignore[arg-type]
    assert (got.prompt_tokens, got.completion_tokens, got.estimated) == (50, 10, False)


def test_over_reported_usage_is_replaced_by_the_estimate() -> None:
    got = meter(reported=Usage(5_000, 500), complete=True, **BASE)  # type: ignore[arg-type]
    assert (got.prompt_tokens, got.completion_tokens, got.estimated) == (30, 10, True)


def test_a_cached_prompt_reported_as_zero_is_estimated() -> None:
    got = meter(reported=Usage(0, 10), complete=True, **BASE)  # type: ignore[arg-type]
    assert (got.prompt_tokens, got.completion_tokens, got.estimated) == (30, 10, True)


def test_without_usage_the_relayed_chunks_are_counted() -> None:
    got = meter(reported=None, complete=True, **BASE)  # type: ignore[arg-type]
    assert (got.prompt_tokens, got.completion_tokens, got.estimated) == (30, 10, True)


def test_an_interrupted_stream_pays_for_what_was_relayed() -> None:
    got = meter(reported=Usage(50, 99), complete=False, **BASE)  # type: ignore[arg-type]
    assert (got.prompt_tokens, got.completion_tokens, got.estimated) == (50, 10, True)
