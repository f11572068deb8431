"""Measured figures: a periodic rollup of usage records and health checks into market_figures.

What each period's row holds:

- "30m" and "24h": time to first token and throughput percentiles;
- "1h", "24h" and "7d": uptime;
- every period: success rate, requests and tokens served.

Percentiles are computed in Python from at most MAX_SAMPLES of each provider's latest
completed requests of the last 24 h (SQLite has no percentile function; PostgreSQL's
`percentile_cont` would make two code paths for one figure). Figures with too little
data behind them are null: latency below MIN_REQUESTS completed requests, uptime below
MIN_CHECKS health checks, the success rate without any request.

Uptime reads the hourly health rollups (infer/nodes/history.py), so its periods are
whole UTC hours: "1h" counts the checks since the top of the hour an hour ago (one to
two hours of them), "24h" and "7d" alike.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.db import Database
from infer.models import (
    Lease,
    MarketFigures,
    Node,
    NodeHealthRollup,
    NodeModel,
    UsageRecord,
    utcnow,
)
from infer.nodes.history import bucket_of
from infer.routing.scoring import throughput_sample

log = logging.getLogger(__name__)

PERIODS: dict[str, timedelta] = {
    "30m": timedelta(minutes=30),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
LATENCY_PERIODS = ("30m", "24h")
UPTIME_PERIODS = ("1h", "24h", "7d")
MIN_REQUESTS = 5  # completed requests behind a latency or throughput figure
MIN_CHECKS = 3  # health checks behind an uptime figure
MAX_SAMPLES = 2000  # latest completed requests read per provider for the percentiles
# The 24h and 7d uptime sums read a week of hourly rollups of every node (1.7 million rows
# at 10,000 nodes, ~2 s of the database's time); they move slowly, so a sweep reuses them
# for this long and reads only the last hour's rollups in between.
SLOW_UPTIME_EVERY = timedelta(minutes=10)
LEASE_NAME = "market_figures"
ALL_MODELS = ""

Key = tuple[uuid.UUID, str]  # (operator, model or ALL_MODELS)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th quantile (0..1) by linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def tokens_per_second(
    completion_tokens: int, ttft_ms: float | None, duration_ms: float | None
) -> float | None:
    """Generation speed after the first token, as the router measures it; None if unknown."""
    if ttft_ms is None or duration_ms is None:
        return None
    return throughput_sample(completion_tokens, (duration_ms - ttft_ms) / 1000)


@dataclass
class _Figures:
    uptime: float | None = None
    ttfts: list[float] = field(default_factory=list)
    speeds: list[float] = field(default_factory=list)
    attempts: int = 0
    completed: int = 0
    tokens: int = 0

    def row(self, operator_id: uuid.UUID, model: str, period: str, now: datetime) -> MarketFigures:
        enough = len(self.ttfts) >= MIN_REQUESTS
        # Too few long answers for a throughput figure is "not enough data" as well.
        fast_enough = enough and len(self.speeds) >= MIN_REQUESTS
        return MarketFigures(
            operator_id=operator_id,
            model=model,
            period=period,
            uptime=self.uptime,
            ttft_ms_p50=percentile(self.ttfts, 0.5) if enough else None,
            ttft_ms_p90=percentile(self.ttfts, 0.9) if enough else None,
            tokens_per_second_p50=percentile(self.speeds, 0.5) if fast_enough else None,
            tokens_per_second_p90=percentile(self.speeds, 0.9) if fast_enough else None,
            success_rate=self.completed / self.attempts if self.attempts else None,
            requests=self.completed,
            tokens=self.tokens,
            computed_at=now,
        )


@dataclass
class UptimeCache:
    """The slow uptime sums (24h, 7d) of the last full read, kept between sweeps."""

    computed_at: datetime | None = None
    sums: list[tuple[uuid.UUID, str, str, int, int]] = field(default_factory=list)

    def fresh(self, now: datetime) -> bool:
        taken = self.computed_at
        return taken is not None and taken <= now < taken + SLOW_UPTIME_EVERY


async def refresh_figures(
    db: Database, *, now: datetime | None = None, cache: UptimeCache | None = None
) -> int:
    """Recompute every provider's figures and replace the stored ones; the rows written.

    With a `cache`, the 24h and 7d uptime sums are read at most every SLOW_UPTIME_EVERY.
    """
    now = now or utcnow()
    figures: dict[tuple[uuid.UUID, str, str], _Figures] = {}

    def at(operator_id: uuid.UUID, model: str, period: str) -> _Figures:
        return figures.setdefault((operator_id, model, period), _Figures())

    async with db.session() as session:
        for operator_id, model, period, attempts, completed, tokens in await _counts(
            session, now=now
        ):
            for key in (model, ALL_MODELS):
                entry = at(operator_id, key, period)
                entry.attempts += attempts
                entry.completed += completed
                entry.tokens += tokens
        for operator_id, model, created_at, ttft, completion, duration in await _samples(
            session, since=now - PERIODS["24h"]
        ):
            speed = tokens_per_second(completion, ttft, duration)
            for period in LATENCY_PERIODS:
                if created_at < now - PERIODS[period]:
                    continue
                for key in (model, ALL_MODELS):
                    entry = at(operator_id, key, period)
                    entry.ttfts.append(ttft)
                    if speed is not None:
                        entry.speeds.append(speed)
        if cache is not None and cache.fresh(now):
            uptimes = cache.sums + await _checks(session, now=now, periods=("1h",))
        else:
            uptimes = await _checks(session, now=now, periods=UPTIME_PERIODS)
            if cache is not None:
                cache.computed_at = now
                cache.sums = [row for row in uptimes if row[2] != "1h"]
        for operator_id, model, period, total, good in uptimes:
            if total >= MIN_CHECKS:
                at(operator_id, model, period).uptime = good / total
    rows = [entry.row(*key, now) for key, entry in figures.items()]
    async with db.transaction() as session:
        await session.exec(sa.delete(MarketFigures))
        session.add_all(rows)
    return len(rows)


async def _counts(
    session: AsyncSession, *, now: datetime
) -> list[tuple[uuid.UUID, str, str, int, int, int]]:
    """Per provider, model and period: (requests sent, completed, tokens served); one scan."""
    completed = col(UsageRecord.status) == "completed"
    served = col(UsageRecord.prompt_tokens) + col(UsageRecord.completion_tokens)
    columns: list[sa.ColumnElement[Any]] = []
    for span in PERIODS.values():
        recent = col(UsageRecord.created_at) >= now - span
        done = sa.and_(recent, completed)
        columns += [
            sa.func.sum(sa.case((recent, 1), else_=0)),
            sa.func.sum(sa.case((done, 1), else_=0)),
            sa.func.sum(sa.case((done, served), else_=0)),
        ]
    result = await session.exec(  # type: ignore[call-overload]  # a Core select of aggregates
        sa.select(col(UsageRecord.operator_id), col(UsageRecord.model), *columns)
        .where(
            col(UsageRecord.operator_id).is_not(None),
            col(UsageRecord.created_at) >= now - max(PERIODS.values()),
        )
        .group_by(col(UsageRecord.operator_id), col(UsageRecord.model))
    )
    counts = []
    for operator_id, model, *sums in result:
        for index, period in enumerate(PERIODS):
            attempts, done_count, tokens = (int(v or 0) for v in sums[3 * index : 3 * index + 3])
            if attempts:
                counts.append((operator_id, model, period, attempts, done_count, tokens))
    return counts


async def _samples(
    session: AsyncSession, *, since: datetime
) -> Iterable[tuple[uuid.UUID, str, datetime, float, int, float | None]]:
    """Each provider's latest MAX_SAMPLES completed requests with a first-token time."""
    newest = (
        sa.func.row_number()
        .over(
            partition_by=col(UsageRecord.operator_id),
            order_by=col(UsageRecord.created_at).desc(),
        )
        .label("newest")
    )
    recent = (
        sa.select(
            col(UsageRecord.operator_id),
            col(UsageRecord.model),
            col(UsageRecord.created_at),
            col(UsageRecord.ttft_ms),
            col(UsageRecord.completion_tokens),
            col(UsageRecord.duration_ms),
            newest,
        )
        .where(
            col(UsageRecord.operator_id).is_not(None),
            col(UsageRecord.status) == "completed",
            col(UsageRecord.ttft_ms).is_not(None),
            col(UsageRecord.created_at) >= since,
        )
        .subquery()
    )
    result = await session.exec(
        select(  # type: ignore[call-overload]
            recent.c.operator_id,
            recent.c.model,
            recent.c.created_at,
            recent.c.ttft_ms,
            recent.c.completion_tokens,
            recent.c.duration_ms,
        ).where(recent.c.newest <= MAX_SAMPLES)
    )
    return list(result)


