"""me.usage, earnings, usage records and transactions through GraphQL, on a real ledger."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import CREATE_KEY, PASSWORD, SIGN_UP, GraphQLClient
from sqlmodel import col

from infer.audit import ClientInfo
from infer.billing import settlement
from infer.billing.credits import grant_credits
from infer.billing.ledger import check_books
from infer.billing.money import format_usd
from infer.db import Database
from infer.models import UsageRecord

CONTRACT = "query { me { usage { totalRequests promptTokens completionTokens spent } earnings } }"
FIGURES = "totalRequests promptTokens completionTokens spent"
BREAKDOWNS = f"""query($from: DateTime, $to: DateTime) {{ me {{ usage(from: $from, to: $to) {{
  {FIGURES} byDay {{ key {FIGURES} }} byModel {{ key {FIGURES} }} byKey {{ key {FIGURES} }}
}} }} }}"""
EARNINGS = """query($from: DateTime, $to: DateTime) { me { earnings
  earningsReport(from: $from, to: $to) { earned requestsServed tokensServed
  byDay { key earned } byModel { key earned requestsServed }
  byNode { key earned tokensServed } } } }"""
RECORDS = """query($first: Int!, $after: String) { me { usageRecords(first: $first, after: $after) {
  edges { cursor node { id requestId model cost apiKeyId nodeId createdAt } }
  nodes { id } pageInfo { hasNextPage endCursor } } } }"""
TRANSACTIONS = """query($first: Int!, $after: String) { me { balance
  transactions(first: $first, after: $after) {
  nodes { id kind memo amount createdAt } pageInfo { hasNextPage endCursor } } } }"""
REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id } }"
GRANT = 10_000_000


def _at(day: int, hour: int, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, second, micro, tzinfo=UTC)


@dataclass(frozen=True)
class Spec:
    request_id: str
    model: str
    key: int  # 0: the "default" key, 1: the "batch" key
    prompt: int
    completion: int
    cost: int
    at: datetime
    status: str = "completed"


SPECS = [
    Spec("r1", "llama3.2:1b", 0, 100, 50, 1_500, _at(1, 9)),
    Spec("r2", "llama3.2:1b", 1, 200, 80, 2_500, _at(1, 23, 59, 59, 999_999)),
    Spec("r3", "qwen2.5:0.5b", 0, 300, 120, 4_000, _at(2, 0)),
    Spec("r4", "qwen2.5:0.5b", 0, 10, 5, 700, _at(2, 12)),
    Spec("r5", "llama3.2:1b", 1, 40, 20, 900, _at(2, 12)),  # the same instant as r4
    Spec("r6", "qwen2.5:0.5b", 1, 500, 250, 12_345, _at(3, 8, 30)),
    Spec("r7", "llama3.2:1b", 0, 0, 0, 0, _at(3, 9), status="upstream_error"),
]


def _earning(cost: int) -> int:
    return cost * 85 // 100


@dataclass(frozen=True)
class Market:
    ann_key: str
    bob_key: str
    carol_key: str
    key_ids: list[str]
    node_id: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _sign_up_with_key(graphql: GraphQLClient, email: str) -> tuple[str, str]:
    """A new user (signed in by cookie until the caller logs out), their id and a key."""
    await graphql(SIGN_UP, {"e": email, "p": PASSWORD})
    secret = (await graphql(CREATE_KEY, {"n": "default"}))["data"]["createApiKey"]["secret"]  # type: ignore[index]
    user_id = (await graphql("{ me { id } }"))["data"]["me"]["id"]  # type: ignore[index]
    return str(user_id), str(secret)


async def _settle(
    db: Database, spec: Spec, *, buyer: str, key_id: str, operator: str, node: str
) -> None:
    earning = _earning(spec.cost)
    item = settlement.Settlement(
        hold_id=None,
        buyer_account_id=await settlement.account_of(db, uuid.UUID(buyer)),
        operator_account_id=await settlement.account_of(db, uuid.UUID(operator)),
        usage=settlement.Usage(
            request_id=spec.request_id,
            buyer_id=uuid.UUID(buyer),
            api_key_id=uuid.UUID(key_id),
            node_id=uuid.UUID(node),
            operator_id=uuid.UUID(operator),
            model=spec.model,
            prompt_tokens=spec.prompt,
            completion_tokens=spec.completion,
            estimated=False,
            cost=spec.cost,
            earning=earning,
            fee=spec.cost - earning,
            status=spec.status,
        ),
    )
    await settlement.settle_many(db, [item])
    async with db.transaction() as session:  # settle stamps "now"; spread the records over days
        await session.exec(
            sa.update(UsageRecord)
            .where(col(UsageRecord.request_id) == spec.request_id)
            .values(created_at=spec.at)
        )


@pytest.fixture
async def market(graphql: GraphQLClient, user_key: str, db: Database) -> Market:
    """Ann buys from Bob's node with two keys over three days; Carol has done nothing."""
    ann = (await graphql("{ me { id } }", key=user_key))["data"]["me"]["id"]  # type: ignore[index]
    await graphql(CREATE_KEY, {"n": "batch"})
    keys = (await graphql("{ me { apiKeys { id name } } }"))["data"]["me"]["apiKeys"]  # type: ignore[index]
    key_ids = [next(k["id"] for k in keys if k["name"] == n) for n in ("default", "batch")]
    await graphql("mutation { logOut }")
    bob, bob_key = await _sign_up_with_key(graphql, "bob@example.com")
    node = {"name": "box-1", "runtime": "OLLAMA", "endpoint": f"http://127.0.0.1:{_free_port()}"}
    node_id = (await graphql(REGISTER, {"input": node}))["data"]["registerNode"]["id"]  # type: ignore[index]
    await graphql("mutation { logOut }")
    _, carol_key = await _sign_up_with_key(graphql, "carol@example.com")
    await graphql("mutation { logOut }")
    await grant_credits(db, email="ann@example.com", amount=GRANT, client=ClientInfo.cli())
    for spec in SPECS:
        await _settle(
            db, spec, buyer=str(ann), key_id=key_ids[spec.key], operator=bob, node=str(node_id)
        )
    return Market(user_key, bob_key, carol_key, key_ids, str(node_id))


