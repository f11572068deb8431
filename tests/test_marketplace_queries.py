"""A page of providers costs the same few SQL statements whatever its size; absurd pages
and filters are BAD_USER_INPUT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import GraphQLClient, http_client, started
from sqlmodel import select

from infer.config import Settings
from infer.db import Database
from infer.marketplace.figures import LEASE_NAME, take_lease
from infer.models import (
    MarketFigures,
    Node,
    NodeModel,
    NodeStatus,
    Review,
    Runtime,
    User,
    utcnow,
)
from infer.resources import Resources

PAGE = """query($first: Int!) { providers(sort: LATENCY, first: $first) {
  id name rating reviewCount models description joinedAt cursor
  nodes { name gpuClass gpuMemoryMib models status }
  stats { ttftMsP50 tokensPerSecondP50 uptime24h successRate requestsServed }
  offers { model inputPerMillion outputPerMillion stats { ttftMsP50 } }
  ratingDistribution { stars count }
  reviews(first: 3) { nodes { rating comment verified reply } endCursor } } }"""
PROVIDERS = 60


@pytest.fixture
async def quiet(settings: Settings) -> AsyncIterator[tuple[GraphQLClient, Resources]]:
    """The app without its periodic sweeps in the way of counting: hour-long intervals, and
    the figures' lease held by the test, so that the rows it writes stay as written."""
    calm = settings.model_copy(update={"health_interval": 3600.0, "figures_interval": 3600.0})
    db = Database.from_url(settings.database_url)
    assert await take_lease(db, name=LEASE_NAME, holder="tests", ttl=timedelta(hours=1))
    await db.dispose()
    async with started(calm) as (app, resources), http_client(app) as http:
        yield GraphQLClient(http), resources


async def _fill(db: Database) -> None:
    """PROVIDERS providers, each with two nodes of two models, figures and four reviews."""
    async with db.session() as session:
        buyers = [User(email=f"buyer{i}@example.com") for i in range(4)]
        session.add_all(buyers)
        for i in range(PROVIDERS):
            user = User(email=f"op{i}@example.com", description=f"farm {i}")
            session.add(user)
            await session.flush()
            for n in range(2):
                node = Node(
                    operator_id=user.id,
                    name=f"n{n}",
                    runtime=Runtime.OLLAMA,
                    endpoint=f"http://127.0.0.1:{9000 + n}",
                    status=NodeStatus.ONLINE,
                    next_check_at=utcnow() + timedelta(hours=1),
                    gpu={"vendor": "nvidia", "memory_bytes": 2**34},
                )
                session.add(node)
                await session.flush()
                for model in ("a:1b", "b:7b"):
                    session.add(
                        NodeModel(
                            node_id=node.id,
                            model=model,
                            available=True,
                            input_price_per_million=1000 + i,
                            output_price_per_million=2000,
                            capabilities="completion,tools" if i % 2 == 0 else "completion",
                        )
                    )
            session.add(
                MarketFigures(operator_id=user.id, period="24h", ttft_ms_p50=100.0 + i, uptime=0.99)
            )
            for b, buyer in enumerate(buyers):
                session.add(Review(provider_id=user.id, reviewer_id=buyer.id, rating=1 + b))
        await session.commit()


@contextmanager
def counted(resources: Resources) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(*args: Any) -> None:
        if args[2].split(None, 1)[0].upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}:
            statements.append(args[2])

    engine = resources.db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


async def test_a_page_of_50_providers_costs_the_statements_of_a_page_of_5(
    quiet: tuple[GraphQLClient, Resources],
) -> None:
    graphql, resources = quiet
    await _fill(resources.db)
    await graphql(PAGE, {"first": 1})  # warm: the startup sweeps are done by now
    await asyncio.sleep(0.2)
    costs = {}
    for first in (5, 50):
        with counted(resources) as statements:
            body = await graphql(PAGE, {"first": first})
        page = body["data"]["providers"]  # type: ignore[index]
        assert len(page) == first
        assert all(len(p["nodes"]) == 2 and len(p["reviews"]["nodes"]) == 3 for p in page)
        assert [p["stats"]["ttftMsP50"] for p in page] == sorted(
            p["stats"]["ttftMsP50"] for p in page
        )
        costs[first] = statements
    assert len(costs[5]) == len(costs[50]), (costs[5], costs[50])
    assert len(costs[50]) <= 9, costs[50]  # one statement per kind of field


