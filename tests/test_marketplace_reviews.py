"""Reviews: verified by a settled request, edited or removed by their author, answered once."""

from __future__ import annotations

import asyncio
import uuid

from sqlmodel import select
from test_gateway import MESSAGES, MODEL, Market, market, platform_settings, simulator

from infer.accounts.principal import Principal
from infer.audit import ClientInfo
from infer.db import Database
from infer.errors import Conflict
from infer.marketplace import reviews
from infer.models import Review, Role, UsageRecord, User

__all__ = ["market", "platform_settings", "simulator"]  # fixtures shared with test_gateway

CREATE = (
    "mutation($p: ID!, $r: Int!, $c: String) "
    "{ createReview(providerId: $p, rating: $r, comment: $c) { id rating comment verified } }"
)
UPDATE = (
    "mutation($id: ID!, $r: Int, $c: String) "
    "{ updateReview(id: $id, rating: $r, comment: $c) { id rating comment } }"
)
DELETE = "mutation($id: ID!) { deleteReview(id: $id) }"
REPLY = "mutation($id: ID!, $t: String!) { replyToReview(id: $id, reply: $t) { reply repliedAt } }"
PAGE = (
    "query($id: ID!) { provider(id: $id) { rating reviewCount "
    "ratingDistribution { stars count } reviews(first: 5) { nodes { rating reply verified } } } }"
)


async def _gql(market: Market, query: str, key: str | None, **variables: object) -> dict:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await market.http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    body: dict = response.json()  # type: ignore[type-arg]
    return body


def _code(body: dict) -> str:  # type: ignore[type-arg]
    return str(body["errors"][0]["extensions"]["code"])


async def _user_id(db: Database, email: str) -> uuid.UUID:
    async with db.session() as session:
        return (await session.exec(select(User.id).where(User.email == email))).one()


async def _buy_once(market: Market) -> None:
    response = await market.http.post(
        "/api/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 8},
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )
    assert response.status_code == 200, response.text
    await market.settled()


async def _review_count(db: Database) -> int:
    async with db.session() as session:
        return len((await session.exec(select(Review))).all())


async def test_a_settled_request_entitles_one_verified_review(
    market: Market, simulator: str
) -> None:
    await market.add_node(simulator, "n1")
    provider = str(await _user_id(market.db, "operator@example.com"))
    early = await _gql(market, CREATE, market.buyer_key, p=provider, r=5)
    assert _code(early) == "FORBIDDEN"
    await _buy_once(market)
    [usage] = await market.usage()

    made = await _gql(market, CREATE, market.buyer_key, p=provider, r=4, c=" quick ")
    assert made["data"]["createReview"]["verified"] is True
    assert made["data"]["createReview"]["comment"] == "quick"
    async with market.db.session() as session:
        [row] = (await session.exec(select(Review))).all()
    assert row.request_id == usage.request_id
    again = await _gql(market, CREATE, market.buyer_key, p=provider, r=5)
    assert _code(again) == "CONFLICT"
    own = await _gql(market, CREATE, market.operator_key, p=provider, r=5)
    assert _code(own) == "FORBIDDEN"
    anonymous = await _gql(market, CREATE, None, p=provider, r=5)
    assert _code(anonymous) == "UNAUTHENTICATED"
    assert await _review_count(market.db) == 1


async def test_bad_review_input_is_refused_and_nothing_is_written(
    market: Market, simulator: str
) -> None:
    await market.add_node(simulator, "n1")
    provider = str(await _user_id(market.db, "operator@example.com"))
    await _buy_once(market)
    cases = [
        ({"p": provider, "r": 0}, "BAD_USER_INPUT"),
        ({"p": provider, "r": 6}, "BAD_USER_INPUT"),
        ({"p": provider, "r": 3, "c": "x" * 2001}, "BAD_USER_INPUT"),
        ({"p": provider, "r": 3, "c": "bad\x00byte"}, "BAD_USER_INPUT"),
        ({"p": provider, "r": 3, "c": "right\u202eleft"}, "BAD_USER_INPUT"),
        ({"p": str(uuid.uuid4()), "r": 3}, "NOT_FOUND"),
        ({"p": "not-an-id", "r": 3}, "NOT_FOUND"),
    ]
    for variables, code in cases:
        assert _code(await _gql(market, CREATE, market.buyer_key, **variables)) == code, variables
    assert await _review_count(market.db) == 0


