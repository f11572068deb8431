"""Key budgets: periods (UTC, weeks from Monday), what remains, and why a request is refused.

A budget is a spend limit for a period. Its row (models.KeyBudget) counts what settled
requests spent in the current period and what open holds reserve; a hold is placed only
if `spent + reserved + hold <= limit` (infer/billing/batches.py), in the statement that
reserves the buyer's balance, and settling moves the actual cost from reserved to spent.
The count starts again at the first hold of a new period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from infer.billing.money import MICROS_PER_USD, format_usd
from infer.errors import BudgetExceeded
from infer.models import BudgetReset, KeyBudget

# The one period of a budget that never resets.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_start(reset: BudgetReset, now: datetime) -> datetime:
    """The start of the period holding `now`."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == BudgetReset.DAILY:
        return day
    if reset == BudgetReset.WEEKLY:
        return day - timedelta(days=day.weekday())
    if reset == BudgetReset.MONTHLY:
        return day.replace(day=1)
    return EPOCH


def next_reset(reset: BudgetReset, now: datetime) -> datetime | None:
    """When the period holding `now` ends; None for a budget that never resets."""
    start = period_start(reset, now)
    if reset == BudgetReset.DAILY:
        return start + timedelta(days=1)
    if reset == BudgetReset.WEEKLY:
        return start + timedelta(days=7)
    if reset == BudgetReset.MONTHLY:
        return (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
    return None


@dataclass(frozen=True)
class BudgetState:
    """A budget as it stands now: the period's spend, open holds and what remains."""

    spend_limit: int
    reset: BudgetReset
    spent: int
    reserved: int
    resets_at: datetime | None

    @property
    def remaining(self) -> int:
        return max(0, self.spend_limit - self.spent - self.reserved)

    @classmethod
    def of(cls, row: KeyBudget, now: datetime) -> BudgetState:
        # A period that has ended counts as nothing spent: the next hold starts it again.
        current = row.period_start >= period_start(row.reset, now)
        return cls(
            spend_limit=row.spend_limit,
            reset=row.reset,
            spent=row.spent if current else 0,
            reserved=row.reserved,
            resets_at=next_reset(row.reset, now),
        )


def _usd4(micros: int) -> str:
    return f"${(Decimal(micros) / MICROS_PER_USD).quantize(Decimal('0.0001'))}"


def exceeded(state: BudgetState, wanted: int) -> BudgetExceeded:
    """The refusal for a request that would need `wanted` micro-USD more than remains."""
    period = "" if state.reset == BudgetReset.NEVER else f"{state.reset.value} "
    used = state.spent + state.reserved
    figures = f"{_usd4(used)} of {_usd4(state.spend_limit)}"
    if used >= state.spend_limit:
        what = f"is spent ({figures})"
    else:
        what = (
            f"cannot cover this request ({figures} spent or held; it may cost up to"
            f" {_usd4(wanted)})"
        )
    message = f"This API key's {period}budget of ${format_usd(state.spend_limit)} {what}"
    if state.resets_at is not None:
        message += f"; it resets at {state.resets_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return BudgetExceeded(message + ".")
