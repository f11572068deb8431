"""The operator behind an offer or a served request, as buyers see it: id and display name."""

from __future__ import annotations

import uuid
from typing import Any

import strawberry
from strawberry.types import Info

from infer.schema.context import Context


@strawberry.type(name="OfferProvider")
class OfferProvider:
    id: strawberry.ID
    name: str


async def offer_provider(info: Info[Context, Any], user_id: uuid.UUID) -> OfferProvider:
    """Through the request's display-name loader: one query however many are asked for."""
    name = await info.context.loaders.display_names.load(user_id)
    return OfferProvider(id=strawberry.ID(str(user_id)), name=name)
