"""The Notification type (node up/down for operators) and marking notifications read."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from infer import notifications
from infer.errors import BadInput
from infer.models import Notification as NotificationRow
from infer.schema.context import Context
from infer.schema.permissions import require_principal


@strawberry.type(name="Notification")
class Notification:
    id: strawberry.ID
    kind: str = strawberry.field(description="node_online, node_degraded or node_offline.")
    message: str
    node_id: strawberry.ID | None
    created_at: datetime
    read_at: datetime | None

    @classmethod
    def from_model(cls, row: NotificationRow) -> Notification:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            message=row.message,
            node_id=strawberry.ID(str(row.node_id)) if row.node_id else None,
            created_at=row.created_at,
            read_at=row.read_at,
        )


async def mark_notifications_read(
    info: Info[Context, Any], ids: list[strawberry.ID] | None = None
) -> int:
    principal = require_principal(info)
    try:
        parsed = [uuid.UUID(i) for i in ids] if ids is not None else None
    except ValueError as exc:
        raise BadInput("not a notification id", param="ids") from exc
    return await notifications.mark_read(
        info.context.resources.db, user_id=principal.user_id, ids=parsed
    )
