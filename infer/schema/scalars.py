"""Custom scalars: Money is an amount of USD as a decimal string (micro-USD inside)."""

from __future__ import annotations

from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

from infer.billing.money import format_usd, parse_usd
from infer.errors import BadInput

Money = NewType("Money", int)


def _parse_money(value: object) -> int:
    """A price or amount: 0 is allowed here, each use checks its own range."""
    if not isinstance(value, str):
        # A JSON number may already have lost digits (0.1 is not exact); strings only.
        raise BadInput('Money is written as a decimal string, such as "12.50"')
    return parse_usd(value, allow_zero=True)


SCALARS: dict[object, ScalarDefinition] = {
    Money: strawberry.scalar(
        name="Money",
        description=(
            'An amount of US dollars as a decimal string, such as "12.50": ASCII digits,'
            " optionally a point and at most 6 decimals."
        ),
        serialize=lambda micros: format_usd(int(micros)),
        parse_value=_parse_money,
    )
}
