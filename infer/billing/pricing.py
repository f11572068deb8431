"""Prices and costs, in integer micro-USD: pure arithmetic, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

PER_MILLION = 1_000_000
# Chat templates add a few tokens around each message and before the answer.
TOKENS_PER_MESSAGE = 16
TOKENS_PER_REQUEST = 16


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def estimate_prompt_tokens(contents: Iterable[str]) -> int:
    """An upper bound on prompt tokens: BPE tokens cover at least one UTF-8 byte each."""
    total = TOKENS_PER_REQUEST
    for content in contents:
        total += len(content.encode()) + TOKENS_PER_MESSAGE
    return total


def cost(
    *, prompt_tokens: int, completion_tokens: int, input_per_million: int, output_per_million: int
) -> int:
    """What the buyer pays, rounded up to the next micro-USD."""
    exact = prompt_tokens * input_per_million + completion_tokens * output_per_million
    return _ceil_div(exact, PER_MILLION)


def fee_ppm(fraction: Decimal) -> int:
    """The platform's share as parts per million (0.10 → 100000)."""
    return int(fraction * PER_MILLION)


@dataclass(frozen=True)
class Split:
    """A payment divided between the operator and the platform; the parts sum to the whole."""

    earning: int
    fee: int


def split(amount: int, *, fee_parts_per_million: int) -> Split:
    fee = amount * fee_parts_per_million // PER_MILLION
    return Split(earning=amount - fee, fee=fee)
