"""The provider directory and reviews."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from infer.accounts import profile
from infer.errors import NotFound
from infer.marketplace import directory, reviews, service
from infer.models import Node as NodeRow
from infer.models import NodeStatus
from infer.models import Review as ReviewRow
from infer.schema.context import Context
from infer.schema.figures import ProviderStats, provider_stats
from infer.schema.node import NodeStatus as NodeStatusType
from infer.schema.permissions import require_principal
from infer.schema.scalars import Money
from infer.schema.user import User


def _parse_id(value: str, *, param: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound(f"no such {what}", param=param) from exc


@strawberry.type(name="Review")
class Review:
    id: strawberry.ID
    rating: int
    comment: str | None
    verified: bool = strawberry.field(
        description="True when a settled request with the provider entitles the review."
    )
    created_at: datetime
    updated_at: datetime
    reply: str | None = strawberry.field(description="The provider's one answer.")
    replied_at: datetime | None

    @classmethod
    def from_model(cls, row: ReviewRow) -> Review:
        return cls(
            id=strawberry.ID(str(row.id)),
            rating=row.rating,
            comment=row.comment,
            verified=row.request_id is not None,
            created_at=row.created_at,
            updated_at=row.updated_at,
            reply=row.reply,
            replied_at=row.replied_at,
        )


@strawberry.type(name="ReviewPage")
class ReviewPage:
    nodes: list[Review] = strawberry.field(description="Newest first.")
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next page; null on the last page."
    )


@strawberry.type(name="RatingCount")
class RatingCount:
    stars: int
    count: int


@strawberry.type(name="PublicNode")
class PublicNode:
    """A provider's node as buyers see it: never its endpoint or token."""

    name: str
    gpu_class: str | None = strawberry.field(description="The GPU's (or CPU's) name, if known.")
    gpu_memory_mib: int | None = strawberry.field(description="Total GPU memory, if known.")
    status: NodeStatusType  # type: ignore[valid-type]
    id_: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def models(self, info: Info[Context, Any]) -> list[str]:
        rows = await info.context.loaders.node_models.load(self.id_)
        return [row.model for row in rows if row.available]

    @classmethod
    def from_model(cls, row: NodeRow) -> PublicNode:
        gpu = row.gpu if isinstance(row.gpu, dict) else {}
        devices = gpu.get("devices")
        first = devices[0] if isinstance(devices, list) and devices else {}
        name = first.get("name") if isinstance(first, dict) else None
        memory = gpu.get("memory_bytes")
        if not isinstance(memory, int) and isinstance(first, dict):
            memory = first.get("memory_bytes")
        vendor = gpu.get("vendor")
        return cls(
            name=row.name,
            gpu_class=str(name)[:100] if name else (str(vendor)[:100] if vendor else None),
            gpu_memory_mib=memory // 2**20 if isinstance(memory, int) and memory > 0 else None,
            status=NodeStatus.PAUSED if row.paused else row.status,
            id_=row.id,
        )


@strawberry.type(name="ProviderOffer", description="A model a provider sells now.")
class ProviderOffer:
    model: str
    input_per_million: Money = strawberry.field(description="Its cheapest node's price.")
    output_per_million: Money
    provider_id: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def stats(self, info: Info[Context, Any]) -> ProviderStats:
        return await provider_stats(info, self.provider_id, self.model)


async def _my_review(root: Provider, info: Info[Context, Any]) -> Review | None:
    principal = info.context.principal
    if principal is None:
        return None
    row = await info.context.loaders.own_reviews.load((principal.user_id, uuid.UUID(root.id)))
    return None if row is None else Review.from_model(row)


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

    description: str | None = strawberry.field(description="The provider's own words.")
    joined_at: datetime | None
    cursor: str | None = strawberry.field(
        default=None,
        description="In a `providers` list: pass as `after` for the providers after this one.",
    )

    @strawberry.field
    async def offers(self, info: Info[Context, Any]) -> list[ProviderOffer]:
        provider_id = uuid.UUID(self.id)
        return [
            ProviderOffer(
                model=offer.model,
                input_per_million=Money(offer.input_per_million),
                output_per_million=Money(offer.output_per_million),
                provider_id=provider_id,
            )
            for offer in await info.context.loaders.provider_offers.load(provider_id)
        ]

    @strawberry.field
    async def nodes(self, info: Info[Context, Any]) -> list[PublicNode]:
        rows = await info.context.loaders.nodes.load(uuid.UUID(self.id))
        return [PublicNode.from_model(row) for row in rows if row.status != NodeStatus.DISABLED]

    @strawberry.field
    async def reviews(
        self, info: Info[Context, Any], first: int = 20, after: str | None = None
    ) -> ReviewPage:
        reviews.check_page(first, after)
        page = await info.context.loaders.review_pages.load((uuid.UUID(self.id), first, after))
        return ReviewPage(
            nodes=[Review.from_model(row) for row in page.reviews], end_cursor=page.end_cursor
        )

    my_review: Review | None = strawberry.field(
        resolver=_my_review,
        description="Your own review of this provider, to edit or delete; null signed out or none.",
    )

    @strawberry.field
    async def rating_distribution(self, info: Info[Context, Any]) -> list[RatingCount]:
        counts = await info.context.loaders.rating_distributions.load(uuid.UUID(self.id))
        return [RatingCount(stars=star, count=n) for star, n in enumerate(counts, start=1)]

    @classmethod
    def from_service(cls, p: service.Provider, *, cursor: str | None = None) -> Provider:
        return cls(
            id=strawberry.ID(str(p.id)),
            name=p.name,
            rating=p.rating,
            review_count=p.review_count,
            models=list(p.models),
            description=p.description,
            joined_at=p.joined_at,
            cursor=cursor,
        )