async def _me(graphql: GraphQLClient, query: str, key: str, **variables: Any) -> Any:
    return (await graphql(query, variables, key=key))["data"]["me"]  # type: ignore[index]


def _code(body: dict[str, object]) -> str:
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


def _sums(buckets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "totalRequests": sum(b["totalRequests"] for b in buckets),
        "promptTokens": sum(b["promptTokens"] for b in buckets),
        "completionTokens": sum(b["completionTokens"] for b in buckets),
        "spent": format_usd(int(sum(Decimal(b["spent"]) for b in buckets) * 1_000_000)),
    }


async def _walk(graphql: GraphQLClient, query: str, field: str, key: str, first: int) -> list[Any]:
    """Every node of a connection, page by page; each page but the last says more follow."""
    seen: list[Any] = []
    after = None
    while True:
        page = (await _me(graphql, query, key, first=first, after=after))[field]
        seen.extend(page["nodes"])
        assert len(page["nodes"]) <= first
        if not page["pageInfo"]["hasNextPage"]:
            return seen
        after = page["pageInfo"]["endCursor"]


async def test_the_contract_query_gives_the_buyers_totals(
    graphql: GraphQLClient, market: Market
) -> None:
    me = await _me(graphql, CONTRACT, market.ann_key)
    assert me["usage"] == {
        "totalRequests": len(SPECS),
        "promptTokens": sum(s.prompt for s in SPECS),
        "completionTokens": sum(s.completion for s in SPECS),
        "spent": format_usd(sum(s.cost for s in SPECS)),
    }
    assert me["earnings"] == "0.00"


async def test_breakdowns_by_day_model_and_key_add_up_to_the_totals(
    graphql: GraphQLClient, market: Market
) -> None:
    usage = (await _me(graphql, BREAKDOWNS, market.ann_key))["usage"]
    totals = {name: usage[name] for name in FIGURES.split()}
    for breakdown in ("byDay", "byModel", "byKey"):
        assert _sums(usage[breakdown]) == totals, breakdown
    assert [b["key"] for b in usage["byDay"]] == ["2025-03-01", "2025-03-02", "2025-03-03"]
    assert [b["totalRequests"] for b in usage["byDay"]] == [2, 3, 2]
    assert [b["key"] for b in usage["byModel"]] == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert {b["key"] for b in usage["byKey"]} == set(market.key_ids)
    batch = next(b for b in usage["byKey"] if b["key"] == market.key_ids[1])
    assert batch["spent"] == format_usd(2_500 + 900 + 12_345)


async def test_a_range_counts_only_usage_from_its_start_up_to_its_end(
    graphql: GraphQLClient, market: Market
) -> None:
    day_two = {"from": "2025-03-02T01:00:00+01:00", "to": "2025-03-03T00:00:00Z"}
    usage = (await _me(graphql, BREAKDOWNS, market.ann_key, **day_two))["usage"]
    inside = [s for s in SPECS if _at(2, 0) <= s.at < _at(3, 0)]
    assert usage["totalRequests"] == len(inside) == 3
    assert usage["spent"] == format_usd(sum(s.cost for s in inside))
    assert [b["key"] for b in usage["byDay"]] == ["2025-03-02"]
    since = await _me(graphql, BREAKDOWNS, market.ann_key, **{"from": "2025-03-03T00:00:00"})
    assert since["usage"]["totalRequests"] == 2  # no offset: taken as UTC


async def test_usage_records_walk_every_record_once_newest_first(
    graphql: GraphQLClient, market: Market
) -> None:
    walked = await _walk(graphql, RECORDS, "usageRecords", market.ann_key, first=3)
    page = (await _me(graphql, RECORDS, market.ann_key, first=100))["usageRecords"]
    records = [edge["node"] for edge in page["edges"]]
    assert [r["id"] for r in walked] == [r["id"] for r in records]
    assert len({r["id"] for r in walked}) == len(SPECS)
    keys = [(datetime.fromisoformat(r["createdAt"]), uuid.UUID(r["id"])) for r in records]
    assert keys == sorted(keys, reverse=True)
    assert not page["pageInfo"]["hasNextPage"]
    assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
    r6 = next(r for r in records if r["requestId"] == "r6")
    assert r6["cost"] == format_usd(12_345)
    assert (r6["apiKeyId"], r6["nodeId"]) == (market.key_ids[1], market.node_id)


