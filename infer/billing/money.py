"""USD amounts: integer micro-USD inside, decimal strings at the edges."""

from __future__ import annotations

import re
from decimal import Decimal

from infer.errors import BadInput

MICROS_PER_USD = 1_000_000
MAX_GRANT_USD = Decimal("1000000")

# ASCII digits, then optionally a point and 1 to 6 more. Decimal() would also take signs,
# exponents ("1e3"), spaces, "_" separators, "Infinity" and other scripts' digits.
_PLAIN = re.compile(r"([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_MAX_MICROS = int(MAX_GRANT_USD) * MICROS_PER_USD


def parse_usd(text: str, *, param: str = "amount", allow_zero: bool = False) -> int:
    """Parse a plain decimal USD string ("5", "12.50", "0.000001") into micro-USD, exactly.

    Positive and at most 1,000,000 USD; `allow_zero` admits 0 as well (prices).
    """
    match = _PLAIN.fullmatch(text)
    if match is None and _PLAIN.fullmatch(text[1:]) and text[0] == "-":
        raise BadInput("amount must be a positive number of USD", param=param)
    if match is None:
        raise BadInput(
            f"{text[:40]!r} is not an amount in USD: write digits with an optional"
            ' point and up to 6 decimals, such as "12.50"',
            param=param,
        )
    whole, fraction = match.group(1).lstrip("0"), match.group(2) or ""
    if len(fraction) > 6:
        raise BadInput("amount has more than 6 decimal places", param=param)
    # Bounded before int(): the digit count alone tells an absurd amount.
    micros = _MAX_MICROS + 1 if len(whole) > 7 else int(whole or "0") * MICROS_PER_USD
    micros += int(fraction.ljust(6, "0")) if fraction else 0
    if micros > _MAX_MICROS:
        raise BadInput(f"amount must be at most {MAX_GRANT_USD} USD", param=param)
    if micros == 0 and not allow_zero:
        raise BadInput("amount must be a positive number of USD", param=param)
    return micros


def format_usd(micros: int) -> str:
    """Format micro-USD as a decimal string with at least two decimals ("12.50")."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_USD)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"
