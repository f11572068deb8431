"""A provider's measured figures (ProviderStats), read from the rollup's stored rows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from infer.marketplace.figures import ALL_MODELS
from infer.models import MarketFigures
from infer.schema.context import Context


@strawberry.type(
    name="ProviderStats",
    description=(
        "Figures the platform measured, never declared by the seller. Unsuffixed latency, "
        "throughput, success and volume figures cover the last 24 h; null means not enough "
        "data (fewer than 5 completed requests, fewer than 3 health checks)."
    ),
)
class ProviderStats:
    ttft_ms_p50: float | None
    ttft_ms_p90: float | None
    tokens_per_second_p50: float | None
    tokens_per_second_p90: float | None
    ttft_ms_p50_last30m: float | None
    ttft_ms_p90_last30m: float | None
    tokens_per_second_p50_last30m: float | None
    tokens_per_second_p90_last30m: float | None
    uptime1h: float | None = strawberry.field(description="Share of good health checks, 0..1.")
    uptime24h: float | None
    uptime7d: float | None
    success_rate: float | None = strawberry.field(description="Completed / requests sent, 0..1.")
    requests_served: int = strawberry.field(description="Completed requests in the last 24 h.")
    tokens_served: int = strawberry.field(description="Their prompt and completion tokens.")
    computed_at: datetime | None = strawberry.field(description="When the figures were measured.")

    @classmethod
    def from_rows(cls, rows: Sequence[MarketFigures]) -> ProviderStats:
        by = {row.period: row for row in rows}
        none = MarketFigures(operator_id=uuid.UUID(int=0), period="")  # all null, nothing served
        day, recent = by.get("24h", none), by.get("30m", none)
        return cls(
            ttft_ms_p50=day.ttft_ms_p50,
            ttft_ms_p90=day.ttft_ms_p90,
            tokens_per_second_p50=day.tokens_per_second_p50,
            tokens_per_second_p90=day.tokens_per_second_p90,
            ttft_ms_p50_last30m=recent.ttft_ms_p50,
            ttft_ms_p90_last30m=recent.ttft_ms_p90,
            tokens_per_second_p50_last30m=recent.tokens_per_second_p50,
            tokens_per_second_p90_last30m=recent.tokens_per_second_p90,
            uptime1h=by.get("1h", none).uptime,
            uptime24h=day.uptime,
            uptime7d=by.get("7d", none).uptime,
            success_rate=day.success_rate,
            requests_served=day.requests,
            tokens_served=day.tokens,
            computed_at=by["24h"].computed_at if "24h" in by else None,
        )


async def provider_stats(
    info: Info[Context, Any], provider_id: uuid.UUID, model: str = ALL_MODELS
) -> ProviderStats:
    """A provider's figures (of one of its models, or of all), through the request's loader."""
    rows = await info.context.loaders.market_figures.load((provider_id, model))
    return ProviderStats.from_rows(rows)