async def _checks(
    session: AsyncSession, *, now: datetime, periods: Sequence[str]
) -> list[tuple[uuid.UUID, str, str, int, int]]:
    """Per provider, model (and ALL_MODELS) and uptime period: (health checks, good ones).

    Summed by the database from the hourly rollups of the provider's nodes (those that
    list the model, or all of them): a few rows per provider, however many nodes, so
    that a market of 10,000 nodes is not walked in Python on the serving event loop.
    """
    columns: list[sa.ColumnElement[Any]] = []
    for period in periods:
        recent = col(NodeHealthRollup.bucket_start) >= bucket_of(now - PERIODS[period])
        columns += [
            sa.func.sum(sa.case((recent, col(NodeHealthRollup.checks)), else_=0)),
            sa.func.sum(sa.case((recent, col(NodeHealthRollup.ok_checks)), else_=0)),
        ]
    oldest = bucket_of(now - max(PERIODS[period] for period in periods))
    by_node = (
        sa.select(col(Node.operator_id), *columns)
        .join(Node, col(Node.id) == col(NodeHealthRollup.node_id))
        .where(col(NodeHealthRollup.bucket_start) >= oldest)
    )
    by_model = by_node.add_columns(col(NodeModel.model)).join(
        NodeModel, col(NodeModel.node_id) == col(NodeHealthRollup.node_id)
    )
    checks = []
    for statement, grouped in (
        (by_node.add_columns(sa.literal(ALL_MODELS)), (col(Node.operator_id),)),
        (by_model, (col(Node.operator_id), col(NodeModel.model))),
    ):
        result = await session.exec(statement.group_by(*grouped))  # type: ignore[call-overload]
        for operator_id, *sums, model in result:
            for index, period in enumerate(periods):
                total, good = int(sums[2 * index] or 0), int(sums[2 * index + 1] or 0)
                checks.append((operator_id, model, period, total, good))
    return checks


