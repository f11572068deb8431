"""What the dashboard reads and does through GraphQL: sessions, the audit log, unread
notifications, filtered usage with its providers, and the viewer's own review."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import CREATE_KEY, PASSWORD, SIGN_UP, GraphQLClient, http_client
from starlette.types import ASGIApp

from infer.billing.money import format_usd
from infer.db import Database
from infer.models import Node, Notification, Runtime, UsageRecord, utcnow
from infer.resources import Resources

LOG_IN = "mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { id } }"
SESSIONS = "{ me { sessions { id createdAt expiresAt ip userAgent current } } }"
END = "mutation($id: ID!) { endSession(id: $id) }"
AUDIT = """query($first: Int!, $after: String) { me { auditLog(first: $first, after: $after) {
  edges { cursor node { id action target ip userAgent createdAt } }
  nodes { action } pageInfo { hasNextPage endCursor } } } }"""
FILTERS = "$from: DateTime, $to: DateTime, $model: String, $key: ID, $provider: ID"
ARGS = "from: $from, to: $to, model: $model, apiKeyId: $key, providerId: $provider"
FIGURES = "totalRequests promptTokens completionTokens spent"
USAGE = f"""query({FILTERS}) {{ me {{ usage({ARGS}) {{ {FIGURES}
  byDay {{ key {FIGURES} }} byModel {{ key {FIGURES} }} byKey {{ key {FIGURES} }}
  byProvider {{ key {FIGURES} }} }}
  usageRecords(first: 100, {ARGS}) {{ nodes {{ requestId model cost apiKeyId promptTokens
  completionTokens tokensPerSecond provider {{ id name }} }} }} }} }}"""
RECORDS = """query { me { usageRecords(first: 100) {
  nodes { requestId tokensPerSecond provider { id name } } } } }"""
SCRIPT = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def _data(body: dict[str, object]) -> Any:
    return body["data"]


def _error(body: dict[str, object]) -> dict[str, Any]:
    errors: list[dict[str, Any]] = body["errors"]  # type: ignore[assignment]
    return errors[0]


async def _user(graphql: GraphQLClient, email: str) -> tuple[str, str]:
    """A new user signed in by cookie on this client: their id and an API key's secret."""
    await graphql(SIGN_UP, {"e": email, "p": PASSWORD})
    secret = _data(await graphql(CREATE_KEY, {"n": "default"}))["createApiKey"]["secret"]
    return _data(await graphql("{ me { id } }"))["me"]["id"], str(secret)


@contextmanager
def _second_browser(app: ASGIApp, agent: str) -> Iterator[GraphQLClient]:
    http = http_client(app)
    http.headers["user-agent"] = agent
    yield GraphQLClient(http)


async def _sessions(graphql: GraphQLClient, key: str | None = None) -> list[dict[str, Any]]:
    return list(_data(await graphql(SESSIONS, key=key))["me"]["sessions"])


# Sessions


async def test_sessions_list_the_live_ones_newest_first_marking_this_one(
    graphql: GraphQLClient, app: ASGIApp
) -> None:
    _, key = await _user(graphql, "ann@example.com")
    with _second_browser(app, "Phone Browser/2") as phone:
        async with phone.http:
            await phone(LOG_IN, {"e": "ann@example.com", "p": PASSWORD})
            here = await _sessions(graphql)
            there = await _sessions(phone)
    assert [s["userAgent"] for s in here] == [
        "Phone Browser/2",
        "python-httpx/" + httpx.__version__,
    ]
    assert [s["current"] for s in here] == [False, True]
    assert [s["current"] for s in there] == [True, False]
    assert here[0]["ip"] == "203.0.113.7"
    assert datetime.fromisoformat(here[0]["expiresAt"]) > datetime.fromisoformat(
        here[0]["createdAt"]
    )
    by_key = await _sessions(graphql, key)
    assert [s["id"] for s in by_key] == [s["id"] for s in here]
    assert not any(s["current"] for s in by_key)


