"""The OpenAI-compatible gateway, served for real, called with the official `openai` SDK."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
from conftest import CREATE_KEY, PASSWORD, SIGN_UP
from runtimes import FakeRuntime
from sqlmodel import select

from infer.app import create_app
from infer.audit import ClientInfo
from infer.billing import ledger
from infer.billing.credits import grant_credits
from infer.config import Settings
from infer.db import Database
from infer.models import Hold, LedgerAccount, UsageRecord
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

MODEL = "llama3.2:1b"
REGISTER = """mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"""
PRICES = [{"model": MODEL, "inputPerMillion": "1", "outputPerMillion": "2"}]  # µ$1 / µ$2 a token
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


class Market:
    """A served platform with one buyer (a key and credits) and one operator."""

    def __init__(self, url: str, db: Database) -> None:
        self.url = url
        self.db = db
        self.http = httpx.AsyncClient(base_url=url, timeout=30)
        self.buyer_key = ""
        self.operator_key = ""
        self._async: openai.AsyncOpenAI | None = None

    async def _user(self, email: str) -> str:
        http = httpx.AsyncClient(base_url=self.url, timeout=30)
        async with http:
            await http.post(
                "/graphql", json={"query": SIGN_UP, "variables": {"e": email, "p": PASSWORD}}
            )
            body = (
                await http.post("/graphql", json={"query": CREATE_KEY, "variables": {"n": "k"}})
            ).json()
        return str(body["data"]["createApiKey"]["secret"])

    async def setup(self, credits: int) -> None:
        self.buyer_key = await self._user("buyer@example.com")
        self.operator_key = await self._user("operator@example.com")
        if credits:
            await grant_credits(
                self.db, email="buyer@example.com", amount=credits, client=ClientInfo.cli()
            )

    async def add_node(self, endpoint: str, name: str) -> str:
        variables = {
            "input": {"name": name, "runtime": "OLLAMA", "endpoint": endpoint, "prices": PRICES}
        }
        response = await self.http.post(
            "/graphql",
            json={"query": REGISTER, "variables": variables},
            headers={"Authorization": f"Bearer {self.operator_key}"},
        )
        node = response.json()["data"]["registerNode"]
        assert node["status"] == "ONLINE", node
        return str(node["id"])

    def sync_client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/api/v1", api_key=self.buyer_key, max_retries=0)

    def async_client(self) -> openai.AsyncOpenAI:
        if self._async is None:
            self._async = openai.AsyncOpenAI(
                base_url=f"{self.url}/api/v1", api_key=self.buyer_key, max_retries=0
            )
        return self._async

    async def close(self) -> None:
        await self.http.aclose()
        if self._async is not None:
            await self._async.close()

    async def settled(self) -> None:
        """Any GraphQL request waits for the platform's own settlements (read your writes).

        Once the platform has stopped, its shutdown has written them.
        """
        if self.http.is_closed:
            return
        response = await self.http.post("/graphql", json={"query": "{ __typename }"})
        assert response.status_code == 200

    async def balance(self, email: str) -> int:
        await self.settled()
        async with self.db.session() as session:
            from infer.models import User

            user = (await session.exec(select(User).where(User.email == email))).one()
            account = await ledger.user_account(session, user_id=user.id)
            return account.balance

    async def usage(self) -> list[UsageRecord]:
        await self.settled()
        async with self.db.session() as session:
            return list((await session.exec(select(UsageRecord))).all())

    async def assert_books_balance(self) -> None:
        await self.settled()
        async with self.db.session() as session:
            report = await ledger.check_books(session)
            total = sum((await session.exec(select(LedgerAccount.balance))).all())
            open_holds = (await session.exec(select(Hold).where(Hold.released_at == None))).all()  # noqa: E711
            reserved = sum((await session.exec(select(LedgerAccount.reserved))).all())
        assert report.balanced, report
        assert total == 0
        assert open_holds == []
        assert reserved == 0


@pytest.fixture
def platform_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "upstream_first_byte_timeout": 1.0,
            "upstream_idle_timeout": 2.0,
            "health_timeout": 2.0,
        }
    )


@pytest.fixture
async def market(platform_settings: Settings, db: Database) -> AsyncIterator[Market]:
    with serve_in_thread(create_app(platform_settings), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        yield market
        await market.close()


@pytest.fixture
def simulator() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as url:
        yield url


def _direct(url: str, **body: object) -> dict[str, object]:
    payload = {"model": MODEL, "messages": MESSAGES, **body}
    return httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=10).json()  # type: ignore[no-any-return]


async def test_a_completion_relays_the_runtimes_exact_text_and_usage(
    market: Market, simulator: str
) -> None:
    await market.add_node(simulator, "sim")
    direct = _direct(simulator, seed=3, max_tokens=20)
    reply = await asyncio.to_thread(
        market.sync_client().chat.completions.create,
        model=MODEL,
        messages=MESSAGES,
        seed=3,
        max_tokens=20,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == direct["choices"][0]["message"]["content"]  # type: ignore[index]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == direct["usage"]["prompt_tokens"]  # type: ignore[index]
    assert reply.usage.completion_tokens == direct["usage"]["completion_tokens"]  # type: ignore[index]
    cost = reply.usage.prompt_tokens * 1 + reply.usage.completion_tokens * 2
    assert (reply.usage.model_extra or {})["cost"] == f"0.{cost:06d}".rstrip("0")
    assert await market.balance("buyer@example.com") == 10_000_000 - cost
    assert await market.balance("operator@example.com") + cost // 10 == cost
    await market.assert_books_balance()


async def test_streaming_with_include_usage_matches_a_direct_call(
    market: Market, simulator: str
) -> None:
    await market.add_node(simulator, "sim")
    direct = _direct(simulator, seed=5, max_tokens=12)
    stream = await market.async_client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        seed=5,
        max_tokens=12,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == direct["choices"][0]["message"]["content"]  # type: ignore[index]
    assert usage is not None
    assert usage.completion_tokens == direct["usage"]["completion_tokens"]  # type: ignore[index]
    records = await market.usage()
    assert [r.status for r in records] == ["completed"]
    assert records[0].cost == usage.prompt_tokens + 2 * usage.completion_tokens
    assert records[0].operator_earning + records[0].platform_fee == records[0].cost
    await market.assert_books_balance()


async def test_streaming_without_include_usage_still_reports_usage_on_the_last_chunk(
    market: Market, simulator: str
) -> None:
    await market.add_node(simulator, "sim")
    response = await market.http.post(
        "/api/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 5},
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["usage"]["completion_tokens"] == 5
    assert response.headers["x-request-id"]


async def test_models_lists_what_online_nodes_serve(market: Market, simulator: str) -> None:
    await market.add_node(simulator, "sim")
    models = await asyncio.to_thread(lambda: market.sync_client().models.list())
    assert [m.id for m in models.data] == [MODEL]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"messages": MESSAGES}, 400, "model"),
        ({"model": MODEL}, 400, "messages"),
        ({"model": MODEL, "messages": "hi"}, 400, "messages"),
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": -1}, 400, "max_tokens"),
        ({"model": MODEL, "messages": MESSAGES, "temperature": "hot"}, 400, "temperature"),
        ({"model": "no-such-model", "messages": MESSAGES}, 404, "model"),
        ([{"model": MODEL, "messages": MESSAGES}], 400, None),
    ],
)
async def test_bad_requests_get_openai_errors(
    market: Market, simulator: str, body: object, status: int, param: str | None
) -> None:
    await market.add_node(simulator, "sim")
    response = await market.http.post(
        "/api/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]
    assert await market.usage() == []


async def test_a_bad_key_is_401_in_openai_form(market: Market) -> None:
    client = openai.OpenAI(base_url=f"{market.url}/api/v1", api_key="inf_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await asyncio.to_thread(client.chat.completions.create, model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]


async def test_an_empty_balance_is_402_and_nothing_reaches_the_node(
    platform_settings: Settings, db: Database
) -> None:
    runtime = FakeRuntime(dialect="ollama", models=(MODEL,))
    with (
        serve_in_thread(runtime) as node,
        serve_in_thread(create_app(platform_settings), lifespan="on") as url,
    ):
        market = Market(url, db)
        await market.setup(credits=0)
        await market.add_node(node, "fake")
        with pytest.raises(openai.APIStatusError) as caught:
            await market.async_client().chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        await market.close()
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "insufficient_quota"  # type: ignore[index]
    assert runtime.chats() == []
    await market.assert_books_balance()


async def test_concurrent_requests_on_a_small_balance_never_overdraw(
    platform_settings: Settings, db: Database, simulator: str
) -> None:
    with serve_in_thread(create_app(platform_settings), lifespan="on") as url:
        market = Market(url, db)
        # Each request holds (prompt bound + 50 tokens x 2) ≈ 150 µ$: room for about 3.
        await market.setup(credits=500)
        await market.add_node(simulator, "sim")
        client = market.async_client()

        async def one() -> int:
            try:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=50)  # type: ignore[arg-type]
            except openai.APIStatusError as error:
                return error.status_code
            return 200

        statuses = await asyncio.gather(*(one() for _ in range(12)))
        await market.close()
    assert set(statuses) <= {200, 402}
    assert 200 in statuses
    assert 402 in statuses
    assert await market.balance("buyer@example.com") >= 0
    spent = sum(r.cost for r in await market.usage())
    assert await market.balance("buyer@example.com") == 500 - spent
    await market.assert_books_balance()


async def test_a_failing_node_is_skipped_before_the_first_byte(
    market: Market, simulator: str
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), error_rate=1.0)) as broken:
        await market.add_node(broken, "broken")
        await market.add_node(simulator, "good")
        client = market.async_client()
        for _ in range(4):
            reply = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=5
            )  # type: ignore[arg-type]
            assert reply.choices[0].message.content
    records = await market.usage()
    assert len(records) == 4
    assert all(r.status == "completed" for r in records)
    await market.assert_books_balance()


async def test_a_hanging_node_gives_504_within_the_first_byte_deadline(market: Market) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), hang=True)) as hung:
        await market.add_node(hung, "hung")
        response = await market.http.post(
            "/api/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES},
            headers={"Authorization": f"Bearer {market.buyer_key}"},
        )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert await market.balance("buyer@example.com") == 10_000_000
    await market.assert_books_balance()


async def test_the_faster_node_gets_most_requests(market: Market) -> None:
    slow_config = SimulatorConfig(models=(MODEL,), ttft_ms=150)
    with (
        serve_simulator_in_thread(slow_config) as slow,
        serve_simulator_in_thread(SimulatorConfig(models=(MODEL,))) as fast,
    ):
        slow_id = await market.add_node(slow, "slow")
        fast_id = await market.add_node(fast, "fast")
        client = market.async_client()
        for _ in range(20):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]
    served = [str(r.node_id) for r in await market.usage()]
    assert served.count(fast_id) > served.count(slow_id)
    assert served.count(fast_id) >= 14


async def test_equal_nodes_share_the_load(market: Market) -> None:
    config = SimulatorConfig(models=(MODEL,), tokens_per_second=200)
    with serve_simulator_in_thread(config) as one, serve_simulator_in_thread(config) as two:
        ids = [await market.add_node(one, "one"), await market.add_node(two, "two")]
        client = market.async_client()
        await asyncio.gather(
            *(
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
                for _ in range(24)
            )
        )
    counts = Counter(str(r.node_id) for r in await market.usage())
    assert all(counts[node_id] >= 6 for node_id in ids), counts


async def test_a_buyer_who_disconnects_pays_for_what_was_relayed(market: Market) -> None:
    runtime = FakeRuntime(
        dialect="ollama", models=(MODEL,), pieces=tuple(f" w{i}" for i in range(200)), interval=0.02
    )
    with serve_in_thread(runtime) as node:
        await market.add_node(node, "slow")
        received = 0
        async with market.http.stream(
            "POST",
            "/api/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 200},
            headers={"Authorization": f"Bearer {market.buyer_key}"},
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    received += 1
                if received == 5:
                    break
        for _ in range(100):
            if runtime.disconnected.is_set() and await market.usage():
                break
            await asyncio.sleep(0.05)
    assert runtime.disconnected.is_set()
    [record] = await market.usage()
    assert record.status == "client_disconnected"
    assert 5 <= record.completion_tokens < 200
    assert record.estimated
    assert record.cost == record.prompt_tokens + 2 * record.completion_tokens
    await market.assert_books_balance()


async def test_rate_limited_keys_get_429_with_retry_after(
    platform_settings: Settings, db: Database, simulator: str
) -> None:
    limited = platform_settings.model_copy(update={"key_requests_per_minute": 2})
    with serve_in_thread(create_app(limited), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        await market.add_node(simulator, "sim")
        statuses, seen = [], []
        for _ in range(3):
            response = await market.http.post(
                "/api/v1/chat/completions",
                json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2},
                headers={"Authorization": f"Bearer {market.buyer_key}"},
            )
            statuses.append(response.status_code)
            seen.append(response.headers)
        # The refused request's hold (placed while its limit was checked) is given back.
        await market.assert_books_balance()
        assert len(await market.usage()) == 2
        await market.close()
    assert statuses == [200, 200, 429]
    assert [h.get("x-ratelimit-remaining-requests") for h in seen[:2]] == ["1", "0"]
    assert seen[0]["x-ratelimit-limit-requests"] == "2"
    assert int(seen[2]["retry-after"]) >= 1


async def test_oversize_bodies_get_413(market: Market) -> None:
    response = await market.http.post(
        "/api/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 2_000_000}]},
        headers={"Authorization": f"Bearer {market.buyer_key}"},
    )
    assert response.status_code == 413
