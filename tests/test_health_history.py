"""Health history stays small: hourly rollups, the newest raw checks, indexed reads."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from sqlmodel import col, select
from test_migrations import empty_database_url

from infer.db import Database, alembic_config
from infer.marketplace.figures import (
    PERIODS,
    SLOW_UPTIME_EVERY,
    UPTIME_PERIODS,
    UptimeCache,
    refresh_figures,
)
from infer.models import (
    HealthCheck,
    MarketFigures,
    Node,
    NodeHealthRollup,
    Runtime,
    User,
    utcnow,
)
from infer.nodes.history import prune_history, record_checks
from infer.nodes.registry import recent_checks

__all__ = ["empty_database_url"]  # a fixture shared with test_migrations

HOUR = datetime(2026, 12, 1, 10, tzinfo=UTC)


async def _nodes(db: Database, count: int) -> list[uuid.UUID]:
    async with db.transaction() as session:
        operator = User(email=f"op-{uuid.uuid4().hex[:8]}@example.com")
        session.add(operator)
        await session.flush()
        nodes = [
            Node(operator_id=operator.id, name=f"n{i}", runtime=Runtime.OLLAMA, endpoint="http://x")
            for i in range(count)
        ]
        session.add_all(nodes)
    return [node.id for node in nodes]


async def _node_at_0007(db: Database) -> uuid.UUID:
    """A node written with the columns of revision 0007 only (the models are newer)."""
    operator, node, now = uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
    users = sa.table(
        "users",
        *(sa.column(name) for name in ("email", "role")),
        sa.column("id", sa.Uuid()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    nodes = sa.table(
        "nodes",
        *(sa.column(name) for name in ("name", "runtime", "endpoint", "status", "capacity")),
        *(sa.column(name) for name in ("consecutive_failures", "consecutive_successes")),
        sa.column("id", sa.Uuid()),
        sa.column("operator_id", sa.Uuid()),
        *(sa.column(name, sa.DateTime(timezone=True)) for name in ("created_at", "updated_at")),
    )
    async with db.transaction() as session:
        connection = await session.connection()
        email = f"op-{operator.hex[:8]}@example.com"
        await connection.execute(
            sa.insert(users).values(id=operator, email=email, role="user", created_at=now)
        )
        await connection.execute(
            sa.insert(nodes).values(
                id=node,
                operator_id=operator,
                name="n0",
                runtime="ollama",
                endpoint="http://x",
                status="pending",
                capacity=4,
                consecutive_failures=0,
                consecutive_successes=0,
                created_at=now,
                updated_at=now,
            )
        )
    return node


def _check(node_id: uuid.UUID, at: datetime, *, latency: float | None = None) -> HealthCheck:
    return HealthCheck(
        node_id=node_id,
        checked_at=at,
        ok=latency is not None,
        latency_ms=latency,
        model_count=1 if latency is not None else 0,
        error=None if latency is not None else "unreachable",
    )


async def _record(db: Database, checks: list[HealthCheck], *, keep: int = 100) -> None:
    async with db.transaction() as session:
        await record_checks(session, checks, keep=keep)


async def _rollups(db: Database) -> list[NodeHealthRollup]:
    async with db.session() as session:
        rows = await session.exec(
            select(NodeHealthRollup).order_by(
                col(NodeHealthRollup.node_id), col(NodeHealthRollup.bucket_start)
            )
        )
        return list(rows)


async def test_rollups_count_checks_good_ones_and_latency_exactly(db: Database) -> None:
    [node] = await _nodes(db, 1)
    minute = timedelta(minutes=1)
    # Two batches into the same hour (the second adds to the stored sums), one into the next;
    # a batch may hold the same node twice.
    await _record(db, [_check(node, HOUR, latency=20.0), _check(node, HOUR + minute)])
    await _record(db, [_check(node, HOUR + 2 * minute, latency=50.0)])
    await _record(db, [_check(node, HOUR + 3 * minute, latency=10.0)])
    await _record(db, [_check(node, HOUR + 61 * minute), _check(node, HOUR + 62 * minute)])

    first, second = await _rollups(db)

    assert (first.bucket_start, first.checks, first.ok_checks) == (HOUR, 4, 3)
    assert (first.latency_ms_sum, first.latency_count, first.latency_max) == (80.0, 3, 50.0)
    assert (second.bucket_start, second.checks, second.ok_checks) == (HOUR + 60 * minute, 2, 0)
    assert (second.latency_ms_sum, second.latency_count, second.latency_max) == (0.0, 0, None)


async def test_raw_checks_stay_at_the_newest_few_per_node(db: Database) -> None:
    one, two = await _nodes(db, 2)
    times = [HOUR + timedelta(seconds=10 * i) for i in range(30)]
    for at in times[:12]:  # one at a time, as the monitor does for one node
        await _record(db, [_check(one, at, latency=1.0), _check(two, at)], keep=5)
    await _record(db, [_check(one, at, latency=1.0) for at in times[12:]], keep=5)  # a batch

    async with db.session() as session:
        kept = await recent_checks(session, [one, two], last=100)
    assert [check.checked_at for check in kept[one]] == times[::-1][:5]
    assert [check.checked_at for check in kept[two]] == times[:12][::-1][:5]
    assert [row.checks for row in await _rollups(db) if row.node_id == one] == [30]


async def test_retention_deletes_the_rollups_of_hours_past_it(db: Database) -> None:
    [node] = await _nodes(db, 1)
    days = [HOUR - timedelta(days=age) for age in (9, 8, 7, 1)]
    await _record(db, [_check(node, at, latency=5.0) for at in days])

    async with db.transaction() as session:
        await prune_history(session, now=HOUR + timedelta(minutes=30), retention=timedelta(days=8))

    assert [row.bucket_start for row in await _rollups(db)] == days[1:]


async def test_health_checks_last_are_the_newest_first_and_no_more(db: Database) -> None:
    nodes = await _nodes(db, 3)
    times = [HOUR + timedelta(seconds=10 * i) for i in range(8)]
    await _record(db, [_check(node, at, latency=1.0) for at in times for node in nodes[:2]])

    async with db.session() as session:
        found = await recent_checks(session, nodes, last=3)

    for node in nodes[:2]:
        assert [check.checked_at for check in found[node]] == times[::-1][:3]
    assert found[nodes[2]] == []


async def test_uptime_from_rollups_equals_uptime_from_the_same_raw_checks(db: Database) -> None:
    nodes = await _nodes(db, 4)
    now = HOUR  # on the hour: hourly periods then cover exactly what raw checks did
    draw = random.Random(16)
    checks = [
        _check(node, now - timedelta(seconds=draw.randrange(1, 8 * 86400)), latency=draw.random())
        if draw.random() < 0.8
        else _check(node, now - timedelta(seconds=draw.randrange(1, 8 * 86400)))
        for node in nodes
        for _ in range(300)
    ]
    for start in range(0, len(checks), 50):
        await _record(db, checks[start : start + 50], keep=20)

    await refresh_figures(db, now=now)

    async with db.session() as session:
        rows = (await session.exec(select(MarketFigures).where(MarketFigures.model == ""))).all()
    measured = {row.period: row.uptime for row in rows if row.period in UPTIME_PERIODS}
    expected = {}
    for period in UPTIME_PERIODS:
        recent = [check.ok for check in checks if check.checked_at >= now - PERIODS[period]]
        expected[period] = sum(recent) / len(recent)
    assert measured == pytest.approx(expected)
    assert measured["1h"] != measured["7d"]  # the periods really differ


async def _uptimes(db: Database) -> dict[str, float | None]:
    async with db.session() as session:
        rows = (await session.exec(select(MarketFigures).where(MarketFigures.model == ""))).all()
    return {row.period: row.uptime for row in rows if row.period in UPTIME_PERIODS}


async def test_a_sweep_reuses_the_week_of_uptime_for_ten_minutes_but_not_the_hour(
    db: Database,
) -> None:
    [node] = await _nodes(db, 1)
    now = HOUR + timedelta(minutes=30)
    every_20_minutes = [now - timedelta(minutes=20 * k + 1) for k in range(15)]  # 5 hours
    await _record(db, [_check(node, at, latency=1.0) for at in every_20_minutes])
    cache = UptimeCache()
    await refresh_figures(db, now=now, cache=cache)
    assert await _uptimes(db) == {"1h": 1.0, "24h": 1.0, "7d": 1.0}

    # Failures this hour and three hours ago: the hour shows them at the next sweep, the
    # day and the week when the cache is ten minutes old.
    later = now + timedelta(minutes=1)
    failed = [_check(node, later - timedelta(seconds=5)), _check(node, later - timedelta(hours=3))]
    await _record(db, failed)
    await refresh_figures(db, now=later, cache=cache)
    assert await _uptimes(db) == {"1h": pytest.approx(5 / 6), "24h": 1.0, "7d": 1.0}
    await refresh_figures(db, now=now + SLOW_UPTIME_EVERY, cache=cache)
    assert await _uptimes(db) == {
        "1h": pytest.approx(5 / 6),
        "24h": pytest.approx(15 / 17),
        "7d": pytest.approx(15 / 17),
    }


async def test_health_checks_last_reads_the_node_time_index(db: Database, backend: str) -> None:
    nodes = await _nodes(db, 40)
    start = utcnow() - timedelta(days=1)
    # Many checks per node, as before they were trimmed: the query must still not sort them.
    async with db.transaction() as session:
        session.add_all(
            _check(node, start + timedelta(seconds=10 * i), latency=1.0)
            for node in nodes
            for i in range(500)
        )
    if backend == "postgres":
        async with db.transaction() as session:
            await session.exec(sa.text("ANALYZE health_checks"))  # type: ignore[call-overload]
    plan = await _plan(db, backend, nodes[:3])
    async with db.session() as session:
        found = await recent_checks(session, nodes[:3], last=5)
    assert all(len(found[node]) == 5 for node in nodes[:3])
    assert "ix_health_checks_node_time" in plan
    if backend == "postgres":
        assert "Seq Scan on health_checks" not in plan
        # The only sort is of the few rows found, above the per-node limit.
        sorts = [line for line in plan.splitlines() if re.match(r"\s*(->\s*)?Sort\s+\(", line)]
        assert len(sorts) == 1
        assert plan.index("Limit") > plan.index(sorts[0])
    else:
        assert "SCAN health_checks" not in plan


async def _plan(db: Database, backend: str, node_ids: list[uuid.UUID]) -> str:
    """The plan of the statement recent_checks runs, caught as it is sent."""
    statements: list[tuple[str, object]] = []
    engine = db.engine.sync_engine

    def catch(conn: object, cursor: object, statement: str, parameters: object, *_: object) -> None:
        if "health_checks" in statement and not statement.startswith("EXPLAIN"):
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", catch)
    try:
        async with db.session() as session:
            await recent_checks(session, node_ids, last=5)
    finally:
        sa.event.remove(engine, "before_cursor_execute", catch)
    [(statement, parameters)] = statements
    explain = "EXPLAIN " if backend == "postgres" else "EXPLAIN QUERY PLAN "
    async with db.engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        if backend == "postgres":
            rows = await driver.fetch(explain + statement, *parameters)  # type: ignore[union-attr,misc]
            return "\n".join(row[0] for row in rows)
        cursor = await driver.execute(explain + statement, parameters)  # type: ignore[union-attr]
        return "\n".join(str(row[-1]) for row in await cursor.fetchall())


def test_migration_rolls_up_the_checks_kept_and_trims_each_node(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0007")
    start = datetime(2026, 12, 1, 9, 50, tzinfo=UTC)
    times = [start + timedelta(minutes=i) for i in range(150)]  # 09:50 to 12:19

    async def fill() -> uuid.UUID:
        db = Database.from_url(empty_database_url)
        try:
            node = await _node_at_0007(db)
            async with db.transaction() as session:
                session.add_all(
                    _check(node, at, latency=float(i % 7) if i % 3 else None)
                    for i, at in enumerate(times)
                )
            return node
        finally:
            await db.dispose()

    node = asyncio.run(fill())
    command.upgrade(config, "head")

    async def read() -> tuple[list[NodeHealthRollup], dict[uuid.UUID, list[HealthCheck]]]:
        db = Database.from_url(empty_database_url)
        try:
            async with db.session() as session:
                return await _rollups(db), await recent_checks(session, [node], last=200)
        finally:
            await db.dispose()

    rollups, kept = asyncio.run(read())
    expected = []
    for hour in (9, 10, 11, 12):
        bucket = [(i, at) for i, at in enumerate(times) if at.hour == hour]
        latencies = [float(i % 7) for i, _ in bucket if i % 3]
        expected.append((len(bucket), len(latencies), sum(latencies), max(latencies)))
    assert [row.bucket_start.hour for row in rollups] == [9, 10, 11, 12]
    found = [(r.checks, r.ok_checks, r.latency_ms_sum, r.latency_max) for r in rollups]
    assert found == expected
    assert [check.checked_at for check in kept[node]] == times[::-1][:100]
