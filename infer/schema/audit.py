"""The signed-in user's own audit log: what was done in their name, newest first."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from infer import audit
from infer.models import AuditLog
from infer.schema.context import Context
from infer.schema.usage import Connection, connection


@strawberry.type(name="AuditEntry", description="Something done with your account.")
class AuditEntry:
    id: strawberry.ID
    action: str = strawberry.field(description='e.g. "user.logged_in", "session.end".')
    target: str | None = strawberry.field(description='What it acted on, e.g. "session:<id>".')
    ip: str | None
    user_agent: str | None
    created_at: datetime

    @classmethod
    def from_model(cls, row: AuditLog) -> AuditEntry:
        # Never the details: they may hold what should not be shown again (emails tried).
        return cls(
            id=strawberry.ID(str(row.id)),
            action=row.action,
            target=row.target,
            ip=row.ip,
            user_agent=row.user_agent,
            created_at=row.created_at,
        )


async def audit_log(
    info: Info[Context, Any], user_id: uuid.UUID, first: int, after: str | None
) -> Connection[AuditEntry]:
    async with info.context.resources.db.session() as session:
        page = await audit.entries_of(session, actor_id=user_id, first=first, after=after)
    return connection(page, AuditEntry.from_model)
