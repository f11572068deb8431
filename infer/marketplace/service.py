"""Providers (operators with nodes on the market) and the reviews buyers leave them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select

from infer.accounts.profile import display_name
from infer.db import Database
from infer.errors import NotFound
from infer.marketplace.reviews import average, rating_figures
from infer.models import Node, NodeModel, NodeStatus, Review, User


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


async def list_providers(db: Database) -> list[Provider]:
    """Operators with at least one online node offering a priced model, best rated first."""
    async with db.session() as session:
        offered = await session.exec(
            select(Node.operator_id, NodeModel.model)
            .join(NodeModel, col(NodeModel.node_id) == col(Node.id))
            .where(
                Node.status == NodeStatus.ONLINE,
                col(NodeModel.available).is_(True),
                (col(NodeModel.input_price_per_million) + col(NodeModel.output_price_per_million))
                > 0,
            )
            .distinct()
        )
        models: dict[uuid.UUID, set[str]] = {}
        for operator_id, model in offered:
            models.setdefault(operator_id, set()).add(model)
        if not models:
            return []
        ratings = await session.exec(
            select(Review.provider_id, sa.func.avg(Review.rating), sa.func.count())
            .where(col(Review.provider_id).in_(list(models)))
            .group_by(col(Review.provider_id))
        )
        figures = {pid: (float(avg), int(count)) for pid, avg, count in ratings}
        names = await session.exec(
            select(User.id, User.display_name, User.description, User.created_at).where(
                col(User.id).in_(list(models))
            )
        )
        # Every operator has its user row (nodes.operator_id is a foreign key).
        profiles = {uid: (chosen, text, at) for uid, chosen, text, at in names}
    providers = [
        Provider(
            id=operator_id,
            name=display_name(operator_id, profiles[operator_id][0]),
            description=profiles[operator_id][1],
            joined_at=profiles[operator_id][2],
            rating=round(figures[operator_id][0], 2) if operator_id in figures else None,
            review_count=figures.get(operator_id, (0.0, 0))[1],
            models=tuple(sorted(offered_models)),
        )
        for operator_id, offered_models in models.items()
    ]
    return sorted(providers, key=lambda p: (-(p.rating or 0), -p.review_count, p.name))


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
