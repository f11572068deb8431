"""The provider directory: providers filtered and sorted by price, rating and measured figures."""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from infer.accounts.profile import display_name
from infer.db import Database
from infer.errors import BadInput
from infer.marketplace.figures import ALL_MODELS
from infer.marketplace.service import Provider
from infer.models import MarketFigures, Node, NodeModel, NodeStatus, Review, User
from infer.nodes.clients.details import CAPABILITIES
from infer.security.text import check_model_name, check_name

MAX_PAGE = 50
MAX_SEARCH = 100


class ProviderSort(enum.StrEnum):
    RATING = "rating"  # best average first
    PRICE = "price"  # cheapest offer first
    LATENCY = "latency"  # lowest time to first token (p50, 24 h) first
    THROUGHPUT = "throughput"  # most tokens per second (p50, 24 h) first
    UPTIME = "uptime"  # highest uptime (24 h) first


@dataclass(frozen=True)
class ProviderFilter:
    model: str | None = None
    min_rating: float | None = None
    max_price: int | None = None  # micro-USD, input plus output price per million tokens
    online_only: bool = True
    search: str | None = None
    capability: str | None = None  # one of CAPABILITIES, as a runtime reported it


@dataclass(frozen=True)
class Listed:
    """A provider of a page and the cursor that lists the providers after it."""

    provider: Provider
    cursor: str


def check_filter(given: ProviderFilter) -> ProviderFilter:
    """The filter cleaned, or BAD_USER_INPUT naming the absurd part."""
    model = None if given.model is None else check_model_name(given.model, param="filter.model")
    if given.min_rating is not None and not (
        math.isfinite(given.min_rating) and 1 <= given.min_rating <= 5
    ):
        raise BadInput("minRating is 1 to 5", param="filter.minRating")
    if given.max_price is not None and given.max_price < 0:
        raise BadInput("maxPrice is not negative", param="filter.maxPrice")
    if given.capability is not None and given.capability not in CAPABILITIES:
        raise BadInput(f"capability is one of {', '.join(CAPABILITIES)}", param="filter.capability")
    search = given.search
    if search is not None:
        search = check_name(
            search, param="filter.search", what="a search", max_length=MAX_SEARCH
        ).lower()
    return ProviderFilter(
        model=model,
        min_rating=given.min_rating,
        max_price=given.max_price,
        online_only=given.online_only,
        search=search,
        capability=given.capability,
    )


def encode_cursor(sort: ProviderSort, key: float | None, provider_id: uuid.UUID) -> str:
    raw = json.dumps({"s": sort.value, "k": key, "i": str(provider_id)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str, sort: ProviderSort) -> tuple[float | None, uuid.UUID]:
    """The sort key and id a cursor of this sort holds; BAD_USER_INPUT for any other string."""
    try:
        found: Any = json.loads(base64.urlsafe_b64decode(cursor.encode()).decode())
        key = found["k"]
        if found["s"] != sort.value:
            raise ValueError("a cursor of another sort")
        if key is not None and (
            isinstance(key, bool) or not isinstance(key, int | float) or not math.isfinite(key)
        ):
            raise ValueError("not a sort key")
        return (None if key is None else float(key)), uuid.UUID(found["i"])
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, UnicodeError) as exc:
        raise BadInput("not a cursor from this list", param="after") from exc


def _priced() -> sa.ColumnElement[bool]:
    return (col(NodeModel.input_price_per_million) + col(NodeModel.output_price_per_million)) > 0


