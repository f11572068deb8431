"""The model catalogue: every model on sale, its offers (one per provider) and details."""

from __future__ import annotations

import base64
import binascii
import enum
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.accounts.profile import display_name
from infer.db import Database
from infer.errors import BadInput, NotFound
from infer.marketplace.figures import ALL_MODELS
from infer.models import MarketFigures, Node, NodeModel, NodeStatus, User
from infer.nodes.clients.details import CAPABILITIES
from infer.security.text import check_name, is_model_name

MAX_PAGE = 100
MAX_SEARCH = 100
MAX_CONTEXT_LENGTH = 100_000_000


class ModelSort(enum.StrEnum):
    NAME = "name"  # A to Z
    PRICE = "price"  # cheapest offer (input plus output per million) first
    POPULARITY = "popularity"  # most requests served in the last 24 h first
    CONTEXT_LENGTH = "context_length"  # longest context first, unknown last


@dataclass(frozen=True)
class ModelFilter:
    search: str | None = None  # in the name, any letter case
    capability: str | None = None
    family: str | None = None
    max_price: int | None = None  # micro-USD, input plus output of its cheapest offer
    min_context_length: int | None = None


@dataclass(frozen=True)
class Offer:
    """One provider's offer of a model: the lowest prices of its online nodes for it."""

    provider_id: uuid.UUID
    input_per_million: int
    output_per_million: int
    ttft_ms_p50: float | None = None  # 24 h, for the order of offers only
    tokens_per_second_p50: float | None = None

    @property
    def price(self) -> int:
        return self.input_per_million + self.output_per_million


@dataclass(frozen=True)
class CatalogueModel:
    name: str
    offers: tuple[Offer, ...]  # cheapest first, then fastest
    node_count: int
    requests_served: int  # last 24 h, all providers
    context_length: int | None
    parameter_size: str | None
    quantization: str | None
    family: str | None
    capabilities: tuple[str, ...]
    cursor: str = ""

    @property
    def lowest_price(self) -> int:
        return self.offers[0].price


_SORT_KEYS: dict[ModelSort, Callable[[CatalogueModel], list[object]]] = {
    ModelSort.NAME: lambda m: [m.name],
    ModelSort.PRICE: lambda m: [m.lowest_price, m.name],
    ModelSort.POPULARITY: lambda m: [-m.requests_served, m.name],
    ModelSort.CONTEXT_LENGTH: lambda m: [-(m.context_length or 0), m.name],
}


def check_filter(given: ModelFilter) -> ModelFilter:
    """The filter cleaned (search and family case-folded), or BAD_USER_INPUT naming its part."""
    search = family = None
    if given.search is not None:
        search = check_name(
            given.search, param="filter.search", what="a search", max_length=MAX_SEARCH
        ).casefold()
    if given.family is not None:
        family = check_name(
            given.family, param="filter.family", what="a family", max_length=64
        ).casefold()
    if given.capability is not None and given.capability not in CAPABILITIES:
        raise BadInput(f"capability is one of {', '.join(CAPABILITIES)}", param="filter.capability")
    if given.max_price is not None and given.max_price < 0:
        raise BadInput("maxPrice is not negative", param="filter.maxPrice")
    if given.min_context_length is not None and not (
        0 <= given.min_context_length <= MAX_CONTEXT_LENGTH
    ):
        raise BadInput(
            f"minContextLength is 0 to {MAX_CONTEXT_LENGTH}", param="filter.minContextLength"
        )
    return ModelFilter(
        search=search,
        capability=given.capability,
        family=family,
        max_price=given.max_price,
        min_context_length=given.min_context_length,
    )


