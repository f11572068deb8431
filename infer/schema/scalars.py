"""Custom scalars: Money is an amount of USD as a decimal string (micro-USD inside)."""

from __future__ import annotations

from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

from infer.billing.money import format_usd, parse_usd

Money = NewType("Money", int)

SCALARS: dict[object, ScalarDefinition] = {
    Money: strawberry.scalar(
        name="Money",
        description='An amount of US dollars as a decimal string, such as "12.50".',
        serialize=lambda micros: format_usd(int(micros)),
        parse_value=lambda text: parse_usd(str(text)),
    )
}
