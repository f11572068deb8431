"""Money strings: plain ASCII decimals with at most 6 places, parsed exactly."""

from __future__ import annotations

import pytest

from infer.agent.register import parse_amounts
from infer.billing.money import parse_usd
from infer.errors import BadInput
from infer.schema.scalars import SCALARS, Money


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1000000", 1_000_000_000_000),
        ("0.1", 100_000),
        ("007.5", 7_500_000),
        ("3.000000", 3_000_000),
    ],
)
def test_plain_decimals_parse_to_exact_micros(text: str, micros: int) -> None:
    assert parse_usd(text) == micros


@pytest.mark.parametrize(
    "text",
    [
        "1e3",  # exponent
        " 5",  # spaces
        "5 ",
        "\uff15",  # fullwidth 5
        "\u0665",  # Arabic-Indic 5
        "1\u0665",
        "Infinity",
        "-Infinity",
        "NaN",
        "1_000",
        "1,000",
        "+1",
        "-1",
        ".5",
        "5.",
        "0x10",
        "1.0000001",
        "1000000.000001",
        "9" * 5000,  # more digits than int() may read: still a clean refusal
    ],
)
def test_anything_but_a_plain_decimal_is_refused(text: str) -> None:
    with pytest.raises(BadInput):
        parse_usd(text, allow_zero=True)


def test_zero_is_refused_as_an_amount_but_allowed_as_a_price() -> None:
    with pytest.raises(BadInput, match="positive"):
        parse_usd("0.00")
    assert parse_usd("0.00", allow_zero=True) == 0


def test_the_money_scalar_takes_strings_only_and_allows_zero() -> None:
    parse = SCALARS[Money].parse_value
    assert parse is not None
    assert parse("0") == 0
    assert parse("12.50") == 12_500_000
    for value in (12.5, 1e3, 5, None, "1e3", "\uff15"):
        with pytest.raises(BadInput):
            parse(value)


def test_the_agent_refuses_what_the_platform_refuses() -> None:
    assert parse_amounts("0/0.25") == ("0.00", "0.25")
    for text in ("1e2/1", "\uff15/1", "Infinity/1", "1001/1"):
        with pytest.raises(BadInput):
            parse_amounts(text)
