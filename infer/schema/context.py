"""The per-request GraphQL context: resources, the principal, the client, loaders."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from strawberry.dataloader import DataLoader

from infer.accounts.principal import Principal
from infer.audit import ClientInfo
from infer.authentication import client_info
from infer.billing import ledger, reports
from infer.billing.reports import Bucket, Dimension, Figures, Period, Side
from infer.keys.budget_service import budgets_of
from infer.keys.budgets import BudgetState
from infer.keys.service import keys_of_users
from infer.marketplace.catalogue import ProviderOffer, offers_of_providers, provider_names
from infer.marketplace.figures import figures_of
from infer.marketplace.reviews import (
    ReviewPage,
    first_pages,
    page_of_reviews,
    rating_figures,
    reviews_by,
)
from infer.models import ApiKey, HealthCheck, MarketFigures, Node, NodeModel, Review, utcnow
from infer.nodes.registry import models_of_nodes, nodes_of_operators, recent_checks
from infer.nodes.served import Served, served_since, start_of_day
from infer.resources import Resources

FiguresKey = tuple[Side, uuid.UUID, Period]
BucketsKey = tuple[Side, uuid.UUID, Period, Dimension]
ReviewsKey = tuple[uuid.UUID, int, str | None]  # provider, first, after


@dataclass
class Loaders:
    """DataLoaders for this request only: one query per field, however many parents."""

    resources: Resources
    balance: DataLoader[uuid.UUID, int] = field(init=False)
    api_keys: DataLoader[uuid.UUID, list[ApiKey]] = field(init=False)
    key_budgets: DataLoader[uuid.UUID, BudgetState | None] = field(init=False)
    nodes: DataLoader[uuid.UUID, list[Node]] = field(init=False)
    node_models: DataLoader[uuid.UUID, list[NodeModel]] = field(init=False)
    health_checks: DataLoader[tuple[uuid.UUID, int], list[HealthCheck]] = field(init=False)
    usage_figures: DataLoader[FiguresKey, Figures] = field(init=False)
    usage_buckets: DataLoader[BucketsKey, list[Bucket]] = field(init=False)
    market_figures: DataLoader[tuple[uuid.UUID, str], list[MarketFigures]] = field(init=False)
    review_pages: DataLoader[ReviewsKey, ReviewPage] = field(init=False)
    rating_distributions: DataLoader[uuid.UUID, list[int]] = field(init=False)
    display_names: DataLoader[uuid.UUID, str] = field(init=False)
    provider_offers: DataLoader[uuid.UUID, list[ProviderOffer]] = field(init=False)
    own_reviews: DataLoader[tuple[uuid.UUID, uuid.UUID], Review | None] = field(init=False)
    served_today: DataLoader[uuid.UUID, Served] = field(init=False)

    def __post_init__(self) -> None:
        self.balance = DataLoader(load_fn=self._balances)
        self.api_keys = DataLoader(load_fn=self._api_keys)
        self.key_budgets = DataLoader(load_fn=self._key_budgets)
        self.nodes = DataLoader(load_fn=self._nodes)
        self.node_models = DataLoader(load_fn=self._node_models)
        self.health_checks = DataLoader(load_fn=self._health_checks)
        self.usage_figures = DataLoader(load_fn=self._usage_figures)
        self.usage_buckets = DataLoader(load_fn=self._usage_buckets)
        self.market_figures = DataLoader(load_fn=self._market_figures)
        self.review_pages = DataLoader(load_fn=self._review_pages)
        self.rating_distributions = DataLoader(load_fn=self._rating_distributions)
        self.display_names = DataLoader(load_fn=self._display_names)
        self.provider_offers = DataLoader(load_fn=self._provider_offers)
        self.own_reviews = DataLoader(load_fn=self._own_reviews)
        self.served_today = DataLoader(load_fn=self._served_today)

    async def _balances(self, user_ids: list[uuid.UUID]) -> list[int]:
        async with self.resources.db.session() as session:
            found = await ledger.balances(session, user_ids=user_ids)
        return [found.get(user_id, 0) for user_id in user_ids]

    async def _api_keys(self, user_ids: list[uuid.UUID]) -> list[list[ApiKey]]:
        async with self.resources.db.session() as session:
            grouped = await keys_of_users(session, user_ids)
        return [grouped[user_id] for user_id in user_ids]

    async def _key_budgets(self, key_ids: list[uuid.UUID]) -> list[BudgetState | None]:
        async with self.resources.db.session() as session:
            return await budgets_of(session, key_ids)

    async def _nodes(self, operator_ids: list[uuid.UUID]) -> list[list[Node]]:
        async with self.resources.db.session() as session:
            grouped = await nodes_of_operators(session, operator_ids)
        return [grouped[operator_id] for operator_id in operator_ids]

    async def _health_checks(self, keys: list[tuple[uuid.UUID, int]]) -> list[list[HealthCheck]]:
        last = max(count for _, count in keys)
        async with self.resources.db.session() as session:
            grouped = await recent_checks(session, [node_id for node_id, _ in keys], last=last)
        return [grouped[node_id][:count] for node_id, count in keys]

    async def _node_models(self, node_ids: list[uuid.UUID]) -> list[list[NodeModel]]:
        async with self.resources.db.session() as session:
            grouped = await models_of_nodes(session, node_ids)
        return [grouped[node_id] for node_id in node_ids]

    async def _served_today(self, node_ids: list[uuid.UUID]) -> list[Served]:
        async with self.resources.db.session() as session:
            found = await served_since(session, node_ids, start_of_day(utcnow()))
        return [found[node_id] for node_id in node_ids]

    async def _usage_figures(self, keys: list[FiguresKey]) -> list[Figures]:
        # One query per (side, period) asked for, however many users share it.
        users: dict[tuple[Side, Period], list[uuid.UUID]] = {}
        for side, user_id, period in keys:
            users.setdefault((side, period), []).append(user_id)
        found: dict[FiguresKey, Figures] = {}
        async with self.resources.db.session() as session:
            for (side, period), user_ids in users.items():
                figures = await reports.usage_figures(
                    session, side=side, user_ids=user_ids, period=period
                )
                found.update(((side, u, period), f) for u, f in figures.items())
        return [found[key] for key in keys]

    async def _market_figures(self, keys: list[tuple[uuid.UUID, str]]) -> list[list[MarketFigures]]:
        async with self.resources.db.session() as session:
            found = await figures_of(session, keys)
        return [found[key] for key in keys]

    async def _usage_buckets(self, keys: list[BucketsKey]) -> list[list[Bucket]]:
        users: dict[tuple[Side, Period, Dimension], list[uuid.UUID]] = {}
        for side, user_id, period, by in keys:
            users.setdefault((side, period, by), []).append(user_id)
        found: dict[BucketsKey, list[Bucket]] = {}
        async with self.resources.db.session() as session:
            for (side, period, by), user_ids in users.items():
                buckets = await reports.usage_buckets(
                    session, side=side, user_ids=user_ids, period=period, by=by
                )
                found.update(((side, u, period, by), b) for u, b in buckets.items())
        return [found[key] for key in keys]

    async def _review_pages(self, keys: list[ReviewsKey]) -> list[ReviewPage]:
        # First pages: one query per page size for all providers; a later page (a cursor,
        # one provider's page at a time in practice) is one query each.
        sizes: dict[int, list[uuid.UUID]] = {}
        for pid, first, after in keys:
            if after is None:
                sizes.setdefault(first, []).append(pid)
        found: dict[ReviewsKey, ReviewPage] = {}
        async with self.resources.db.session() as session:
            for first, pids in sizes.items():
                pages = await first_pages(session, provider_ids=pids, first=first)
                found.update(((pid, first, None), page) for pid, page in pages.items())
            for key in keys:
                if key not in found:
                    pid, first, after = key
                    found[key] = await page_of_reviews(
                        session, provider_id=pid, first=first, after=after
                    )
        return [found[key] for key in keys]

    async def _display_names(self, user_ids: list[uuid.UUID]) -> list[str]:
        async with self.resources.db.session() as session:
            found = await provider_names(session, user_ids)
        return [found[user_id] for user_id in user_ids]

    async def _provider_offers(self, provider_ids: list[uuid.UUID]) -> list[list[ProviderOffer]]:
        async with self.resources.db.session() as session:
            found = await offers_of_providers(session, provider_ids)
        return [found[provider_id] for provider_id in provider_ids]

    async def _rating_distributions(self, provider_ids: list[uuid.UUID]) -> list[list[int]]:
        async with self.resources.db.session() as session:
            found = await rating_figures(session, provider_ids)
        return [found[pid] for pid in provider_ids]

    async def _own_reviews(
        self, keys: list[tuple[uuid.UUID, uuid.UUID]]
    ) -> list[Review | None]:  # (reviewer, provider)
        async with self.resources.db.session() as session:
            found = await reviews_by(session, keys=keys)
        return [found.get(key) for key in keys]


@dataclass
class Context:
    request: Request
    response: Response
    resources: Resources
    principal: Principal | None
    client: ClientInfo
    loaders: Loaders
    extra: dict[str, Any] = field(default_factory=dict)


async def request_context(
    request: Request, response: Response, *, principal: Principal | None
) -> Context:
    """The context of one operation, for the GraphQL endpoint and the dashboard alike."""
    resources: Resources = request.state.resources
    # Read your own completions: balances and usage include what this process answered.
    await resources.completions.settled()
    return Context(
        request=request,
        response=response,
        resources=resources,
        principal=principal,
        client=client_info(request),
        loaders=Loaders(resources),
    )
