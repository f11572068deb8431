"""A buyer's routing preferences: the `provider` object of a chat completion body."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, cast

from infer.errors import BadInput

Sort = Literal["latency", "price", "throughput"]
SORTS: tuple[Sort, ...] = ("latency", "price", "throughput")
MAX_ORDER = 32
MAX_PRICE_USD = 1_000_000  # per million tokens; far above any real price
_KEYS = frozenset({"sort", "max_price", "order", "allow_fallbacks"})


@dataclass(frozen=True, slots=True)
class Preferences:
    """How to rank candidates; prices are micro-USD per 1M tokens, `order` names or ids."""

    sort: Sort | None = None
    max_price_prompt: int | None = None
    max_price_completion: int | None = None
    order: tuple[str, ...] = ()
    allow_fallbacks: bool = True


def _bad(message: str) -> BadInput:
    return BadInput(message, param="provider")


def _price(value: object, name: str) -> int:
    """USD per million tokens (a JSON number) to micro-USD, exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"provider.max_price.{name} must be a number (USD per million tokens)")
    if not math.isfinite(value) or not 0 <= value <= MAX_PRICE_USD:
        raise _bad(f"provider.max_price.{name} must be between 0 and {MAX_PRICE_USD}")
    return int(Decimal(str(value)) * 1_000_000)


def parse_preferences(obj: object) -> Preferences:
    """Read OpenRouter's shape; None means no preferences. Unknown keys are refused."""
    if obj is None:
        return Preferences()
    if not isinstance(obj, dict):
        raise _bad("provider must be an object")
    unknown = sorted(str(key) for key in obj if key not in _KEYS)
    if unknown:
        raise _bad(f"provider.{unknown[0]} is not supported")
    sort = obj.get("sort")
    if sort is not None and sort not in SORTS:
        raise _bad("provider.sort must be one of latency, price, throughput")
    prompt = completion = None
    max_price = obj.get("max_price")
    if max_price is not None:
        if not isinstance(max_price, dict):
            raise _bad("provider.max_price must be an object")
        extra = sorted(str(key) for key in max_price if key not in ("prompt", "completion"))
        if extra:
            raise _bad(f"provider.max_price.{extra[0]} is not supported")
        if max_price.get("prompt") is not None:
            prompt = _price(max_price["prompt"], "prompt")
        if max_price.get("completion") is not None:
            completion = _price(max_price["completion"], "completion")
    order = obj.get("order")
    if order is None:
        order = []
    if not isinstance(order, list) or len(order) > MAX_ORDER:
        raise _bad(f"provider.order must be a list of at most {MAX_ORDER} node names or ids")
    if not all(isinstance(item, str) and 0 < len(item) <= 200 for item in order):
        raise _bad("provider.order must hold node names or ids")
    allow_fallbacks = obj.get("allow_fallbacks")
    if allow_fallbacks is None:
        allow_fallbacks = True
    if not isinstance(allow_fallbacks, bool):
        raise _bad("provider.allow_fallbacks must be true or false")
    return Preferences(
        sort=cast(Sort | None, sort),
        max_price_prompt=prompt,
        max_price_completion=completion,
        order=tuple(order),
        allow_fallbacks=allow_fallbacks,
    )