ABSURD = [
    ("providers(first: 0)", "first"),
    ("providers(first: 10000)", "first"),
    ('providers(after: "not-a-cursor")', "after"),
    ("providers(filter: {minRating: 9})", "filter.minRating"),
    ("providers(filter: {minRating: -1})", "filter.minRating"),
    ('providers(filter: {maxPrice: "-1"})', None),
    ("providers(sort: CHEAPEST)", None),
    ('providers(filter: {search: "a\\u0000b"})', None),
    ('providers(filter: {search: "a\\u202eb"})', "filter.search"),
    ('providers(filter: {model: "no spaces allowed"})', "filter.model"),
    ('providers(filter: {capability: "tool"})', "filter.capability"),
]


@pytest.mark.parametrize(("field", "param"), ABSURD)
async def test_an_absurd_page_or_filter_is_bad_user_input(
    graphql: GraphQLClient, field: str, param: str | None
) -> None:
    body = await graphql("{ " + field + " { id } }", expect_errors=True)
    [error] = body["errors"]  # type: ignore[index]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    if param is not None:
        assert error["extensions"].get("field") == param, error


async def test_a_cursor_of_another_sort_is_bad_user_input(
    quiet: tuple[GraphQLClient, Resources],
) -> None:
    graphql, resources = quiet
    await _fill(resources.db)
    body = await graphql("{ providers(sort: PRICE, first: 1) { cursor } }")
    cursor = body["data"]["providers"][0]["cursor"]  # type: ignore[index]
    wrong = await graphql(
        "query($a: String) { providers(sort: RATING, after: $a) { id } }",
        {"a": cursor},
        expect_errors=True,
    )
    assert wrong["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"  # type: ignore[index]


async def test_pages_after_cursors_list_every_provider_once_in_order(
    quiet: tuple[GraphQLClient, Resources],
) -> None:
    graphql, resources = quiet
    await _fill(resources.db)
    for sort, field in (("PRICE", None), ("LATENCY", "ttftMsP50"), ("RATING", "rating")):
        seen: list[dict[str, Any]] = []
        after = None
        while True:
            body = await graphql(
                "query($s: ProviderSort!, $a: String) { providers(sort: $s, first: 7, after: $a)"
                " { id cursor rating stats { ttftMsP50 } } }",
                {"s": sort, "a": after},
            )
            page = body["data"]["providers"]  # type: ignore[index]
            if not page:
                break
            seen.extend(page)
            after = page[-1]["cursor"]
        assert len({p["id"] for p in seen}) == len(seen) == PROVIDERS, sort
        if field == "ttftMsP50":
            values = [p["stats"]["ttftMsP50"] for p in seen]
            assert values == sorted(values)


async def test_filters_keep_the_providers_they_name(
    quiet: tuple[GraphQLClient, Resources],
) -> None:
    graphql, resources = quiet
    await _fill(resources.db)
    query = "query($f: ProviderFilter) { providers(filter: $f, sort: PRICE) { id description } }"

    async def listed(**filter: object) -> list[str]:
        body = await graphql(query, {"f": filter})
        return [p["description"] for p in body["data"]["providers"]]  # type: ignore[index]

    assert await listed(search="FARM 1") == ["farm 1"] + [f"farm {i}" for i in range(10, 20)]
    assert await listed(maxPrice="0.003002") == ["farm 0", "farm 1", "farm 2"]
    assert await listed(minRating=3) == []
    assert len(await listed(minRating=2.5, model="b:7b")) == 50
    assert await listed(model="c:1b") == []
    assert await listed(capability="tools", maxPrice="0.003005") == ["farm 0", "farm 2", "farm 4"]
    assert await listed(capability="vision") == []
    async with resources.db.session() as session:
        farm0 = (await session.exec(select(User).where(User.email == "op0@example.com"))).one()
        nodes = (await session.exec(select(Node).where(Node.operator_id == farm0.id))).all()
        for node in nodes:
            node.status = NodeStatus.OFFLINE
            session.add(node)
        await session.commit()
    assert (await listed(maxPrice="0.003002"))[0] == "farm 1"
    assert (await listed(maxPrice="0.003002", onlineOnly=False))[0] == "farm 0"


async def test_the_alias_limit_covers_pages_of_providers_and_of_reviews(
    graphql: GraphQLClient,
) -> None:
    pages = " ".join(f"p{i}: providers(first: 50) {{ id }}" for i in range(31))
    reviews = " ".join(f"r{i}: reviews(first: {i + 1}) {{ endCursor }}" for i in range(31))
    for query in ("{ " + pages + " }", "{ providers { " + reviews + " } }"):
        body = await graphql(query, expect_errors=True)
        assert "aliases" in body["errors"][0]["message"].lower(), body  # type: ignore[index]
