"""The market's growth: node rows inserted in bulk for a few operators, one model priced."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from gatewaybench.market import MODEL, OPERATOR, PRICE_IN, PRICE_OUT, sign_up_with_key
from sqlmodel import col, select

from infer.billing.money import parse_usd
from infer.db import Database
from infer.models import Node, NodeModel, NodeStatus, Runtime, User, utcnow

CHUNK = 1000  # rows per INSERT statement
CAPACITY = 1000  # as the registered node's: the router never turns a request away for it


def operator_email(index: int) -> str:
    """The first operator is the gateway bench's, who registered its node through the API."""
    return OPERATOR if index == 0 else f"operator{index}@market.bench.example"


async def sign_up_operators(platform_url: str, count: int) -> None:
    """Operators beyond the first, signed up through INFER as the first was."""
    for index in range(1, count):
        await sign_up_with_key(platform_url, operator_email(index))


async def operator_ids(db: Database, count: int) -> list[uuid.UUID]:
    emails = [operator_email(index) for index in range(count)]
    async with db.session() as session:
        rows = await session.exec(select(User.email, User.id).where(col(User.email).in_(emails)))
        by_email = dict(rows.all())
    return [by_email[email] for email in emails]


async def count_nodes(db: Database) -> int:
    async with db.session() as session:
        return int((await session.exec(select(sa.func.count()).select_from(Node))).one())


async def grow(
    db: Database,
    *,
    operators: list[uuid.UUID],
    endpoints: list[str],
    to: int,
    history: bool = True,
) -> int:
    """Insert nodes until the market has `to`; how many were added.

    Each node is what a registration followed by one good check leaves: online, its model
    available and priced, its details read (so a sweep measures routine checks only), a
    time set for its next check; with `history`, a week of checks behind it, so that the
    sweep writes into tables of a market's steady size.
    """
    have = await count_nodes(db)
    micro_in, micro_out = parse_usd(PRICE_IN), parse_usd(PRICE_OUT)
    for start in range(have, to, CHUNK):
        now = utcnow()
        nodes: list[dict[str, Any]] = []
        models: list[dict[str, Any]] = []
        for index in range(start, min(start + CHUNK, to)):
            node_id = uuid.uuid4()
            nodes.append(
                {
                    "id": node_id,
                    "operator_id": operators[index % len(operators)],
                    "name": f"market-{index:05d}",
                    "runtime": Runtime.OPENAI,
                    "endpoint": endpoints[index % len(endpoints)],
                    "status": NodeStatus.ONLINE,
                    "capacity": CAPACITY,
                    "consecutive_failures": 0,
                    "consecutive_successes": 1,
                    "last_checked_at": now,
                    "next_check_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            models.append(
                {
                    "id": uuid.uuid4(),
                    "node_id": node_id,
                    "model": MODEL,
                    "available": True,
                    "loaded": False,
                    "input_price_per_million": micro_in,
                    "output_price_per_million": micro_out,
                    "seen_at": now,
                    "details_at": now,
                }
            )
        async with db.transaction() as session:
            connection = await session.connection()
            await connection.execute(sa.insert(Node), nodes)
            await connection.execute(sa.insert(NodeModel), models)
            if history:
                ids = [node["id"] for node in nodes]
                await connection.execute(_PAST_CHECKS, {"ids": ids, "now": now})
                await connection.execute(_PAST_ROLLUPS, {"ids": ids, "now": now})
    return max(0, to - have)


# What a week of good checks every minute leaves (infer/nodes/history.py): the last 100
# raw checks of each node and an hourly rollup for each of the 168 hours. Written by the
# database itself, so 10,000 nodes' 2.7 million rows take seconds, not minutes.
_PAST_CHECKS = sa.text(
    "INSERT INTO health_checks (node_id, checked_at, ok, latency_ms, model_count) "
    "SELECT id, CAST(:now AS timestamptz) - g * interval '60 seconds', true, 1.0, 1 "
    "FROM nodes, generate_series(1, 100) AS g WHERE id = ANY(:ids)"
)
_PAST_ROLLUPS = sa.text(
    "INSERT INTO node_health_rollups (node_id, bucket_start, checks, ok_checks, "
    "latency_ms_sum, latency_count, latency_max) "
    "SELECT id, date_trunc('hour', CAST(:now AS timestamptz)) - g * interval '1 hour', "
    "60, 60, 60.0, 60, 1.0 FROM nodes, generate_series(1, 168) AS g WHERE id = ANY(:ids)"
)


async def shrink(db: Database, *, to: int) -> int:
    """Disable every node but the `to` first registered (the monitor and the router then
    leave them out, as for an operator's disabled node); how many were disabled."""
    keep = select(col(Node.id)).order_by(col(Node.created_at), col(Node.name)).limit(to)
    async with db.transaction() as session:
        connection = await session.connection()
        result = await connection.execute(
            sa.update(Node)
            .where(
                col(Node.id).not_in(keep.scalar_subquery()), col(Node.status) != NodeStatus.DISABLED
            )
            .values(status=NodeStatus.DISABLED, updated_at=utcnow())
        )
    return int(result.rowcount)
