"""Append-only audit log of security-relevant actions, and a user's own view of it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.billing.reports import Page, before, check_first, encode_cursor
from infer.models import AuditLog

_MAX_ID = 2**63 - 1  # a BIGINT; a cursor naming more would fail in the database


@dataclass(frozen=True)
class ClientInfo:
    """Who is on the other end of a request, as far as the audit log cares."""

    ip: str | None = None
    user_agent: str | None = None

    @classmethod
    def cli(cls) -> ClientInfo:
        return cls(ip=None, user_agent="infer-cli")


def record(
    session: AsyncSession,
    *,
    action: str,
    client: ClientInfo,
    actor_id: uuid.UUID | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an audit row to the caller's transaction, so it commits (or not) with the action."""
    session.add(
        AuditLog(
            actor_id=actor_id,
            action=action,
            target=target,
            ip=client.ip,
            user_agent=(client.user_agent or "")[:512] or None,
            details=details,
        )
    )


def _entry_id(text: str) -> int:
    value = int(text)
    if not 0 < value <= _MAX_ID:
        raise ValueError("not an audit entry id")
    return value


async def entries_of(
    session: AsyncSession, *, actor_id: uuid.UUID, first: int = 20, after: str | None = None
) -> Page[AuditLog]:
    """What this user did (and what was tried in their name), newest first, by keyset."""
    check_first(first)
    created, row_id = col(AuditLog.created_at), col(AuditLog.id)
    statement = select(AuditLog).where(col(AuditLog.actor_id) == actor_id)
    if after is not None:
        statement = statement.where(before(created, row_id, after, _entry_id))
    rows = list(
        await session.exec(statement.order_by(created.desc(), row_id.desc()).limit(first + 1))
    )
    items = [(encode_cursor(row.created_at, row.id or 0), row) for row in rows[:first]]
    return Page(items, has_next=len(rows) > first)
