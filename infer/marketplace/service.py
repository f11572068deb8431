"""Providers (operators with nodes on the market) and the reviews buyers leave them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select

from infer.accounts.profile import display_name
from infer.db import Database
from infer.errors import NotFound
from infer.marketplace.reviews import average, rating_figures
from infer.models import Node, NodeModel, NodeStatus, User


@dataclass(frozen=True)
class Provider:
    """An operator as buyers see it: its display name, never endpoints or anything of its email."""

    id: uuid.UUID
    name: str
    rating: float | None
    review_count: int
    models: tuple[str, ...]
    description: str | None = None
    joined_at: datetime | None = None


async def provider_page(db: Database, *, provider_id: uuid.UUID) -> Provider:
    """One provider (a user with a node, in any state) with its profile and exact rating."""
    async with db.session() as session:
        user = await session.get(User, provider_id)
        has_node = (
            await session.exec(select(Node.id).where(Node.operator_id == provider_id).limit(1))
        ).first()
        if user is None or has_node is None:
            raise NotFound("no such provider", param="id")
        offered = await session.exec(
            select(NodeModel.model)
            .join(Node, col(NodeModel.node_id) == col(Node.id))
            .where(
                Node.operator_id == provider_id,
                Node.status == NodeStatus.ONLINE,
                col(Node.paused).is_(False),
                col(NodeModel.available).is_(True),
                (col(NodeModel.input_price_per_million) + col(NodeModel.output_price_per_million))
                > 0,
            )
            .distinct()
        )
        models = tuple(sorted(offered))
        distribution = (await rating_figures(session, [provider_id]))[provider_id]
    return Provider(
        id=user.id,
        name=display_name(user.id, user.display_name),
        rating=average(distribution),
        review_count=sum(distribution),
        models=models,
        description=user.description,
        joined_at=user.created_at,
    )
