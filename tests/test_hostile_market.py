"""A buyer who poisons requests, an operator who floods, a database that fails over or
goes away under load: nobody else pays for it, and no delivered answer goes uncharged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import http_client, started
from runtimes import FakeRuntime
from test_gateway import MESSAGES, MODEL, Market, market, platform_settings, simulator

from infer.config import Settings
from infer.db import Database
from infer.simulator import serve_in_thread

__all__ = ["market", "platform_settings", "simulator"]  # fixtures shared with test_gateway


def _auth(market: Market) -> dict[str, str]:
    return {"Authorization": f"Bearer {market.buyer_key}"}


async def _eventually(check: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def _add_node(market: Market, endpoint: str, name: str, *, runtime: str) -> str:
    from test_gateway import PRICES, REGISTER

    variables = {
        "input": {"name": name, "runtime": runtime, "endpoint": endpoint, "prices": PRICES}
    }
    response = await market.http.post(
        "/graphql",
        json={"query": REGISTER, "variables": variables},
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    node = response.json()["data"]["registerNode"]
    assert node["status"] == "ONLINE", node
    return str(node["id"])


class AsgiMarket(Market):
    """Market's helpers against an app run in this event loop (its resources at hand)."""

    def __init__(self, app: Any, db: Database) -> None:
        super().__init__("http://127.0.0.1:8000", db)
        self.app = app
        self.http = http_client(app)

    async def _user(self, email: str) -> str:
        from conftest import CREATE_KEY, PASSWORD, SIGN_UP

        async with http_client(self.app) as http:
            await http.post(
                "/graphql", json={"query": SIGN_UP, "variables": {"e": email, "p": PASSWORD}}
            )
            body = (
                await http.post("/graphql", json={"query": CREATE_KEY, "variables": {"n": "k"}})
            ).json()
        return str(body["data"]["createApiKey"]["secret"])


@pytest.fixture
async def inproc(
    platform_settings: Settings, db: Database
) -> AsyncIterator[tuple[AsgiMarket, Any]]:
    async with started(platform_settings) as (app, resources):
        market = AsgiMarket(app, db)
        await market.setup(credits=10_000_000)
        yield market, resources
        await market.close()


async def test_a_buyers_unsendable_parameter_does_not_count_as_the_nodes_failure(
    inproc: tuple[AsgiMarket, Any],
) -> None:
    """A buyer's own bad input (NaN in a passed-through field) is refused, but the node it
    was routed to is recorded as failed and put in cool-down: any buyer can push an honest
    operator's node to the back of the queue, for free (the hold is given back)."""
    import uuid

    market, resources = inproc
    runtime = FakeRuntime(dialect="openai", models=(MODEL,))
    with serve_in_thread(runtime) as url:
        node_id = uuid.UUID(await _add_node(market, url, "victim", runtime="OPENAI"))
        before = await market.balance("buyer@example.com")
        for _ in range(3):
            response = await market.http.post(
                "/api/v1/chat/completions",
                content=b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}],'
                b' "top_k": NaN}' % MODEL.encode(),
                headers=_auth(market) | {"content-type": "application/json"},
            )
            assert response.status_code == 400, response.text
        assert runtime.chats() == []  # the node never saw any of it
        stats = (await resources.router.state.snapshot([node_id]))[node_id]
        assert await market.balance("buyer@example.com") == before  # it cost the buyer nothing
    assert stats.consecutive_failures == 0, stats
    assert stats.cooldown_until <= time.time(), stats
    await market.assert_books_balance()


@dataclass
class Flood(FakeRuntime):
    """A node that ignores max_tokens and sends whatever it likes."""

    def _answer_pieces(self, max_tokens: object) -> tuple[tuple[str, ...], str]:
        return self.pieces, "stop"


async def test_a_node_cannot_make_the_platform_buffer_an_answer_far_beyond_max_tokens(
    market: Market,
) -> None:
    """A whole (non-streamed) answer is collected in memory with no cap: a node that ignores
    max_tokens can make the gateway hold as much as it can send in the total deadline
    (here 16 MB for max_tokens=4; at loopback speed, gigabytes in 600 s: every buyer's
    requests die with the process). The buyer is billed at most 4 tokens for it."""
    piece = "x" * 65_536
    runtime = Flood(dialect="ollama", models=(MODEL,), pieces=(piece,) * 256)
    with serve_in_thread(runtime) as url:
        await market.add_node(url, "flood")
        response = await market.http.post(
            "/api/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4},
            headers=_auth(market),
            timeout=60,
        )
    if response.status_code == 200:
        content = response.json()["choices"][0]["message"]["content"]
        usage = response.json()["usage"]
        assert usage["completion_tokens"] <= 4
        # No real token is longer than 78 bytes (billing.md): 4 tokens are at most ~312 bytes.
        assert len(content) <= 4 * 78, f"{len(content)} bytes buffered and relayed for 4 tokens"
    await market.assert_books_balance()