async def test_another_users_session_is_not_found_and_stays(
    graphql: GraphQLClient, app: ASGIApp
) -> None:
    _, ann_key = await _user(graphql, "ann@example.com")
    ann_session = (await _sessions(graphql))[0]["id"]
    with _second_browser(app, "Bob's browser") as bob:
        async with bob.http:
            await _user(bob, "bob@example.com")
            for wrong in (ann_session, str(uuid.uuid4()), "not-an-id"):
                refused = await bob(END, {"id": wrong}, expect_errors=True)
                assert _error(refused)["extensions"]["code"] == "NOT_FOUND"
                assert refused["data"] is None
            assert len(await _sessions(bob)) == 1
    assert [s["id"] for s in await _sessions(graphql, ann_key)] == [ann_session]
    assert _data(await graphql("{ me { id } }"))["me"]["id"]  # the cookie still works


async def test_ending_this_session_logs_out_and_the_cookie_stops_working(
    graphql: GraphQLClient, client: httpx.AsyncClient
) -> None:
    _, key = await _user(graphql, "ann@example.com")
    token = client.cookies["infer_session"]
    current = (await _sessions(graphql))[0]
    assert _data(await graphql(END, {"id": current["id"]}))["endSession"] is True
    assert "infer_session" not in client.cookies
    client.cookies.set("infer_session", token)  # a copy kept by whoever had the cookie
    refused = await graphql("{ me { id } }", expect_errors=True)
    assert _error(refused)["extensions"]["code"] == "UNAUTHENTICATED"
    assert await _sessions(graphql, key) == []
    again = await graphql(END, {"id": current["id"]}, key=key, expect_errors=True)
    assert _error(again)["extensions"]["code"] == "NOT_FOUND"


async def test_ending_another_of_my_sessions_signs_that_browser_out_and_is_audited(
    graphql: GraphQLClient, app: ASGIApp
) -> None:
    await _user(graphql, "ann@example.com")
    with _second_browser(app, "Phone Browser/2") as phone:
        async with phone.http:
            await phone(LOG_IN, {"e": "ann@example.com", "p": PASSWORD})
            phone_session = (await _sessions(phone))[0]
            assert phone_session["current"]
            assert _data(await graphql(END, {"id": phone_session["id"]}))["endSession"] is True
            refused = await phone("{ me { id } }", expect_errors=True)
            assert _error(refused)["extensions"]["code"] == "UNAUTHENTICATED"
    assert [s["current"] for s in await _sessions(graphql)] == [True]
    latest = _data(await graphql(AUDIT, {"first": 1}))["me"]["auditLog"]["nodes"][0]
    assert latest == {"action": "session.end"}
    edge = _data(await graphql(AUDIT, {"first": 1}))["me"]["auditLog"]["edges"][0]["node"]
    assert edge["target"] == f"session:{phone_session['id']}"


# Audit log


async def test_the_audit_log_shows_my_log_ins_and_not_another_users(
    graphql: GraphQLClient, app: ASGIApp
) -> None:
    await _user(graphql, "ann@example.com")
    await graphql("mutation { logOut }")
    await graphql(LOG_IN, {"e": "ann@example.com", "p": PASSWORD})
    with _second_browser(app, SCRIPT) as bob:
        async with bob.http:
            await _user(bob, "bob@example.com")
            await bob(LOG_IN, {"e": "bob@example.com", "p": PASSWORD})
            bobs = _data(await bob(AUDIT, {"first": 100}))["me"]["auditLog"]
    mine = _data(await graphql(AUDIT, {"first": 100}))["me"]["auditLog"]
    actions = [n["action"] for n in mine["nodes"]]
    assert actions == ["user.logged_in", "user.logged_out", "api_key.created", "user.signed_up"]
    # Bob's user agent is a script: his own entries return it as text; mine never hold it.
    assert all(e["node"]["userAgent"] != SCRIPT for e in mine["edges"])
    assert {e["node"]["userAgent"] for e in bobs["edges"]} == {SCRIPT}
    assert not {e["node"]["id"] for e in bobs["edges"]} & {e["node"]["id"] for e in mine["edges"]}
    times = [datetime.fromisoformat(e["node"]["createdAt"]) for e in mine["edges"]]
    assert times == sorted(times, reverse=True)


