"""Append-only audit log of security-relevant actions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from infer.models import AuditLog


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
