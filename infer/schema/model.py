"""The model catalogue: models on sale, with their offers, details and measured figures."""

from __future__ import annotations

import uuid
from typing import Any

import strawberry
from strawberry.types import Info

from infer.marketplace import catalogue
from infer.schema.context import Context
from infer.schema.figures import ProviderStats, provider_stats
from infer.schema.marketplace import _count_public_read
from infer.schema.offer_provider import OfferProvider, offer_provider
from infer.schema.scalars import Money

ModelSort = strawberry.enum(catalogue.ModelSort, name="ModelSort")


@strawberry.type(name="Offer", description="One provider's lowest prices for a model.")
class Offer:
    input_per_million: Money
    output_per_million: Money
    provider_id: strawberry.Private[uuid.UUID]
    model: strawberry.Private[str]

    @strawberry.field
    async def provider(self, info: Info[Context, Any]) -> OfferProvider:
        return await offer_provider(info, self.provider_id)

    @strawberry.field
    async def stats(self, info: Info[Context, Any]) -> ProviderStats:
        return await provider_stats(info, self.provider_id, self.model)


@strawberry.type(name="Model", description="A model on sale: a priced model an online node offers.")
class Model:
    name: str
    offers: list[Offer] = strawberry.field(description="One per provider; cheapest, then fastest.")
    lowest_input_per_million: Money = strawberry.field(description="Of the cheapest offer.")
    lowest_output_per_million: Money
    node_count: int = strawberry.field(description="Online nodes selling it.")
    requests_served: int = strawberry.field(description="Completed requests, last 24 h.")
    context_length: int | None = strawberry.field(description="In tokens, as a runtime says.")
    parameter_size: str | None = strawberry.field(description='As the runtime says, e.g. "8.0B".')
    quantization: str | None = strawberry.field(description='e.g. "Q4_K_M".')
    family: str | None
    capabilities: list[str] = strawberry.field(
        description="Any of completion, tools, vision, embedding, thinking, where a runtime says."
    )
    cursor: str = strawberry.field(description="Pass as `after` for the models after this one.")

    @classmethod
    def from_service(cls, found: catalogue.CatalogueModel) -> Model:
        cheapest = found.offers[0]
        return cls(
            name=found.name,
            offers=[
                Offer(
                    input_per_million=Money(o.input_per_million),
                    output_per_million=Money(o.output_per_million),
                    provider_id=o.provider_id,
                    model=found.name,
                )
                for o in found.offers
            ],
            lowest_input_per_million=Money(cheapest.input_per_million),
            lowest_output_per_million=Money(cheapest.output_per_million),
            node_count=found.node_count,
            requests_served=found.requests_served,
            context_length=found.context_length,
            parameter_size=found.parameter_size,
            quantization=found.quantization,
            family=found.family,
            capabilities=list(found.capabilities),
            cursor=found.cursor,
        )


@strawberry.input(name="ModelFilter")
class ModelFilter:
    search: str | None = strawberry.field(default=None, description="In the name, any case.")
    capability: str | None = strawberry.field(default=None, description="e.g. tools, vision.")
    family: str | None = strawberry.field(default=None, description="e.g. llama, any case.")
    max_price: Money | None = strawberry.field(
        default=None, description="Input plus output per million of its cheapest offer, at most."
    )
    min_context_length: int | None = strawberry.field(default=None)


async def models(
    info: Info[Context, Any],
    filter: ModelFilter | None = None,
    sort: ModelSort = catalogue.ModelSort.NAME,  # type: ignore[valid-type]
    first: int = catalogue.MAX_PAGE,
    after: str | None = None,
) -> list[Model]:
    await _count_public_read(info)
    wanted = None
    if filter is not None:
        wanted = catalogue.ModelFilter(
            search=filter.search,
            capability=filter.capability,
            family=filter.family,
            max_price=filter.max_price,
            min_context_length=filter.min_context_length,
        )
    page = await catalogue.list_models(
        info.context.resources.db, filter=wanted, sort=sort, first=first, after=after
    )
    return [Model.from_service(found) for found in page]


async def model(info: Info[Context, Any], name: str) -> Model:
    await _count_public_read(info)
    return Model.from_service(await catalogue.find_model(info.context.resources.db, name=name))