async def test_a_buyer_sees_nothing_of_the_operator_behind_a_record(
    graphql: GraphQLClient, market: Market
) -> None:
    query = '{ __type(name: "UsageRecord") { fields { name } } }'
    body = await graphql(query, key=market.ann_key)
    fields = {f["name"] for f in body["data"]["__type"]["fields"]}  # type: ignore[index]
    assert not {"operatorId", "operator", "endpoint", "operatorEarning", "platformFee"} & fields


async def test_transactions_show_the_grant_and_the_debits_summing_to_the_balance(
    graphql: GraphQLClient, market: Market, db: Database
) -> None:
    me = await _me(graphql, TRANSACTIONS, market.ann_key, first=100)
    moves = me["transactions"]["nodes"]
    assert [m["kind"] for m in moves] == ["usage"] * 6 + ["grant"]  # newest first; r7 cost nothing
    assert moves[-1]["amount"] == format_usd(GRANT)
    assert all(Decimal(m["amount"]) < 0 for m in moves[:-1])
    assert sum(Decimal(m["amount"]) for m in moves) == Decimal(me["balance"])
    assert Decimal(me["balance"]) * 1_000_000 == GRANT - sum(s.cost for s in SPECS)
    walked = await _walk(graphql, TRANSACTIONS, "transactions", market.ann_key, first=2)
    assert [m["id"] for m in walked] == [m["id"] for m in moves]
    async with db.session() as session:
        assert (await check_books(session)).balanced


async def test_the_operator_sees_what_their_node_earned(
    graphql: GraphQLClient, market: Market
) -> None:
    me = await _me(graphql, EARNINGS, market.bob_key)
    earned = format_usd(sum(_earning(s.cost) for s in SPECS))
    report = me["earningsReport"]
    assert me["earnings"] == report["earned"] == earned
    assert report["requestsServed"] == len(SPECS)
    assert report["tokensServed"] == sum(s.prompt + s.completion for s in SPECS)
    assert [b["key"] for b in report["byNode"]] == [market.node_id]
    assert report["byNode"][0]["earned"] == earned
    assert sum(Decimal(b["earned"]) for b in report["byDay"]) == Decimal(earned)
    assert sum(b["requestsServed"] for b in report["byModel"]) == len(SPECS)
    day_one = await _me(graphql, EARNINGS, market.bob_key, **{"to": "2025-03-02T00:00:00Z"})
    assert day_one["earningsReport"]["earned"] == format_usd(_earning(1_500) + _earning(2_500))
    moves = (await _me(graphql, TRANSACTIONS, market.bob_key, first=100))["transactions"]["nodes"]
    assert sum(Decimal(m["amount"]) for m in moves) == Decimal(earned)
    assert (await _me(graphql, CONTRACT, market.bob_key))["usage"]["totalRequests"] == 0


async def test_another_user_sees_none_of_it(graphql: GraphQLClient, market: Market) -> None:
    me = await _me(graphql, CONTRACT, market.carol_key)
    assert me == {
        "usage": {"totalRequests": 0, "promptTokens": 0, "completionTokens": 0, "spent": "0.00"},
        "earnings": "0.00",
    }
    anns = (await _me(graphql, RECORDS, market.ann_key, first=1))["usageRecords"]
    for after in (None, anns["pageInfo"]["endCursor"]):
        records = await _me(graphql, RECORDS, market.carol_key, first=100, after=after)
        assert records["usageRecords"]["nodes"] == []
        assert not records["usageRecords"]["pageInfo"]["hasNextPage"]
    moves = await _me(graphql, TRANSACTIONS, market.carol_key, first=100)
    assert moves["transactions"]["nodes"] == []
    assert (await _me(graphql, EARNINGS, market.carol_key))["earningsReport"]["byNode"] == []


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (RECORDS, {"first": 0}),
        (RECORDS, {"first": 101}),
        (TRANSACTIONS, {"first": -1}),
        (RECORDS, {"first": 5, "after": "not a cursor"}),
        (TRANSACTIONS, {"first": 5, "after": "WyJ4IiwgInkiXQ"}),  # base64 of ["x", "y"]
        (BREAKDOWNS, {"from": "2025-03-02T00:00:00Z", "to": "2025-03-02T00:00:00Z"}),
        (EARNINGS, {"from": "2025-03-03T00:00:00Z", "to": "2025-03-02T00:00:00Z"}),
    ],
)
async def test_bad_pages_cursors_and_ranges_are_bad_user_input(
    graphql: GraphQLClient, user_key: str, query: str, variables: dict[str, object]
) -> None:
    body = await graphql(query, variables, key=user_key, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