ProviderSort = strawberry.enum(
    directory.ProviderSort,
    name="ProviderSort",
    description=(
        "RATING: best average first; PRICE: cheapest offer first; LATENCY: lowest time to "
        "first token (p50, 24 h) first; THROUGHPUT: most tokens/s (p50, 24 h) first; "
        "UPTIME: highest 24 h uptime first. Providers without the figure come last."
    ),
)


@strawberry.input(name="ProviderFilter")
class ProviderFilter:
    model: str | None = strawberry.field(
        default=None, description="Only providers selling this model; figures are then its own."
    )
    min_rating: float | None = strawberry.field(default=None, description="1 to 5.")
    max_price: Money | None = strawberry.field(
        default=None,
        description="Input plus output price per million tokens of its cheapest offer, at most.",
    )
    online_only: bool = strawberry.field(
        default=True, description="False also lists providers whose nodes are offline now."
    )
    search: str | None = strawberry.field(
        default=None, description="In the chosen name or the description, any letter case."
    )
    capability: str | None = strawberry.field(
        default=None,
        description="Only offers whose runtime reports it: completion, tools, vision, "
        "embedding or thinking.",
    )


async def _count_public_read(info: Info[Context, Any]) -> None:
    ctx = info.context
    await ctx.resources.limiter.check(
        ctx.resources.settings.market_limit_address,
        "market-address",
        ctx.client.ip or "-",
        message="too many storefront requests from this address; try again later",
    )


async def providers(
    info: Info[Context, Any],
    filter: ProviderFilter | None = None,
    sort: ProviderSort = directory.ProviderSort.RATING,  # type: ignore[valid-type]
    first: int = directory.MAX_PAGE,
    after: str | None = None,
) -> list[Provider]:
    await _count_public_read(info)
    wanted = None
    if filter is not None:
        wanted = directory.ProviderFilter(
            model=filter.model,
            min_rating=filter.min_rating,
            max_price=filter.max_price,
            online_only=filter.online_only,
            search=filter.search,
            capability=filter.capability,
        )
    page = await directory.list_providers(
        info.context.resources.db, filter=wanted, sort=sort, first=first, after=after
    )
    return [Provider.from_service(item.provider, cursor=item.cursor) for item in page]


async def provider(info: Info[Context, Any], id: strawberry.ID) -> Provider:
    await _count_public_read(info)
    parsed = _parse_id(id, param="id", what="provider")
    found = await service.provider_page(info.context.resources.db, provider_id=parsed)
    return Provider.from_service(found)


async def _count_review_write(info: Info[Context, Any]) -> uuid.UUID:
    ctx = info.context
    user_id = require_principal(info).user_id
    await ctx.resources.limiter.check(
        ctx.resources.settings.review_limit_user,
        "review-user",
        str(user_id),
        message="too many review changes; try again later",
    )
    return user_id


async def create_review(
    info: Info[Context, Any], provider_id: strawberry.ID, rating: int, comment: str | None = None
) -> Review:
    parsed = _parse_id(provider_id, param="providerId", what="provider")
    await _count_review_write(info)
    row = await reviews.create_review(
        info.context.resources.db,
        principal=require_principal(info),
        provider_id=parsed,
        rating=rating,
        comment=comment,
        client=info.context.client,
    )
    return Review.from_model(row)


async def update_review(
    info: Info[Context, Any],
    id: strawberry.ID,
    rating: int | None = None,
    comment: str | None = None,
) -> Review:
    parsed = _parse_id(id, param="id", what="review")
    await _count_review_write(info)
    row = await reviews.update_review(
        info.context.resources.db,
        principal=require_principal(info),
        review_id=parsed,
        rating=rating,
        comment=comment,
        client=info.context.client,
    )
    return Review.from_model(row)


async def delete_review(info: Info[Context, Any], id: strawberry.ID) -> bool:
    parsed = _parse_id(id, param="id", what="review")
    await _count_review_write(info)
    await reviews.delete_review(
        info.context.resources.db,
        principal=require_principal(info),
        review_id=parsed,
        client=info.context.client,
    )
    return True


async def reply_to_review(info: Info[Context, Any], id: strawberry.ID, reply: str) -> Review:
    parsed = _parse_id(id, param="id", what="review")
    await _count_review_write(info)
    row = await reviews.reply_to_review(
        info.context.resources.db,
        principal=require_principal(info),
        review_id=parsed,
        reply=reply,
        client=info.context.client,
    )
    return Review.from_model(row)


async def update_provider_profile(info: Info[Context, Any], description: str | None) -> User:
    row = await profile.set_description(
        info.context.resources.db,
        principal=require_principal(info),
        description=description,
        client=info.context.client,
    )
    return User.from_model(row)
