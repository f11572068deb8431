"""The signed-in user's sessions, and ending one of them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from infer.accounts import sessions
from infer.models import Session as SessionRow
from infer.schema.context import Context
from infer.schema.permissions import require_principal


@strawberry.type(name="Session", description="A signed-in browser session of yours.")
class Session:
    id: strawberry.ID
    created_at: datetime
    expires_at: datetime
    ip: str | None = strawberry.field(description="The address it was opened from.")
    user_agent: str | None
    current: bool = strawberry.field(
        description="This request came with it (always false when calling with an API key)."
    )

    @classmethod
    def from_model(cls, row: SessionRow, *, current_id: uuid.UUID | None) -> Session:
        return cls(
            id=strawberry.ID(str(row.id)),
            created_at=row.created_at,
            expires_at=row.expires_at,
            ip=row.ip,
            user_agent=row.user_agent,
            current=row.id == current_id,
        )


async def list_sessions(info: Info[Context, Any], user_id: uuid.UUID) -> list[Session]:
    current = require_principal(info).session_id
    rows = await sessions.live_sessions(info.context.resources.db, user_id=user_id)
    return [Session.from_model(row, current_id=current) for row in rows]
