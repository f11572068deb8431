"""The console's price form: a row per model, checked as registerNode would check it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from infer.agent.register import MAX_PRICE_USD, ModelPrice, RegistrationOptions
from infer.billing.money import MICROS_PER_USD, format_usd, parse_usd
from infer.errors import BadInput


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One model's row as shown: the prices as typed (or as set), and their errors."""

    index: int
    model: str
    input: str = ""
    output: str = ""
    errors: Mapping[str, str] = field(default_factory=dict)


def rows_for(models: Sequence[str], options: RegistrationOptions) -> list[PriceRow]:
    """The form as the agent's options fill it: a model's own price, else the default."""
    set_prices = {price.model: price for price in options.prices}
    rows = []
    for index, model in enumerate(models):
        price = set_prices.get(model)
        if price is not None:
            low, high = price.input_per_million, price.output_per_million
        else:
            low, high = options.default_price or ("", "")
        rows.append(PriceRow(index, model, low, high))
    return rows


def usd_per_million(text: str) -> str:
    """A price as typed: a decimal USD amount from 0 to MAX_PRICE_USD."""
    micros = parse_usd(text.strip(), param="price", allow_zero=True)
    if micros > MAX_PRICE_USD * MICROS_PER_USD:
        raise BadInput(f"a price is 0 to {MAX_PRICE_USD} USD per million tokens", param="price")
    return format_usd(micros)


def read_form(
    form: Mapping[str, str], models: Sequence[str]
) -> tuple[list[PriceRow], tuple[ModelPrice, ...]]:
    """The rows as typed, and the prices they set; any row's errors mean nothing is set.

    A row left empty keeps the model without a price of its own (the platform keeps what
    it has, or the agent's --default-price applies).
    """
    rows, prices = [], []
    for index, model in enumerate(models):
        typed = {side: form.get(f"{side}-{index}", "").strip() for side in ("input", "output")}
        errors: dict[str, str] = {}
        amounts: dict[str, str] = {}
        if any(typed.values()):
            for side, text in typed.items():
                if not text:
                    errors[side] = "Give both prices, or neither."
                    continue
                try:
                    amounts[side] = usd_per_million(text)
                except BadInput as exc:
                    errors[side] = exc.message
        if not errors and amounts:
            prices.append(ModelPrice(model, amounts["input"], amounts["output"]))
        rows.append(PriceRow(index, model, typed["input"], typed["output"], errors))
    if any(row.errors for row in rows):
        return rows, ()
    return rows, tuple(prices)
