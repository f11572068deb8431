"""Key budgets: a spend limit per period, an expiry and an allow-list, enforced in the hold."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest
from dashboard import Dashboard
from runtimes import FakeRuntime
from sqlmodel import select
from test_gateway import MESSAGES, MODEL, Market

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.keys.budgets import next_reset
from infer.models import ApiKey, BudgetReset, KeyBudget
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

# 10 µ$ a prompt token and 100 µ$ an answer token: a $0.01 budget covers a few requests.
PRICES = [{"model": MODEL, "inputPerMillion": "10", "outputPerMillion": "100"}]
REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"
KEYS = (
    "{ me { apiKeys { id expiresAt allowedModels"
    " budget { spendLimit reset spent remaining resetsAt } } } }"
)
SET_BUDGET = (
    "mutation($id: ID!, $limit: Money, $reset: BudgetReset, $expires: DateTime,"
    " $models: [String!]) { setApiKeyBudget(id: $id, spendLimit: $limit, reset: $reset,"
    " expiresAt: $expires, models: $models) { id budget { spendLimit reset } } }"
)
KEY_ID = re.compile(r'id="key-([0-9a-f-]{36})"')
MESSAGE = re.compile(
    r"This API key's daily budget of \$0\.01 (is spent \(\$0\.\d{4} of \$0\.0100\)"
    r"|cannot cover this request \(\$0\.\d{4} of \$0\.0100 spent or held; it may cost up to"
    r" \$0\.\d{4}\)); it resets at \d{4}-\d\d-\d\dT00:00:00Z\."
)


class BudgetMarket(Market):
    async def graphql(
        self, query: str, variables: dict[str, object], *, key: str | None = None
    ) -> dict[str, object]:
        response = await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {key or self.buyer_key}"},
        )
        body: dict[str, object] = response.json()
        return body

    async def key(self) -> dict[str, object]:
        body = await self.graphql(KEYS, {})
        return body["data"]["me"]["apiKeys"][0]  # type: ignore[index,no-any-return]

    async def set_budget(self, **variables: object) -> dict[str, object]:
        key_id = (await self.key())["id"]
        return await self.graphql(SET_BUDGET, {"id": key_id, **variables})

    async def add_priced_node(self, endpoint: str) -> None:
        variables = {
            "input": {"name": "sim", "runtime": "OLLAMA", "endpoint": endpoint, "prices": PRICES}
        }
        body = await self.graphql(REGISTER, variables, key=self.operator_key)
        assert body["data"]["registerNode"]["status"] == "ONLINE", body  # type: ignore[index]


@pytest.fixture
async def market(settings: Settings, db: Database) -> AsyncIterator[BudgetMarket]:
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        market = BudgetMarket(url, db)
        await market.setup(credits=10_000_000)
        yield market
        await market.close()


async def _call(client: openai.AsyncOpenAI) -> tuple[int, dict[str, object] | None]:
    try:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)  # type: ignore[arg-type]
    except openai.APIStatusError as error:
        return error.status_code, error.body  # type: ignore[return-value]
    return 200, None


async def test_a_daily_budget_stops_concurrent_requests_at_the_limit_exactly(
    market: BudgetMarket,
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as node:
        await market.add_priced_node(node)
        set_ = await market.set_budget(limit="0.01", reset="DAILY")
        assert set_["data"]["setApiKeyBudget"]["budget"] == {  # type: ignore[index]
            "spendLimit": "0.01",
            "reset": "DAILY",
        }
        client = market.async_client()
        results = await asyncio.gather(*(_call(client) for _ in range(24)))
        # Once the count is settled, the next request is refused in the brief's words.
        await market.settled()
        results.append(await _call(client))
    statuses = [status for status, _ in results]
    assert set(statuses) == {200, 402}, statuses
    for status, body in results:
        if status == 402:
            assert body is not None
            assert body["code"] == "key_budget_exceeded"
            assert body["type"] == "insufficient_quota"
            assert MESSAGE.fullmatch(str(body["message"])), body["message"]
    spent = sum(record.cost for record in await market.usage())
    assert 0 < spent <= 10_000
    key = await market.key()
    budget = key["budget"]
    assert budget["spent"] == f"{spent / 1_000_000:.6f}".rstrip("0").ljust(4, "0")  # type: ignore[index]
    assert budget["resetsAt"].startswith(  # type: ignore[index]
        next_reset(BudgetReset.DAILY, datetime.now(UTC)).strftime("%Y-%m-%dT00:00:00")  # type: ignore[union-attr]
    )
    async with market.db.session() as session:
        row = (await session.exec(select(KeyBudget))).one()
    assert (row.spent, row.reserved) == (spent, 0)
    await market.assert_books_balance()


async def test_a_model_outside_the_allow_list_is_403_and_reaches_no_node(
    settings: Settings, db: Database
) -> None:
    runtime = FakeRuntime(dialect="ollama", models=(MODEL,))
    with (
        serve_in_thread(runtime) as node,
        serve_in_thread(create_app(settings), lifespan="on") as url,
    ):
        market = BudgetMarket(url, db)
        await market.setup(credits=1_000_000)
        await market.add_priced_node(node)
        await market.set_budget(models=["qwen2.5:7b"])
        status, body = await _call(market.async_client())
        await market.close()
    assert status == 403
    assert body is not None
    assert body["code"] == "model_not_allowed"
    assert body["param"] == "model"
    assert str(body["message"]) == (
        "This API key may not use the model 'llama3.2:1b'; it may use qwen2.5:7b."
    )
    assert runtime.chats() == []
    await market.assert_books_balance()


async def test_an_expired_key_is_401_naming_when_it_expired(market: BudgetMarket) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with market.db.transaction() as session:
        for key in (await session.exec(select(ApiKey))).all():
            key.expires_at = when
            session.add(key)
    with pytest.raises(openai.AuthenticationError) as caught:
        await market.async_client().models.list()
    assert caught.value.body["code"] == "key_expired"  # type: ignore[index]
    assert caught.value.body["message"] == "This API key expired at 2026-01-02T03:04:05Z."  # type: ignore[index]


async def test_budget_settings_are_shown_cleared_and_checked(market: BudgetMarket) -> None:
    soon = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    await market.set_budget(limit="2.50", reset="WEEKLY", expires=soon.isoformat(), models=[MODEL])
    key = await market.key()
    assert key["allowedModels"] == [MODEL]
    assert datetime.fromisoformat(str(key["expiresAt"])) == soon
    assert key["budget"] == {
        "spendLimit": "2.50",
        "reset": "WEEKLY",
        "spent": "0.00",
        "remaining": "2.50",
        "resetsAt": next_reset(BudgetReset.WEEKLY, datetime.now(UTC)).isoformat(),  # type: ignore[union-attr]
    }
    # Left out: kept; null: cleared.
    await market.set_budget(limit=None, models=None, expires=None)
    key = await market.key()
    assert (key["budget"], key["allowedModels"], key["expiresAt"]) == (None, None, None)
    for variables, param in (
        ({"limit": "0"}, "spendLimit"),
        ({"expires": "2020-01-01T00:00:00+00:00"}, "expiresAt"),
        ({"models": []}, "models"),
        ({"reset": "DAILY"}, "reset"),
    ):
        refused = await market.set_budget(**variables)
        error = refused["errors"][0]  # type: ignore[index]
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": param}, refused


async def test_only_an_account_scoped_key_may_set_a_budget(market: BudgetMarket) -> None:
    created = await market.graphql(
        'mutation { createApiKey(name: "gw", scopes: [GATEWAY]) { apiKey { id } secret } }', {}
    )
    issued = created["data"]["createApiKey"]  # type: ignore[index]
    refused = await market.graphql(
        SET_BUDGET, {"id": issued["apiKey"]["id"], "limit": "1"}, key=issued["secret"]
    )
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"  # type: ignore[index]
    async with market.db.session() as session:
        assert (await session.exec(select(KeyBudget))).all() == []


async def test_a_key_without_a_budget_is_not_counted(market: BudgetMarket) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as node:
        await market.add_priced_node(node)
        assert (await _call(market.async_client()))[0] == 200
    assert (await market.key())["budget"] is None
    await market.assert_books_balance()


async def test_the_keys_page_sets_a_budget_and_shows_what_remains(
    client: httpx.AsyncClient,
) -> None:
    dashboard = Dashboard(client)
    await dashboard.sign_up("ada@example.com")
    await dashboard.get("/keys")
    created = await dashboard.post("/keys", {"name": "laptop"})
    key_id = KEY_ID.search(created.html)
    assert key_id
    assert "Budget No spend limit" in created
    form = {"spendLimit": "0.50", "reset": "DAILY", "models": f"{MODEL}, qwen2.5:7b"}
    saved = await dashboard.post(f"/keys/{key_id.group(1)}/budget", form)
    assert saved.status == 303
    page = await dashboard.get("/keys")
    assert "$0.50 left of $0.50 (daily; resets" in page
    assert f"Models {MODEL}, qwen2.5:7b" in page
    refused = await dashboard.post(
        f"/keys/{key_id.group(1)}/budget", {"spendLimit": "lots", "reset": "DAILY"}, htmx=True
    )
    assert refused.status == 422
    assert "is not an amount in USD" in refused
    cleared = await dashboard.post(
        f"/keys/{key_id.group(1)}/budget", {"spendLimit": "", "reset": "NEVER"}, htmx=True
    )
    assert cleared.status == 200
    assert "Budget No spend limit" in cleared
    assert "Models Any" in cleared