async def test_the_audit_log_pages_by_cursor_and_never_shows_details(
    graphql: GraphQLClient,
) -> None:
    await _user(graphql, "ann@example.com")
    for _ in range(3):
        wrong = {"e": "ann@example.com", "p": "not the password at all"}
        await graphql(LOG_IN, wrong, expect_errors=True)  # audited with the email tried
    everything = _data(await graphql(AUDIT, {"first": 100}))["me"]["auditLog"]
    walked: list[str] = []
    after = None
    while True:
        page = _data(await graphql(AUDIT, {"first": 2, "after": after}))["me"]["auditLog"]
        walked.extend(edge["node"]["id"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert walked == [edge["node"]["id"] for edge in everything["edges"]]
    assert [n["action"] for n in everything["nodes"]].count("user.login_failed") == 3
    fields = _data(await graphql('{ __type(name: "AuditEntry") { fields { name } } }'))
    assert {f["name"] for f in fields["__type"]["fields"]} == {
        "id",
        "action",
        "target",
        "ip",
        "userAgent",
        "createdAt",
    }
    for cursor in (
        "garbage",
        "WyIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgIjk5OTk5OTk5OTk5OTk5OTk5OTk5OSJd",
    ):
        bad = await graphql(AUDIT, {"first": 2, "after": cursor}, expect_errors=True)
        assert _error(bad)["extensions"] == {"code": "BAD_USER_INPUT", "field": "after"}
    bad = await graphql(AUDIT, {"first": 0}, expect_errors=True)
    assert _error(bad)["extensions"] == {"code": "BAD_USER_INPUT", "field": "first"}


# Notifications


async def test_the_unread_count_counts_only_my_unread_notifications(
    graphql: GraphQLClient, app: ASGIApp, db: Database
) -> None:
    ann, ann_key = await _user(graphql, "ann@example.com")
    with _second_browser(app, "bob") as bob:
        async with bob.http:
            bob_id, _ = await _user(bob, "bob@example.com")
    query = "{ me { unreadNotificationCount } }"
    assert _data(await graphql(query, key=ann_key))["me"]["unreadNotificationCount"] == 0
    async with db.transaction() as session:
        for user, read in [(ann, None), (ann, None), (ann, utcnow()), (bob_id, None)]:
            session.add(
                Notification(user_id=uuid.UUID(user), kind="node", message=SCRIPT, read_at=read)
            )
    assert _data(await graphql(query, key=ann_key))["me"]["unreadNotificationCount"] == 2
    await graphql("mutation { markNotificationsRead }", key=ann_key)
    assert _data(await graphql(query, key=ann_key))["me"]["unreadNotificationCount"] == 0


# Usage filters


@dataclass(frozen=True)
class Bought:
    ann_key: str
    key_ids: list[str]  # ann's "default" and "batch" keys
    bob: str
    carol: str
    bob_name: str


def _at(day: int, hour: int = 12) -> datetime:
    return datetime(2025, 3, day, hour, tzinfo=UTC)


# (request, model, key index, operator "bob"/"carol"/None, prompt, completion, cost, day,
#  ttft ms, duration ms)
RECORDS_SPEC: list[
    tuple[str, str, int, str | None, int, int, int, int, float | None, float | None]
] = [
    ("r1", "llama", 0, "bob", 100, 50, 1_000, 1, 200.0, 1_200.0),
    ("r2", "llama", 1, "carol", 200, 80, 2_000, 1, 100.0, 900.0),
    ("r3", "qwen", 0, "bob", 300, 120, 4_000, 2, None, 1_000.0),
    ("r4", "qwen", 1, "bob", 10, 5, 700, 3, 50.0, 50.0),
    ("r5", "llama", 0, None, 40, 20, 900, 3, None, None),
]


@pytest.fixture
async def bought(graphql: GraphQLClient, app: ASGIApp, db: Database) -> Bought:
    """Ann has bought from Bob and Carol with two keys over three days (r5: no operator)."""
    _, ann_key = await _user(graphql, "ann@example.com")
    await graphql(CREATE_KEY, {"n": "batch"})
    keys = _data(await graphql("{ me { id apiKeys { id name } } }"))["me"]
    ann = keys["id"]
    key_ids = [
        next(k["id"] for k in keys["apiKeys"] if k["name"] == n) for n in ("default", "batch")
    ]
    operators: dict[str, str] = {}
    for name in ("bob", "carol"):
        with _second_browser(app, name) as browser:
            async with browser.http:
                operators[name], _ = await _user(browser, f"{name}@example.com")
                if name == "bob":
                    rename = 'mutation { setDisplayName(name: "Bob GPUs") { displayName } }'
                    await browser(rename)
    async with db.transaction() as session:
        for rid, model, key, op, prompt, completion, cost, day, ttft, duration in RECORDS_SPEC:
            session.add(
                UsageRecord(
                    request_id=rid,
                    buyer_id=uuid.UUID(ann),
                    api_key_id=uuid.UUID(key_ids[key]),
                    operator_id=uuid.UUID(operators[op]) if op else None,
                    model=model,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cost=cost,
                    status="completed",
                    ttft_ms=ttft,
                    duration_ms=duration,
                    created_at=_at(day),
                )
            )
    return Bought(ann_key, key_ids, operators["bob"], operators["carol"], "Bob GPUs")


async def _usage(graphql: GraphQLClient, secret: str, filters: dict[str, object]) -> Any:
    return _data(await graphql(USAGE, filters, key=secret))["me"]


def _expected(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    return {
        "totalRequests": len(rows),
        "promptTokens": sum(r[4] for r in rows),
        "completionTokens": sum(r[5] for r in rows),
        "spent": format_usd(sum(r[6] for r in rows)),
    }


def _totals(usage: dict[str, Any]) -> dict[str, Any]:
    return {name: usage[name] for name in FIGURES.split()}


async def test_each_filter_narrows_totals_breakdowns_and_records_alike(
    graphql: GraphQLClient, bought: Bought
) -> None:
    cases: list[tuple[dict[str, object], set[str]]] = [
        ({}, {"r1", "r2", "r3", "r4", "r5"}),
        ({"model": "llama"}, {"r1", "r2", "r5"}),
        ({"key": bought.key_ids[1]}, {"r2", "r4"}),
        ({"provider": bought.bob}, {"r1", "r3", "r4"}),
        ({"provider": bought.bob, "model": "qwen", "key": bought.key_ids[0]}, {"r3"}),
        ({"from": "2025-03-02T00:00:00Z", "to": "2025-03-03T00:00:00Z"}, {"r3"}),
        ({"from": "2025-03-02T00:00:00Z", "provider": bought.carol}, set()),
        ({"model": SCRIPT}, set()),
        ({"provider": str(uuid.uuid4())}, set()),
    ]
    for filters, wanted in cases:
        me = await _usage(graphql, bought.ann_key, filters)
        rows = [r for r in RECORDS_SPEC if r[0] in wanted]
        usage, records = me["usage"], me["usageRecords"]["nodes"]
        assert {r["requestId"] for r in records} == wanted, filters
        assert _totals(usage) == _expected(rows), filters
        for breakdown in ("byDay", "byModel", "byKey", "byProvider"):
            buckets = usage[breakdown]
            assert sum(b["totalRequests"] for b in buckets) == len(rows), (filters, breakdown)
            spent = sum(Decimal(b["spent"]) for b in buckets)
            assert spent == Decimal(usage["spent"]), (filters, breakdown)


async def test_spending_by_provider_keys_on_the_operator_and_records_name_them(
    graphql: GraphQLClient, bought: Bought
) -> None:
    me = await _usage(graphql, bought.ann_key, {})
    by_provider = {b["key"]: b["totalRequests"] for b in me["usage"]["byProvider"]}
    assert by_provider == {bought.bob: 3, bought.carol: 1, None: 1}
    records = {r["requestId"]: r for r in me["usageRecords"]["nodes"]}
    assert records["r1"]["provider"] == {"id": bought.bob, "name": bought.bob_name}
    assert records["r2"]["provider"]["name"].startswith("provider-")
    assert records["r5"]["provider"] is None
    # As the router measures: the tokens after the first, over the time after the first.
    assert records["r1"]["tokensPerSecond"] == pytest.approx(49.0)  # 49 tokens in 1 s
    assert records["r2"]["tokensPerSecond"] == pytest.approx(98.75)  # 79 in 0.8 s
    assert records["r3"]["tokensPerSecond"] is None  # no time to first token
    assert records["r4"]["tokensPerSecond"] is None  # no time after the first token
    assert records["r5"]["tokensPerSecond"] is None


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"key": "not-a-key"}, "apiKeyId"),
        ({"provider": "'; DROP TABLE users; --"}, "providerId"),
        ({"from": "2025-03-03T00:00:00Z", "to": "2025-03-02T00:00:00Z"}, "from"),
    ],
)
async def test_a_bad_filter_is_bad_user_input_naming_its_field(
    graphql: GraphQLClient, bought: Bought, filters: dict[str, object], field: str
) -> None:
    body = await graphql(USAGE, filters, key=bought.ann_key, expect_errors=True)
    assert _error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": field}


