"""A user's own view of their signed-in sessions: listing the live ones and ending one."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlmodel import col, select

from infer import audit
from infer.accounts.principal import Principal
from infer.audit import ClientInfo
from infer.db import Database
from infer.errors import NotFound
from infer.models import Session, utcnow

MAX_LISTED = 100  # live sessions shown; log-ins past that are throttled long before


def _live(user_id: uuid.UUID) -> list[sa.ColumnElement[bool]]:
    return [
        col(Session.user_id) == user_id,
        col(Session.revoked_at).is_(None),
        col(Session.expires_at) > utcnow(),
    ]


async def live_sessions(db: Database, *, user_id: uuid.UUID) -> list[Session]:
    """The user's sessions that are neither ended nor expired, newest first."""
    query = (
        select(Session)
        .where(*_live(user_id))
        .order_by(col(Session.created_at).desc(), col(Session.id).desc())
        .limit(MAX_LISTED)
    )
    async with db.session() as session:
        return list(await session.exec(query))


async def end_session(
    db: Database, *, principal: Principal, session_id: uuid.UUID, client: ClientInfo
) -> None:
    """End one of the principal's live sessions; another user's (or a gone one) is NOT_FOUND."""
    async with db.transaction() as session:
        # Conditional on owner and liveness in one statement, so nobody learns of others' ids.
        result = await session.exec(
            sa.update(Session)
            .where(col(Session.id) == session_id, *_live(principal.user_id))
            .values(revoked_at=utcnow())
        )
        if result.rowcount != 1:
            raise NotFound("no such session", param="id")
        audit.record(
            session,
            action="session.end",
            client=client,
            actor_id=principal.user_id,
            target=f"session:{session_id}",
        )
