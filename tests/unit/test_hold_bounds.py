"""The largest hold the platform can place fits the ledger's int64 columns by far."""

from __future__ import annotations

from infer.billing.pricing import cost, estimate_prompt_tokens
from infer.config import MAX_TOKENS_CEILING, Settings
from infer.nodes.registry import MAX_PRICE_PER_MILLION

INT64_MAX = 2**63 - 1


def _worst_hold(body_bytes: int, max_tokens: int) -> int:
    return cost(
        prompt_tokens=estimate_prompt_tokens(["x" * body_bytes]),
        completion_tokens=max_tokens,
        input_per_million=MAX_PRICE_PER_MILLION,
        output_per_million=MAX_PRICE_PER_MILLION,
    )


def test_the_worst_hold_at_the_highest_price_fits_int64_by_far() -> None:
    assert _worst_hold(Settings().max_body_bytes, MAX_TOKENS_CEILING) < 2.2e12
    # Even a body cap raised to a gigabyte leaves a factor of a million to spare.
    assert _worst_hold(1024**3, MAX_TOKENS_CEILING) < INT64_MAX / 1_000_000


def test_the_default_ceiling_is_what_the_docs_say() -> None:
    assert Settings().max_tokens_limit == 131_072 <= MAX_TOKENS_CEILING == 2**31 - 1