def encode_cursor(sort: ModelSort, model: CatalogueModel) -> str:
    raw = json.dumps({"s": sort.value, "k": _SORT_KEYS[sort](model)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(sort: ModelSort, cursor: str) -> list[object]:
    """The sort key a cursor holds; BAD_USER_INPUT unless this list, in this order, gave it."""
    bad = BadInput("after is not a cursor this list gave", param="after")
    try:
        document = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise bad from exc
    if not isinstance(document, dict) or document.get("s") != sort.value:
        raise bad
    key = document.get("k")
    shape = [
        int if sort in (ModelSort.PRICE, ModelSort.POPULARITY, ModelSort.CONTEXT_LENGTH) else str
    ]
    shape += [str] if sort != ModelSort.NAME else []
    if (
        not isinstance(key, list)
        or len(key) != len(shape)
        or any(type(part) is not kind for part, kind in zip(key, shape, strict=True))
    ):
        raise bad
    return key


async def list_models(
    db: Database,
    *,
    filter: ModelFilter | None = None,
    sort: ModelSort = ModelSort.NAME,
    first: int = MAX_PAGE,
    after: str | None = None,
) -> list[CatalogueModel]:
    """A page of the models on sale; each carries the cursor of the page after it."""
    if not 1 <= first <= MAX_PAGE:
        raise BadInput(f"first is 1 to {MAX_PAGE}", param="first")
    wanted = check_filter(filter or ModelFilter())
    start = None if after is None else decode_cursor(sort, after)
    models = [m for m in await catalogue(db) if _matches(m, wanted)]
    key = _SORT_KEYS[sort]
    models.sort(key=key)  # keys of one sort have like-typed parts
    if start is not None:
        models = [m for m in models if key(m) > start]
    return [_with_cursor(m, encode_cursor(sort, m)) for m in models[:first]]


async def find_model(db: Database, *, name: str) -> CatalogueModel:
    """One model on sale; NOT_FOUND for any other name (one outside the rule never reaches SQL)."""
    if is_model_name(name):
        for model in await catalogue(db, names=(name,)):
            return model
    raise NotFound("no such model on sale", param="name")


async def catalogue(db: Database, *, names: Sequence[str] | None = None) -> list[CatalogueModel]:
    """Every model on sale now (a priced model an online node offers), or those named.

    Two queries: the offered rows of online nodes, and the 24 h figures of each provider
    and model (for popularity and the order of offers).
    """
    offered = _on_sale()
    figures = select(MarketFigures).where(
        MarketFigures.period == "24h", MarketFigures.model != ALL_MODELS
    )
    if names is not None:
        offered = offered.where(col(NodeModel.model).in_(names))
        figures = figures.where(col(MarketFigures.model).in_(names))
    async with db.session() as session:
        rows = (await session.exec(offered)).all()
        measured = {(f.operator_id, f.model): f for f in (await session.exec(figures)).all()}
    grouped: dict[str, list[tuple[NodeModel, uuid.UUID]]] = {}
    for row, operator_id in rows:
        grouped.setdefault(row.model, []).append((row, operator_id))
    return [_model(name, found, measured) for name, found in sorted(grouped.items())]


def _model(
    name: str,
    rows: list[tuple[NodeModel, uuid.UUID]],
    measured: dict[tuple[uuid.UUID, str], MarketFigures],
) -> CatalogueModel:
    cheapest: dict[uuid.UUID, NodeModel] = {}
    for row, operator_id in rows:
        best = cheapest.get(operator_id)
        price = row.input_price_per_million + row.output_price_per_million
        if best is None or price < best.input_price_per_million + best.output_price_per_million:
            cheapest[operator_id] = row
    offers = []
    for operator_id, row in cheapest.items():
        figures = measured.get((operator_id, name))
        offers.append(
            Offer(
                provider_id=operator_id,
                input_per_million=row.input_price_per_million,
                output_per_million=row.output_price_per_million,
                ttft_ms_p50=figures.ttft_ms_p50 if figures else None,
                tokens_per_second_p50=figures.tokens_per_second_p50 if figures else None,
            )
        )
    offers.sort(key=_offer_order)
    described = [row for row, _ in rows]
    return CatalogueModel(
        name=name,
        offers=tuple(offers),
        node_count=len({row.node_id for row in described}),
        requests_served=sum(
            measured[(o.provider_id, name)].requests
            for o in offers
            if (o.provider_id, name) in measured
        ),
        # What an operator declared wins over what the runtime said (routing/capabilities.py).
        context_length=max(
            (r.declared_context_length or r.context_length or 0 for r in described), default=0
        )
        or None,
        parameter_size=_most_common(r.parameter_size for r in described),
        quantization=_most_common(r.quantization for r in described),
        family=_most_common(r.family for r in described),
        capabilities=tuple(
            c for c in CAPABILITIES if any(c in _capabilities(r).split(",") for r in described)
        ),
    )


def _capabilities(row: NodeModel) -> str:
    declared = row.declared_capabilities
    return (row.capabilities if declared is None else declared) or ""


def _on_sale() -> Any:
    """The offered rows of online nodes (a priced model an online node offers), with the
    operator of each."""
    return (
        select(NodeModel, Node.operator_id)
        .join(Node, col(NodeModel.node_id) == col(Node.id))
        .where(
            Node.status == NodeStatus.ONLINE,
            col(Node.paused).is_(False),
            col(NodeModel.available).is_(True),
            (col(NodeModel.input_price_per_million) + col(NodeModel.output_price_per_million)) > 0,
        )
    )


@dataclass(frozen=True)
class ProviderOffer:
    """One model a provider sells now, at the lowest prices of its online nodes."""

    model: str
    input_per_million: int
    output_per_million: int


async def offers_of_providers(
    session: AsyncSession, provider_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[ProviderOffer]]:
    """What each provider sells now, model by model, cheapest node's prices (one query)."""
    rows = await session.exec(_on_sale().where(col(Node.operator_id).in_(provider_ids)))
    cheapest: dict[tuple[uuid.UUID, str], NodeModel] = {}
    for row, operator_id in rows:
        best = cheapest.get((operator_id, row.model))
        price = row.input_price_per_million + row.output_price_per_million
        if best is None or price < best.input_price_per_million + best.output_price_per_million:
            cheapest[(operator_id, row.model)] = row
    found: dict[uuid.UUID, list[ProviderOffer]] = {p: [] for p in provider_ids}
    for (operator_id, model), row in sorted(cheapest.items(), key=lambda item: item[0][1]):
        found[operator_id].append(
            ProviderOffer(model, row.input_price_per_million, row.output_price_per_million)
        )
    return found


async def provider_names(session: AsyncSession, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The names buyers see of these users (one query); a missing user is a default name."""
    found = await session.exec(select(User.id, User.display_name).where(col(User.id).in_(user_ids)))
    chosen = dict(found.all())
    return {user_id: display_name(user_id, chosen.get(user_id)) for user_id in user_ids}


def _offer_order(offer: Offer) -> tuple[int, float, float, str]:
    """Cheapest first; at one price, the lowest time to first token, then the most tokens/s."""
    ttft = offer.ttft_ms_p50 if offer.ttft_ms_p50 is not None else float("inf")
    speed = -(offer.tokens_per_second_p50 or 0.0)
    return (offer.price, ttft, speed, str(offer.provider_id))


def _most_common(values: Iterable[str | None]) -> str | None:
    counts: dict[str, int] = {}
    for value in values:
        if value:
            counts[value] = counts.get(value, 0) + 1
    return max(sorted(counts), key=lambda v: counts[v]) if counts else None


def _matches(model: CatalogueModel, wanted: ModelFilter) -> bool:
    return (
        (wanted.search is None or wanted.search in model.name.casefold())
        and (wanted.capability is None or wanted.capability in model.capabilities)
        and (wanted.family is None or (model.family or "").casefold() == wanted.family)
        and (wanted.max_price is None or model.lowest_price <= wanted.max_price)
        and (
            wanted.min_context_length is None
            or (model.context_length or 0) >= wanted.min_context_length
        )
    )


def _with_cursor(model: CatalogueModel, cursor: str) -> CatalogueModel:
    return replace(model, cursor=cursor)