async def list_providers(
    db: Database,
    *,
    filter: ProviderFilter | None = None,
    sort: ProviderSort = ProviderSort.RATING,
    first: int = MAX_PAGE,
    after: str | None = None,
) -> list[Listed]:
    """One page of providers with a priced offer (on an online node unless told otherwise):
    one query for the page, its profiles, ratings and figures, one for its models."""
    if not 1 <= first <= MAX_PAGE:
        raise BadInput(f"first is 1 to {MAX_PAGE}", param="first")
    wanted = check_filter(filter or ProviderFilter())
    start = None if after is None else decode_cursor(after, sort)

    offer_where: list[sa.ColumnElement[bool]] = [
        ((col(Node.status) == NodeStatus.ONLINE) & col(Node.paused).is_(False))
        if wanted.online_only
        else (col(Node.status) != NodeStatus.DISABLED),
        col(NodeModel.available).is_(True),
        _priced(),
    ]
    if wanted.model is not None:
        offer_where.append(col(NodeModel.model) == wanted.model)
    if wanted.capability is not None:
        # Stored comma-separated ("completion,tools"): match a whole item.
        # What an operator declared wins over what the runtime said.
        stored = sa.func.coalesce(col(NodeModel.declared_capabilities), col(NodeModel.capabilities))
        listed = sa.literal(",") + stored + sa.literal(",")
        offer_where.append(listed.contains(f",{wanted.capability},", autoescape=True))
    offers = (
        select(
            col(Node.operator_id).label("operator_id"),
            sa.func.min(
                col(NodeModel.input_price_per_million) + col(NodeModel.output_price_per_million)
            ).label("price"),
        )
        .join(NodeModel, col(NodeModel.node_id) == col(Node.id))
        .where(*offer_where)
        .group_by(col(Node.operator_id))
        .subquery()
    )
    ratings = (
        select(
            col(Review.provider_id).label("provider_id"),
            sa.cast(sa.func.avg(col(Review.rating)), sa.Float).label("rating"),
            sa.func.count().label("reviews"),
        )
        .group_by(col(Review.provider_id))
        .subquery()
    )
    figures = (
        select(MarketFigures)
        .where(
            col(MarketFigures.model) == (wanted.model or ALL_MODELS),
            col(MarketFigures.period) == "24h",
        )
        .subquery()
    )
    # Every sort orders by an ascending key (negated for "most first"), nulls last, then id.
    key: sa.ColumnElement[Any] = {
        ProviderSort.RATING: -ratings.c.rating,
        ProviderSort.PRICE: offers.c.price,
        ProviderSort.LATENCY: figures.c.ttft_ms_p50,
        ProviderSort.THROUGHPUT: -figures.c.tokens_per_second_p50,
        ProviderSort.UPTIME: -figures.c.uptime,
    }[sort]
    query = (
        sa.select(
            col(User.id),
            col(User.display_name),
            col(User.description),
            col(User.created_at),
            ratings.c.rating,
            ratings.c.reviews,
            key.label("sort_key"),
        )
        .join(offers, offers.c.operator_id == col(User.id))
        .outerjoin(ratings, ratings.c.provider_id == col(User.id))
        .outerjoin(figures, figures.c.operator_id == col(User.id))
    )
    if wanted.min_rating is not None:
        query = query.where(ratings.c.rating >= wanted.min_rating)
    if wanted.max_price is not None:
        query = query.where(offers.c.price <= wanted.max_price)
    if wanted.search is not None:
        query = query.where(
            sa.or_(
                sa.func.lower(col(User.display_name)).contains(wanted.search, autoescape=True),
                sa.func.lower(col(User.description)).contains(wanted.search, autoescape=True),
            )
        )
    if start is not None:
        last_key, last_id = start
        if last_key is None:
            query = query.where(key.is_(None), col(User.id) > last_id)
        else:
            query = query.where(
                sa.or_(
                    key.is_(None),
                    key > last_key,
                    sa.and_(key == last_key, col(User.id) > last_id),
                )
            )
    query = query.order_by(key.is_(None), key, col(User.id)).limit(first)

    async with db.session() as session:
        rows = list(await session.exec(query))  # type: ignore[call-overload]  # a Core select
        ids = [row[0] for row in rows]
        offered = await session.exec(
            select(Node.operator_id, NodeModel.model)
            .join(NodeModel, col(NodeModel.node_id) == col(Node.id))
            .where(
                col(Node.operator_id).in_(ids),
                Node.status == NodeStatus.ONLINE,
                col(Node.paused).is_(False),
                col(NodeModel.available).is_(True),
                _priced(),
            )
            .distinct()
        )
        models: dict[uuid.UUID, set[str]] = {}
        for operator_id, model in offered:
            models.setdefault(operator_id, set()).add(model)
    return [
        Listed(
            provider=Provider(
                id=user_id,
                name=display_name(user_id, chosen),
                description=description,
                joined_at=joined_at,
                rating=None if rating is None else round(float(rating), 2),
                review_count=int(reviews or 0),
                models=tuple(sorted(models.get(user_id, ()))),
            ),
            cursor=encode_cursor(sort, None if sort_key is None else float(sort_key), user_id),
        )
        for user_id, chosen, description, joined_at, rating, reviews, sort_key in rows
    ]
