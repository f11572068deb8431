"""Operator notifications: listing and counting them, and marking them read."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col, select

from infer.db import Database
from infer.errors import BadInput
from infer.models import Notification, utcnow


async def list_notifications(
    db: Database, *, user_id: uuid.UUID, unread_only: bool, first: int
) -> list[Notification]:
    if not 1 <= first <= 100:
        raise BadInput("first is 1 to 100", param="first")
    query = select(Notification).where(Notification.user_id == user_id)
    if unread_only:
        query = query.where(col(Notification.read_at).is_(None))
    query = query.order_by(col(Notification.created_at).desc()).limit(first)
    async with db.session() as session:
        return list((await session.exec(query)).all())


async def unread_count(db: Database, *, user_id: uuid.UUID) -> int:
    """How many of the user's notifications are unread, in one COUNT."""
    query = (
        select(sa.func.count())
        .select_from(Notification)
        .where(col(Notification.user_id) == user_id, col(Notification.read_at).is_(None))
    )
    async with db.session() as session:
        return int((await session.exec(query)).one())


async def mark_read(db: Database, *, user_id: uuid.UUID, ids: Sequence[uuid.UUID] | None) -> int:
    """Mark these (or, without ids, all) of the user's unread notifications read."""
    statement = (
        sa.update(Notification)
        .where(col(Notification.user_id) == user_id, col(Notification.read_at).is_(None))
        .values(read_at=utcnow())
    )
    if ids is not None:
        statement = statement.where(col(Notification.id).in_(ids))
    async with db.transaction() as session:
        result = await session.exec(statement)
        return int(result.rowcount)
