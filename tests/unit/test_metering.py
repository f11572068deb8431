"""Metering's plausible range: a runtime's token counts are billed only when they fit."""

from __future__ import annotations

import itertools

import pytest

from infer.billing.metering import (
    MAX_BYTES_PER_TOKEN,
    meter,
    plausible_prompt,
)
from infer.nodes.clients.base import Usage

# A prompt of 200 bytes in one message, an answer of 12 chunks and 60 bytes.
BASE = {
    "prompt_bound": 232,
    "prompt_typical": 54,
    "prompt_bytes": 200,
    "relayed_chunks": 12,
    "relayed_bytes": 60,
    "max_tokens": 100,
}


def billed(
    reported: Usage | None, *, complete: bool = True, **changes: int | None
) -> tuple[int, int, bool]:
    got = meter(reported=reported, complete=complete, **(BASE | changes))  # type: ignore[arg-type]
    return got.prompt_tokens, got.completion_tokens, got.estimated


def test_honest_counts_are_billed_as_reported() -> None:
    assert billed(Usage(61, 12)) == (61, 12, False)


def test_a_node_reporting_zero_completion_tokens_is_billed_the_relayed_chunks() -> None:
    assert billed(Usage(61, 0)) == (61, 12, True)


def test_a_node_reporting_seven_times_too_many_is_billed_the_relayed_chunks() -> None:
    assert billed(Usage(61, 84)) == (61, 12, True)


def test_a_node_reporting_a_few_tokens_for_a_long_answer_is_billed_at_least_the_floor() -> None:
    # One chunk carrying 3,200 bytes: at least 100 tokens, whatever the node says.
    assert billed(Usage(61, 3), relayed_chunks=1, relayed_bytes=3200, max_tokens=4096) == (
        61,
        3200 // MAX_BYTES_PER_TOKEN,
        True,
    )


def test_fewer_tokens_than_half_the_chunks_relayed_are_not_believed() -> None:
    assert billed(Usage(61, 5)) == (61, 12, True)
    assert billed(Usage(61, 6)) == (61, 6, False)


def test_both_ends_of_the_completion_range_are_accepted() -> None:
    assert billed(Usage(61, 60)) == (61, 60, False)
    assert billed(Usage(61, 61)) == (61, 12, True)


def test_the_completion_ceiling_is_max_tokens() -> None:
    assert billed(Usage(61, 12), max_tokens=10) == (61, 10, True)


def test_an_empty_answer_reported_as_zero_tokens_is_exact() -> None:
    assert billed(Usage(61, 0), relayed_chunks=0, relayed_bytes=0) == (61, 0, False)


def test_an_empty_range_bills_no_more_than_was_held() -> None:
    # 640 bytes in one chunk need 20 tokens, but the buyer allowed only 5.
    assert billed(Usage(61, 640), relayed_chunks=1, relayed_bytes=640, max_tokens=5) == (
        61,
        5,
        True,
    )


def test_a_prompt_count_below_its_size_is_replaced_by_the_typical_estimate() -> None:
    # 200 bytes are at least 7 tokens.
    assert billed(Usage(6, 12)) == (54, 12, True)
    assert billed(Usage(7, 12)) == (7, 12, False)


def test_a_prompt_count_over_its_bound_is_replaced_by_the_typical_estimate() -> None:
    assert billed(Usage(232, 12)) == (232, 12, False)
    assert billed(Usage(233, 12)) == (54, 12, True)


def test_without_the_prompt_size_only_zero_prompt_tokens_are_refused() -> None:
    assert plausible_prompt(prompt_bytes=None, prompt_bound=232).low == 1
    assert billed(Usage(1, 12), prompt_bytes=None) == (1, 12, False)
    assert billed(Usage(0, 12), prompt_bytes=None) == (54, 12, True)


def test_an_interrupted_answer_is_estimated_whatever_the_node_reported() -> None:
    assert billed(Usage(61, 12), complete=False) == (61, 12, True)


def test_without_usage_everything_is_estimated() -> None:
    assert billed(None) == (54, 12, True)


@pytest.mark.parametrize("max_tokens", [1, 7, 64])
def test_nothing_is_ever_billed_beyond_the_hold(max_tokens: int) -> None:
    sizes = [0, 1, 3, 31, 32, 33, 500]
    for chunks, extra, reported in itertools.product(sizes, sizes, [0, 1, 9, 10**6]):
        got = meter(
            reported=Usage(reported, reported),
            complete=True,
            prompt_bound=40,
            prompt_typical=12,
            prompt_bytes=24,
            relayed_chunks=chunks,
            relayed_bytes=chunks + extra,
            max_tokens=max_tokens,
        )
        assert 0 <= got.completion_tokens <= max_tokens
        assert 1 <= got.prompt_tokens <= 40