async def test_authors_edit_and_delete_their_own_and_providers_reply_once(
    market: Market, simulator: str
) -> None:
    await market.add_node(simulator, "n1")
    provider = str(await _user_id(market.db, "operator@example.com"))
    await _buy_once(market)
    made = await _gql(market, CREATE, market.buyer_key, p=provider, r=2, c="slow")
    review_id = made["data"]["createReview"]["id"]

    edited = await _gql(market, UPDATE, market.buyer_key, id=review_id, r=5)
    assert edited["data"]["updateReview"] == {"id": review_id, "rating": 5, "comment": "slow"}
    cleared = await _gql(market, UPDATE, market.buyer_key, id=review_id, c="")
    assert cleared["data"]["updateReview"]["comment"] is None
    assert _code(await _gql(market, UPDATE, market.operator_key, id=review_id, r=1)) == "FORBIDDEN"
    assert (
        _code(await _gql(market, UPDATE, market.buyer_key, id=review_id, r=9)) == "BAD_USER_INPUT"
    )
    assert _code(await _gql(market, UPDATE, market.buyer_key, id=str(uuid.uuid4()))) == "NOT_FOUND"

    assert _code(await _gql(market, REPLY, market.buyer_key, id=review_id, t="me")) == "FORBIDDEN"
    assert _code(await _gql(market, REPLY, market.operator_key, id=review_id, t="\x07")) == (
        "BAD_USER_INPUT"
    )
    replied = await _gql(market, REPLY, market.operator_key, id=review_id, t="Thank you")
    assert replied["data"]["replyToReview"]["reply"] == "Thank you"
    second = await _gql(market, REPLY, market.operator_key, id=review_id, t="Again")
    assert _code(second) == "CONFLICT"

    page = (await _gql(market, PAGE, None, id=provider))["data"]["provider"]
    assert (page["rating"], page["reviewCount"]) == (5.0, 1)
    assert page["reviews"]["nodes"] == [{"rating": 5, "reply": "Thank you", "verified": True}]
    assert [c["count"] for c in page["ratingDistribution"]] == [0, 0, 0, 0, 1]

    assert _code(await _gql(market, DELETE, market.operator_key, id=review_id)) == "FORBIDDEN"
    assert (await _gql(market, DELETE, market.buyer_key, id=review_id))["data"]["deleteReview"]
    assert _code(await _gql(market, DELETE, market.buyer_key, id=review_id)) == "NOT_FOUND"
    assert await _review_count(market.db) == 0


async def test_twenty_concurrent_reviews_average_exactly(db: Database) -> None:
    provider = User(email="farm@example.com")
    buyers = [User(email=f"b{i}@example.com") for i in range(20)]
    async with db.transaction() as session:
        session.add_all([provider, *buyers])
    async with db.transaction() as session:
        for buyer in buyers:
            session.add(
                UsageRecord(
                    request_id=uuid.uuid4().hex,
                    buyer_id=buyer.id,
                    operator_id=provider.id,
                    model=MODEL,
                    status="completed",
                )
            )
    ratings = [1 + i % 5 for i in range(20)]
    await asyncio.gather(
        *(
            reviews.create_review(
                db,
                principal=Principal(user_id=buyer.id, role=Role.USER),
                provider_id=provider.id,
                rating=rating,
                comment=None,
                client=ClientInfo.cli(),
            )
            for buyer, rating in zip(buyers, ratings, strict=True)
        )
    )
    async with db.session() as session:
        assert len((await session.exec(select(Review))).all()) == 20
        counts = (await reviews.rating_figures(session, [provider.id]))[provider.id]
    assert reviews.average(counts) == sum(ratings) / 20


async def test_review_writes_are_rate_limited_per_user(market: Market) -> None:
    codes = [
        _code(body) if "errors" in body else "OK"
        for body in [
            await _gql(market, UPDATE, market.buyer_key, id=str(uuid.uuid4()), r=3)
            for _ in range(11)
        ]
    ]
    assert codes == ["NOT_FOUND"] * 10 + ["RATE_LIMITED"]


async def test_racing_reviews_of_one_buyer_leave_one(db: Database) -> None:
    provider, buyer = User(email="farm@example.com"), User(email="buyer@example.com")
    async with db.transaction() as session:
        session.add_all([provider, buyer])
    async with db.transaction() as session:
        session.add(
            UsageRecord(
                request_id=uuid.uuid4().hex,
                buyer_id=buyer.id,
                operator_id=provider.id,
                model=MODEL,
                status="completed",
            )
        )
    principal = Principal(user_id=buyer.id, role=Role.USER)
    outcomes = await asyncio.gather(
        *(
            reviews.create_review(
                db,
                principal=principal,
                provider_id=provider.id,
                rating=rating,
                comment=None,
                client=ClientInfo.cli(),
            )
            for rating in (1, 2, 3, 4, 5)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(o, Review) for o in outcomes) == 1
    assert all(isinstance(o, Review | Conflict) for o in outcomes), outcomes
    assert await _review_count(db) == 1