@contextmanager
def _counted(resources: Resources) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(*args: Any) -> None:
        if "usage_records" in args[2] or "FROM users" in args[2]:
            statements.append(args[2])

    engine = resources.db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


async def test_records_with_their_providers_cost_the_same_statements_at_any_page_size(
    graphql: GraphQLClient, bought: Bought, db: Database, resources: Resources
) -> None:
    with _counted(resources) as few:
        await graphql(RECORDS, key=bought.ann_key)
    async with db.transaction() as session:
        ann = (await session.exec(sa.select(UsageRecord.buyer_id).limit(1))).one()[0]
        for i in range(40):
            operator = uuid.UUID(bought.bob if i % 2 else bought.carol)
            session.add(
                UsageRecord(
                    request_id=f"more-{i}",
                    buyer_id=ann,
                    operator_id=operator,
                    model="llama",
                    status="completed",
                    created_at=utcnow() - timedelta(minutes=i),
                )
            )
    with _counted(resources) as many:
        body = await graphql(RECORDS, key=bought.ann_key)
    assert len(_data(body)["me"]["usageRecords"]["nodes"]) == 45
    assert len(many) == len(few)  # providers' names: one query for 2 or for 45 records


# The viewer's review


async def test_my_review_is_mine_to_edit_and_null_for_others_and_anonymous(
    graphql: GraphQLClient, bought: Bought, app: ASGIApp, db: Database
) -> None:
    async with db.transaction() as session:  # a provider page needs a node, in any state
        for operator in (bought.bob, bought.carol):
            node = Node(
                operator_id=uuid.UUID(operator),
                name="box",
                runtime=Runtime.OLLAMA,
                endpoint="http://127.0.0.1:9",
            )
            session.add(node)
    create = 'mutation($p: ID!) { createReview(providerId: $p, rating: 4, comment: "fine") { id } }'
    review = _data(await graphql(create, {"p": bought.bob}, key=bought.ann_key))["createReview"]
    page = "query($p: ID!) { provider(id: $p) { myReview { id rating comment } } }"
    mine = _data(await graphql(page, {"p": bought.bob}, key=bought.ann_key))["provider"]
    assert mine["myReview"] == {"id": review["id"], "rating": 4, "comment": "fine"}
    carol_page = _data(await graphql(page, {"p": bought.carol}, key=bought.ann_key))
    assert carol_page["provider"]["myReview"] is None
    with _second_browser(app, "anonymous") as anonymous:
        async with anonymous.http:
            seen = _data(await anonymous(page, {"p": bought.bob}))
            assert seen["provider"]["myReview"] is None
            await _user(anonymous, "dan@example.com")
            seen = _data(await anonymous(page, {"p": bought.bob}))
            assert seen["provider"]["myReview"] is None
    await graphql(
        "mutation($id: ID!) { deleteReview(id: $id) }", {"id": review["id"]}, key=bought.ann_key
    )
    gone = _data(await graphql(page, {"p": bought.bob}, key=bought.ann_key))["provider"]
    assert gone["myReview"] is None
