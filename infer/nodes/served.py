"""What nodes served since a time: settled requests and their operator's earnings."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.models import UsageRecord


@dataclass(frozen=True)
class Served:
    requests: int = 0
    earnings: int = 0  # micro-USD


def start_of_day(now: datetime) -> datetime:
    """The UTC midnight that began `now`'s day."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def served_since(
    session: AsyncSession, node_ids: Sequence[uuid.UUID], since: datetime
) -> dict[uuid.UUID, Served]:
    """Per node, in one query on (node_id, created_at); zeros for nodes that served none."""
    statement = (
        sa.select(
            col(UsageRecord.node_id),
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(col(UsageRecord.operator_earning)), 0),
        )
        .where(col(UsageRecord.node_id).in_(node_ids), col(UsageRecord.created_at) >= since)
        .group_by(col(UsageRecord.node_id))
    )
    connection = await session.connection()
    rows = (await connection.execute(statement)).all()
    found = {row[0]: Served(int(row[1]), int(row[2])) for row in rows}
    return {node_id: found.get(node_id, Served()) for node_id in node_ids}