@pytest.mark.parametrize("backend", ["sqlite"])  # a held write lock: each try waits the timeout
async def test_with_the_database_away_every_buyer_gets_its_503_within_the_timeout(
    settings: Settings, simulator: str
) -> None:
    """gateway.md: a request that cannot use the database within INFER_DATABASE_TIMEOUT
    (1 s here) is a 503. The hold group commit splits a failed batch job by job, so each
    queued hold waits out the timeout again, one after another: the tenth buyer waits ten
    timeouts (on PostgreSQL behind a black hole, 2 x 30 s per queued request)."""
    from test_outages import database_outage, platform

    async with (
        database_outage(settings) as (outage_settings, cut, restore),
        platform(outage_settings, simulator) as market,
    ):
        assert (await market.complete()).status_code == 200
        await market.resources.completions.settled()
        await cut()

        async def timed() -> tuple[int, float]:
            begun = time.monotonic()
            response = await market.complete()
            return response.status_code, time.monotonic() - begun

        results = await asyncio.gather(*(timed() for _ in range(10)))
        await restore()
        assert {status for status, _ in results} == {503}
        slowest = max(seconds for _, seconds in results)
        assert slowest < 3.5, f"the last buyer waited {slowest:.1f} s for its 503"
        await market.assert_books_balance()


async def _pg_admin_on(database: str, *statements: str) -> None:
    import asyncpg
    from conftest import POSTGRES_DSN

    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        for statement in statements:
            await admin.execute(statement.replace("{db}", database))
    finally:
        await admin.close()


_KICK = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = '{db}' AND pid <> pg_backend_pid()"
)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_delivered_answer_is_charged_after_a_read_only_spell_of_the_database(
    market: Market,
) -> None:
    """billing.md: "A delivered answer is charged, whatever the database does." A failover
    that leaves the platform on a read-only server for a moment (SQLSTATE 25006; also disk
    full 53100, a cancelled statement 57014) is not `is_transient`: the settlement is run
    once, logged and dropped. The answer is never charged and its hold stays open."""
    runtime = FakeRuntime(
        dialect="ollama", models=(MODEL,), pieces=tuple(f" w{i}" for i in range(20)), interval=0.05
    )
    database = str(market.db.engine.url.database)
    with serve_in_thread(runtime) as url:
        await market.add_node(url, "n1")
        answer = asyncio.ensure_future(
            market.http.post(
                "/api/v1/chat/completions",
                json={"model": MODEL, "messages": MESSAGES},
                headers=_auth(market),
            )
        )
        await asyncio.sleep(0.4)  # the hold is placed; the answer takes 1 s
        await _pg_admin_on(
            database, "ALTER DATABASE {db} SET default_transaction_read_only = on", _KICK
        )
        response = await answer
        assert response.status_code == 200  # delivered
        await asyncio.sleep(1.5)  # its settlement met the read-only server
        await _pg_admin_on(
            database, "ALTER DATABASE {db} RESET default_transaction_read_only", _KICK
        )

        async def charged() -> bool:
            try:
                return len(await market.usage()) == 1
            except Exception:
                return False

        assert await _eventually(charged, 10), "the delivered answer was never charged"
    await market.assert_books_balance()


# SQLite's slower writes keep the writer busy at this load; PostgreSQL needs more of it.
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_read_your_writes_waits_for_this_callers_settlements_not_for_the_load(
    inproc: tuple[AsgiMarket, Any], simulator: str
) -> None:
    """billing.md: every GraphQL request waits for the settlements of answers already sent,
    "at most the linger and one write". `drained()` also waits for every job queued while
    it waits, so under steady completion traffic the writer never goes idle and every
    GraphQL request (log-in, dashboard, balance) waits the full 2 s cap."""
    market, resources = inproc
    await market.add_node(simulator, "sim")
    stop = asyncio.Event()

    async def buyer() -> None:
        while not stop.is_set():
            await market.http.post(
                "/api/v1/chat/completions",
                json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2},
                headers=_auth(market),
            )

    buyers = [asyncio.ensure_future(buyer()) for _ in range(6)]
    try:
        await asyncio.sleep(1.0)
        waits = []
        for _ in range(3):
            begun = time.monotonic()
            await resources.completions.settled()
            waits.append(time.monotonic() - begun)
    finally:
        stop.set()
        await asyncio.gather(*buyers)
    assert max(waits) < 1.0, f"read-your-writes waits under load: {[round(w, 2) for w in waits]}"
    await market.assert_books_balance()
