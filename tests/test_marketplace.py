"""The provider directory and reviews through GraphQL."""

from __future__ import annotations

import uuid

from conftest import CREATE_KEY, PASSWORD, SIGN_UP, GraphQLClient
from sqlmodel import select

from infer.db import Database
from infer.models import UsageRecord, User
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

PROVIDERS = "{ providers { id name rating reviewCount models } }"
REVIEW = (
    "mutation($p: ID!, $r: Int!, $c: String) "
    "{ createReview(providerId: $p, rating: $r, comment: $c) { id rating comment } }"
)
REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"


async def _user(graphql: GraphQLClient, email: str) -> str:
    await graphql("mutation { logOut }", expect_errors=True)
    await graphql(SIGN_UP, {"e": email, "p": PASSWORD})
    body = await graphql(CREATE_KEY, {"n": "k"})
    return str(body["data"]["createApiKey"]["secret"])  # type: ignore[index]


async def _id_of(db: Database, email: str) -> uuid.UUID:
    async with db.session() as session:
        return (await session.exec(select(User.id).where(User.email == email))).one()


def _code(body: dict[str, object]) -> str:
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


async def test_buyers_see_providers_and_review_the_ones_they_used(
    graphql: GraphQLClient, db: Database
) -> None:
    operator = await _user(graphql, "gpu-farm@example.com")
    await graphql('mutation { setDisplayName(name: "gpu-farm") { id } }', key=operator)
    prices = [{"model": "llama3.2:1b", "inputPerMillion": "0.1", "outputPerMillion": "0.2"}]
    with serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b", "unpriced:7b"))) as url:
        node = {"name": "n1", "runtime": "OLLAMA", "endpoint": url, "prices": prices}
        await graphql(REGISTER, {"input": node}, key=operator)
    buyer = await _user(graphql, "buyer@example.com")
    [provider] = (await graphql(PROVIDERS, key=buyer))["data"]["providers"]  # type: ignore[index]
    assert provider["name"] == "gpu-farm"
    assert provider["models"] == ["llama3.2:1b"]
    assert (provider["rating"], provider["reviewCount"]) == (None, 0)
    assert "@" not in str(provider)

    not_yet = await graphql(REVIEW, {"p": provider["id"], "r": 5}, key=buyer, expect_errors=True)
    assert _code(not_yet) == "FORBIDDEN"
    async with db.transaction() as session:
        session.add(
            UsageRecord(
                request_id=uuid.uuid4().hex,
                buyer_id=await _id_of(db, "buyer@example.com"),
                operator_id=uuid.UUID(provider["id"]),
                model="llama3.2:1b",
                status="completed",
            )
        )
    review = await graphql(REVIEW, {"p": provider["id"], "r": 4, "c": " fast "}, key=buyer)
    assert review["data"]["createReview"]["comment"] == "fast"  # type: ignore[index]
    again = await graphql(REVIEW, {"p": provider["id"], "r": 5}, key=buyer, expect_errors=True)
    assert _code(again) == "CONFLICT"
    bad = await graphql(REVIEW, {"p": provider["id"], "r": 6}, key=buyer, expect_errors=True)
    assert _code(bad) == "BAD_USER_INPUT"
    own = await graphql(REVIEW, {"p": provider["id"], "r": 5}, key=operator, expect_errors=True)
    assert _code(own) == "FORBIDDEN"
    [rated] = (await graphql(PROVIDERS, key=buyer))["data"]["providers"]  # type: ignore[index]
    assert (rated["rating"], rated["reviewCount"]) == (4.0, 1)


async def test_offline_providers_are_not_listed(graphql: GraphQLClient) -> None:
    operator = await _user(graphql, "gone@example.com")
    node = {"name": "n1", "runtime": "OLLAMA", "endpoint": "http://127.0.0.1:9"}
    await graphql(REGISTER, {"input": node}, key=operator)
    assert (await graphql(PROVIDERS, key=operator))["data"]["providers"] == []  # type: ignore[index]
    missing = await graphql(REVIEW, {"p": "nope", "r": 3}, key=operator, expect_errors=True)
    assert _code(missing) == "NOT_FOUND"
