"""Health history: each node's last few raw checks, and hourly rollups for the uptime figures.

A check is written once as a raw row (the node page's chart and failure list) and added
to its node's rollup of the hour (the marketplace's uptime). Raw rows are trimmed to the
newest `keep` per node as checks are recorded; rollups are deleted past the retention.
So the history stays at `keep` raw rows plus 24 rollups a day per node, whatever the
interval. Hourly, not per minute: eight days of a node are 192 rows instead of 11,520.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.models import HealthCheck, NodeHealthRollup

BUCKET = timedelta(hours=1)
DEFAULT_RAW_CHECKS = 100  # the node page's chart shows the last 60
DEFAULT_RETENTION = timedelta(days=8)  # the 7-day uptime reads up to 7 days and an hour back


def bucket_of(moment: datetime) -> datetime:
    """The start of the UTC hour holding `moment`: the rollup it is counted in."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rollups(results: Sequence[HealthCheck]) -> list[dict[str, Any]]:
    """The batch summed per node and hour, in key order (the order rows are locked in)."""
    sums: dict[tuple[uuid.UUID, datetime], dict[str, Any]] = {}
    for result in results:
        key = (result.node_id, bucket_of(result.checked_at))
        row = sums.setdefault(
            key,
            {
                "node_id": key[0],
                "bucket_start": key[1],
                "checks": 0,
                "ok_checks": 0,
                "latency_ms_sum": 0.0,
                "latency_count": 0,
                "latency_max": None,
            },
        )
        row["checks"] += 1
        row["ok_checks"] += int(result.ok)
        if result.latency_ms is not None:
            row["latency_ms_sum"] += result.latency_ms
            row["latency_count"] += 1
            row["latency_max"] = max(row["latency_max"] or result.latency_ms, result.latency_ms)
    return [sums[key] for key in sorted(sums, key=lambda k: (str(k[0]), k[1]))]


async def record_checks(
    session: AsyncSession, results: Sequence[HealthCheck], *, keep: int = DEFAULT_RAW_CHECKS
) -> None:
    """Store a batch of new checks: raw rows, their hourly rollups, each node trimmed to `keep`.

    Three statements whatever the batch's size, each compiled once for every size: rows
    go as parameter lists (SQLAlchemy sends them as multi-row VALUES), not as a VALUES
    clause built per batch. The caller's transaction commits them.
    """
    if not results:
        return
    connection = await session.connection()
    await connection.execute(
        _INSERT_CHECK,
        [
            {
                "node_id": r.node_id,
                "checked_at": r.checked_at,
                "ok": r.ok,
                "latency_ms": r.latency_ms,
                "model_count": r.model_count,
                "error": r.error,
            }
            for r in results
        ],
    )
    await connection.execute(_upsert(connection.dialect.name), rollups(results))
    await connection.execute(
        _trim(connection.dialect.name, keep=keep),
        {"node_ids": sorted({r.node_id for r in results}, key=str)},
    )


async def prune_history(
    session: AsyncSession, *, now: datetime, retention: timedelta = DEFAULT_RETENTION
) -> None:
    """Delete the rollups of hours that ended before `now - retention` (by the time index)."""
    await session.exec(
        sa.delete(NodeHealthRollup).where(
            col(NodeHealthRollup.bucket_start) < bucket_of(now - retention)
        )
    )


_INSERT_CHECK = sa.insert(HealthCheck)


@functools.cache
def _upsert(dialect: str) -> sa.Insert:
    """INSERT .. ON CONFLICT DO UPDATE adding a batch's sums to the stored ones."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(NodeHealthRollup)
    new = insert.excluded
    stored_max = col(NodeHealthRollup.latency_max)
    # Portable max of two nullable floats: PostgreSQL's GREATEST is SQLite's max(a, b),
    # and SQLite's is null when either is.
    latency_max = sa.case(
        (sa.or_(new.latency_max.is_(None), stored_max >= new.latency_max), stored_max),
        else_=new.latency_max,
    )
    statement: sa.Insert = insert.on_conflict_do_update(
        index_elements=["node_id", "bucket_start"],
        set_={
            "checks": col(NodeHealthRollup.checks) + new.checks,
            "ok_checks": col(NodeHealthRollup.ok_checks) + new.ok_checks,
            "latency_ms_sum": col(NodeHealthRollup.latency_ms_sum) + new.latency_ms_sum,
            "latency_count": col(NodeHealthRollup.latency_count) + new.latency_count,
            "latency_max": latency_max,
        },
    )
    return statement


@functools.cache
def _trim(dialect: str, *, keep: int) -> sa.Delete:
    """Delete the checks of the nodes `node_ids` (a parameter) older than each one's `keep` newest.

    PostgreSQL: each node's cut-off is its keep+1-th newest check, found by a backward
    index-only walk of (node_id, checked_at), and only the rows at or before it are read
    and deleted: a node's ~100 rows lie on as many heap pages, which a window over them
    would read each time (6.7 ms per batch of 64 nodes against 1.2 ms). SQLite: a window
    over each node's rows, which are never many more than `keep`.
    """
    if dialect == "postgresql":
        ids = (
            sa.func.unnest(sa.bindparam("node_ids", type_=postgresql.ARRAY(sa.Uuid())))
            .table_valued("node_id")
            .render_derived(name="batch")
        )
        cutoff = (
            sa.select(col(HealthCheck.checked_at))
            .where(col(HealthCheck.node_id) == ids.c.node_id)
            .order_by(col(HealthCheck.checked_at).desc())
            .offset(keep)
            .limit(1)
            .lateral("cutoff")
        )
        old = (
            sa.select(ids.c.node_id, cutoff.c.checked_at)
            .select_from(ids.join(cutoff, sa.true()))
            .subquery("old")
        )
        return sa.delete(HealthCheck).where(
            col(HealthCheck.node_id) == old.c.node_id,
            col(HealthCheck.checked_at) <= old.c.checked_at,
        )
    newest = (
        sa.func.row_number()
        .over(partition_by=col(HealthCheck.node_id), order_by=col(HealthCheck.checked_at).desc())
        .label("newest")
    )
    ranked = (
        sa.select(col(HealthCheck.id), newest)
        .where(col(HealthCheck.node_id).in_(sa.bindparam("node_ids", expanding=True)))
        .subquery()
    )
    stale = sa.select(ranked.c.id).where(ranked.c.newest > keep)
    return sa.delete(HealthCheck).where(col(HealthCheck.id).in_(stale))