async def figures_of(session: AsyncSession, keys: Sequence[Key]) -> dict[Key, list[MarketFigures]]:
    """The stored rows of each (provider, model), every key present; one query."""
    operators = list({operator_id for operator_id, _ in keys})
    found: dict[Key, list[MarketFigures]] = {key: [] for key in keys}
    rows = await session.exec(
        select(MarketFigures).where(col(MarketFigures.operator_id).in_(operators))
    )
    for row in rows:
        key = (row.operator_id, row.model)
        if key in found:
            found[key].append(row)
    return found


async def take_lease(
    db: Database, *, name: str, holder: str, ttl: timedelta, now: datetime | None = None
) -> bool:
    """Hold the named lease for ttl if it is free, expired or already ours; False otherwise."""
    now = now or utcnow()
    until = now + ttl
    async with db.core_transaction() as connection:
        if await _insert_lease(connection, name=name, holder=holder, until=until):
            return True
        # PostgreSQL re-checks the condition on the row it locked: of two replicas
        # racing for an expired lease, the second finds it taken.
        taken = await connection.execute(
            sa.update(Lease)
            .where(
                col(Lease.name) == name,
                sa.or_(col(Lease.expires_at) <= now, col(Lease.holder) == holder),
            )
            .values(holder=holder, expires_at=until)
        )
        return bool(taken.rowcount == 1)


async def _insert_lease(
    connection: AsyncConnection, *, name: str, holder: str, until: datetime
) -> bool:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    inserted = await connection.execute(
        dialect.insert(Lease)
        .values(name=name, holder=holder, expires_at=until)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return bool(inserted.rowcount == 1)


class FiguresRollup:
    """The background rollup of one replica: recomputes the figures while it holds the lease."""

    def __init__(self, db: Database, *, interval: float) -> None:
        self.db = db
        self.interval = interval
        self.holder = uuid.uuid4().hex
        self.uptimes = UptimeCache()

    async def sweep(self, *, now: datetime | None = None) -> bool:
        """Refresh the figures if this replica holds the lease; True if it did."""
        now = now or utcnow()
        # Two intervals: a replica that died hands over within two sweeps of the others.
        ttl = timedelta(seconds=self.interval * 2)
        if not await take_lease(self.db, name=LEASE_NAME, holder=self.holder, ttl=ttl, now=now):
            return False
        written = await refresh_figures(self.db, now=now, cache=self.uptimes)
        log.debug("market figures refreshed: %d rows", written)
        return True
