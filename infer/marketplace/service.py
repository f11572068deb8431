"""Providers (operators with nodes on the market) and the reviews buyers leave them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from infer import audit
from infer.accounts.principal import Principal
from infer.accounts.profile import display_name
from infer.audit import ClientInfo
from infer.db import Database
from infer.errors import BadInput, Conflict, Forbidden, NotFound
from infer.models import Node, NodeModel, NodeStatus, Review, UsageRecord, User, utcnow
from infer.security.text import check_text

MAX_COMMENT = 2000


@dataclass(frozen=True)
class Provider:
    """An operator as buyers see it: its display name, never endpoints or anything of its email."""

    id: uuid.UUID
    name: str
    rating: float | None
    review_count: int
    models: tuple[str, ...]


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
            select(User.id, User.display_name).where(col(User.id).in_(list(models)))
        )
        labels = {uid: display_name(uid, chosen) for uid, chosen in names}
    providers = [
        Provider(
            id=operator_id,
            name=labels.get(operator_id) or display_name(operator_id, None),
            rating=round(figures[operator_id][0], 2) if operator_id in figures else None,
            review_count=figures.get(operator_id, (0.0, 0))[1],
            models=tuple(sorted(offered_models)),
        )
        for operator_id, offered_models in models.items()
    ]
    return sorted(providers, key=lambda p: (-(p.rating or 0), -p.review_count, p.name))


async def create_review(
    db: Database,
    *,
    principal: Principal,
    provider_id: uuid.UUID,
    rating: int,
    comment: str | None,
    client: ClientInfo,
) -> Review:
    """One review per buyer per provider, from buyers who have used that provider."""
    if not 1 <= rating <= 5:
        raise BadInput("a rating is 1 to 5", param="rating")
    comment = check_text(comment, param="comment", what="a comment", max_length=MAX_COMMENT)
    if provider_id == principal.user_id:
        raise Forbidden("you cannot review yourself")
    async with db.session() as session:
        provider = await session.get(User, provider_id)
        used = await session.exec(
            select(UsageRecord.id)
            .where(
                UsageRecord.buyer_id == principal.user_id,
                UsageRecord.operator_id == provider_id,
                UsageRecord.status == "completed",
            )
            .limit(1)
        )
        has_used = used.first() is not None
    if provider is None:
        raise NotFound("no such provider", param="providerId")
    if not has_used:
        raise Forbidden("only buyers who have used this provider may review it")
    review = Review(
        provider_id=provider_id,
        reviewer_id=principal.user_id,
        rating=rating,
        comment=comment,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    try:
        async with db.transaction() as session:
            session.add(review)
            audit.record(
                session,
                action="review.created",
                client=client,
                actor_id=principal.user_id,
                target=f"provider:{provider_id}",
                details={"rating": rating},
            )
    except IntegrityError as exc:
        raise Conflict("you have already reviewed this provider", param="providerId") from exc
    return review
