"""USD amounts: integer micro-USD inside, decimal strings at the edges."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from infer.errors import BadInput

MICROS_PER_USD = 1_000_000
MAX_GRANT_USD = Decimal("1000000")


def parse_usd(text: str, *, param: str = "amount") -> int:
    """Parse a positive decimal USD string ("5", "12.50") into micro-USD, exactly."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError) as exc:
        raise BadInput(f"{text!r} is not an amount in USD", param=param) from exc
    if not value.is_finite() or value <= 0:
        raise BadInput("amount must be a positive number of USD", param=param)
    if value > MAX_GRANT_USD:
        raise BadInput(f"amount must be at most {MAX_GRANT_USD} USD", param=param)
    micros = value * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise BadInput("amount has more than 6 decimal places", param=param)
    return int(micros)


def format_usd(micros: int) -> str:
    """Format micro-USD as a decimal string with at least two decimals ("12.50")."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_USD)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"
