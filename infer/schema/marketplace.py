"""The provider directory and reviews."""

from __future__ import annotations

import uuid
from typing import Any

import strawberry
from strawberry.types import Info

from infer.errors import NotFound
from infer.marketplace import service
from infer.schema.context import Context
from infer.schema.figures import ProviderStats, provider_stats
from infer.schema.permissions import require_principal


@strawberry.type(name="Provider")
class Provider:
    id: strawberry.ID
    name: str
    rating: float | None = strawberry.field(description="Average of 1 to 5; null if unrated.")
    review_count: int
    models: list[str] = strawberry.field(description="Models its online nodes sell now.")

    @strawberry.field
    async def stats(self, info: Info[Context, Any]) -> ProviderStats:
        return await provider_stats(info, uuid.UUID(self.id))


@strawberry.type(name="Review")
class Review:
    id: strawberry.ID
    rating: int
    comment: str | None


async def providers(info: Info[Context, Any]) -> list[Provider]:
    require_principal(info)
    return [
        Provider(
            id=strawberry.ID(str(p.id)),
            name=p.name,
            rating=p.rating,
            review_count=p.review_count,
            models=list(p.models),
        )
        for p in await service.list_providers(info.context.resources.db)
    ]


async def create_review(
    info: Info[Context, Any], provider_id: strawberry.ID, rating: int, comment: str | None = None
) -> Review:
    try:
        parsed = uuid.UUID(provider_id)
    except ValueError as exc:
        raise NotFound("no such provider", param="providerId") from exc
    row = await service.create_review(
        info.context.resources.db,
        principal=require_principal(info),
        provider_id=parsed,
        rating=rating,
        comment=comment,
        client=info.context.client,
    )
    return Review(id=strawberry.ID(str(row.id)), rating=row.rating, comment=row.comment)
