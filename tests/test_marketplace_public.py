"""The storefront without signing in: providers, a provider's page, and its address limit."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

from conftest import CREATE_KEY, PASSWORD, SIGN_UP, GraphQLClient, http_client, started
from sqlmodel import select

from infer.config import Settings
from infer.db import Database
from infer.marketplace import reviews
from infer.models import Review, UsageRecord, User
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"
PROFILE = "mutation($d: String) { updateProviderProfile(description: $d) { id } }"
PAGE = """query($id: ID!, $first: Int!, $after: String) { provider(id: $id) {
  id name description joinedAt rating reviewCount models
  nodes { name gpuClass gpuMemoryMib models status }
  ratingDistribution { stars count }
  reviews(first: $first, after: $after) { nodes { rating comment verified } endCursor } } }"""
PRICES = [{"model": "llama3.2:1b", "inputPerMillion": "0.1", "outputPerMillion": "0.2"}]
GPU = {"vendor": "nvidia", "devices": [{"name": "RTX 4090", "memory_bytes": 25_757_220_864}]}


async def _user(graphql: GraphQLClient, email: str) -> str:
    await graphql("mutation { logOut }", expect_errors=True)
    await graphql(SIGN_UP, {"e": email, "p": PASSWORD})
    body = await graphql(CREATE_KEY, {"n": "k"})
    await graphql("mutation { logOut }", expect_errors=True)
    return str(body["data"]["createApiKey"]["secret"])  # type: ignore[index]


def _cursor(stamp: str) -> str:
    return base64.urlsafe_b64encode(f"{stamp}|{uuid.uuid4()}".encode()).decode()


def _code(body: dict[str, object]) -> str:
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


async def _operator_with_node(graphql: GraphQLClient, db: Database, url: str) -> tuple[str, str]:
    key = await _user(graphql, "farm@example.com")
    node = {"name": "n1", "runtime": "OLLAMA", "endpoint": url, "prices": PRICES, "gpu": GPU}
    await graphql(REGISTER, {"input": node}, key=key)
    async with db.session() as session:
        user_id = (
            await session.exec(select(User.id).where(User.email == "farm@example.com"))
        ).one()
    return key, str(user_id)


async def test_anyone_sees_a_providers_page_without_private_details(
    graphql: GraphQLClient, db: Database
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b",))) as url:
        key, provider = await _operator_with_node(graphql, db, url)
        await graphql(PROFILE, {"d": "  Two 4090s in Lyon.\nSolar powered. "}, key=key)
        [listed] = (await graphql("{ providers { id name rating reviewCount models } }"))["data"][
            "providers"
        ]  # type: ignore[index]
        assert listed["id"] == provider
        body = await graphql(PAGE, {"id": provider, "first": 10})
    page = body["data"]["provider"]  # type: ignore[index]
    assert page["description"] == "Two 4090s in Lyon.\nSolar powered."
    assert page["joinedAt"]
    assert page["models"] == ["llama3.2:1b"]
    assert page["nodes"] == [
        {
            "name": "n1",
            "gpuClass": "RTX 4090",
            "gpuMemoryMib": 24564,
            "models": ["llama3.2:1b"],
            "status": "ONLINE",
        }
    ]
    assert (page["rating"], page["reviewCount"]) == (None, 0)
    assert [c["count"] for c in page["ratingDistribution"]] == [0] * 5
    assert page["reviews"] == {"nodes": [], "endCursor": None}
    for private in ("@", url, "127.0.0.1"):
        assert private not in str(body)


async def test_reviews_page_newest_first_with_the_distribution(
    graphql: GraphQLClient, db: Database
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b",))) as url:
        _, provider = await _operator_with_node(graphql, db, url)
    async with db.transaction() as session:
        for i, rating in enumerate([5, 4, 4, 1, 5]):
            buyer = User(email=f"b{i}@example.com")
            session.add(buyer)
            await session.flush()
            session.add(
                UsageRecord(
                    request_id=uuid.uuid4().hex,
                    buyer_id=buyer.id,
                    operator_id=uuid.UUID(provider),
                    model="llama3.2:1b",
                    status="completed",
                )
            )
            session.add(
                Review(
                    provider_id=uuid.UUID(provider),
                    reviewer_id=buyer.id,
                    rating=rating,
                    comment=f"review {i}",
                    request_id="r",
                    created_at=datetime(2026, 1, 1 + i, tzinfo=UTC),
                )
            )
    first = (await graphql(PAGE, {"id": provider, "first": 2}))["data"]["provider"]  # type: ignore[index]
    assert [r["comment"] for r in first["reviews"]["nodes"]] == ["review 4", "review 3"]
    assert (first["rating"], first["reviewCount"]) == (3.8, 5)
    assert [c["count"] for c in first["ratingDistribution"]] == [1, 0, 0, 2, 2]
    listed = await graphql("{ providers { reviews(first: 2) { nodes { comment } endCursor } } }")
    [in_list] = [p["reviews"] for p in listed["data"]["providers"]]  # type: ignore[index]
    assert in_list["nodes"] == [{"comment": "review 4"}, {"comment": "review 3"}]
    assert in_list["endCursor"] == first["reviews"]["endCursor"]
    variables = {"id": provider, "first": 2, "after": first["reviews"]["endCursor"]}
    second = (await graphql(PAGE, variables))["data"]["provider"]["reviews"]  # type: ignore[index]
    assert [r["comment"] for r in second["nodes"]] == ["review 2", "review 1"]
    variables["after"] = second["endCursor"]
    last = (await graphql(PAGE, variables))["data"]["provider"]["reviews"]  # type: ignore[index]
    assert [r["comment"] for r in last["nodes"]] == ["review 0"]
    assert last["endCursor"] is None


async def test_bad_page_arguments_and_unknown_providers_are_clear_errors(
    graphql: GraphQLClient, db: Database
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b",))) as url:
        _, provider = await _operator_with_node(graphql, db, url)
    buyer = await _user(graphql, "buyer@example.com")
    async with db.session() as session:
        buyer_id = (
            await session.exec(select(User.id).where(User.email == "buyer@example.com"))
        ).one()
    cases = [
        ({"id": str(uuid.uuid4()), "first": 5}, "NOT_FOUND"),
        ({"id": "nope", "first": 5}, "NOT_FOUND"),
        ({"id": str(buyer_id), "first": 5}, "NOT_FOUND"),  # a user without nodes
        ({"id": provider, "first": 0}, "BAD_USER_INPUT"),
        ({"id": provider, "first": 51}, "BAD_USER_INPUT"),
        ({"id": provider, "first": 5, "after": "%%%"}, "BAD_USER_INPUT"),
        ({"id": provider, "first": 5, "after": "bm90IGEgY3Vyc29y"}, "BAD_USER_INPUT"),
        ({"id": provider, "first": 5, "after": _cursor("2026-01-01T00:00:00")}, "BAD_USER_INPUT"),
        (
            {"id": provider, "first": 5, "after": _cursor("0001-01-01T00:00:00+05:00")},
            ("BAD_USER_INPUT"),
        ),
    ]
    for variables, code in cases:
        assert _code(await graphql(PAGE, variables, expect_errors=True)) == code, variables
    assert buyer


async def test_a_profile_description_is_capped_checked_text(
    graphql: GraphQLClient, db: Database
) -> None:
    key = await _user(graphql, "farm@example.com")
    for bad in ("x" * 501, "hidden\u200bjoiner", "bell\x07"):
        body = await graphql(PROFILE, {"d": bad}, key=key, expect_errors=True)
        assert _code(body) == "BAD_USER_INPUT"
    assert _code(await graphql(PROFILE, {"d": "hi"}, expect_errors=True)) == "UNAUTHENTICATED"
    await graphql(PROFILE, {"d": "x" * 500}, key=key)
    await graphql(PROFILE, {"d": None}, key=key)
    async with db.session() as session:
        user = (await session.exec(select(User).where(User.email == "farm@example.com"))).one()
    assert user.description is None


async def test_storefront_reads_are_limited_per_client_address(settings: Settings) -> None:
    limited = settings.model_copy(update={"market_limit_address": "3/minute"})
    async with started(limited) as (app, _), http_client(app) as http:
        graphql = GraphQLClient(http)
        for _ in range(3):
            await graphql("{ providers { id } }")
        refused = await graphql("{ providers { id } }", expect_errors=True)
        assert _code(refused) == "RATE_LIMITED"
        again = await graphql(PAGE, {"id": str(uuid.uuid4()), "first": 1}, expect_errors=True)
        assert _code(again) == "RATE_LIMITED"


async def test_first_pages_of_many_providers_match_their_own_pages(db: Database) -> None:
    providers = [User(email=f"p{i}@example.com") for i in range(3)]
    buyers = [User(email=f"b{i}@example.com") for i in range(4)]
    async with db.transaction() as session:
        session.add_all([*providers, *buyers])
    async with db.transaction() as session:
        for i, provider in enumerate(providers):
            for j, buyer in enumerate(buyers[: i + 1]):
                stamp = datetime(2026, 1, 1 + j, tzinfo=UTC)
                session.add(
                    Review(
                        provider_id=provider.id,
                        reviewer_id=buyer.id,
                        rating=1 + j,
                        created_at=stamp,
                        updated_at=stamp,
                    )
                )
    ids = [p.id for p in providers]
    async with db.session() as session:
        pages = await reviews.first_pages(session, provider_ids=ids, first=2)
        for provider_id in ids:
            alone = await reviews.page_of_reviews(
                session, provider_id=provider_id, first=2, after=None
            )
            assert [r.id for r in pages[provider_id].reviews] == [r.id for r in alone.reviews]
            assert pages[provider_id].end_cursor == alone.end_cursor
    assert [len(pages[pid].reviews) for pid in ids] == [1, 2, 2]
    assert [pages[pid].end_cursor is None for pid in ids] == [True, True, False]
