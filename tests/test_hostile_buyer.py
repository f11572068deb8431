"""Buyers who ask too much, hang up, or stop reading; nodes that vanish mid-answer.

Each test ends with the books balanced and no hold open.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from conftest import POSTGRES_DSN
from pydantic import ValidationError
from runtimes import FakeRuntime
from test_gateway import MESSAGES, MODEL, Market, market, platform_settings, simulator

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.simulator import serve_in_thread

__all__ = ["market", "platform_settings", "simulator"]  # fixtures shared with test_gateway


def _auth(market: Market) -> dict[str, str]:
    return {"Authorization": f"Bearer {market.buyer_key}"}


async def _completion(market: Market, **body: object) -> httpx.Response:
    payload = {"model": MODEL, "messages": MESSAGES, **body}
    return await market.http.post("/api/v1/chat/completions", json=payload, headers=_auth(market))


async def _eventually(check: object, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition did not hold in time")


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
async def test_asking_for_more_tokens_than_the_ceiling_is_a_400_naming_the_param(
    market: Market, simulator: str, param: str
) -> None:
    await market.add_node(simulator, "n1")
    for value in (131_073, 2**63, 10**40):
        response = await _completion(market, **{param: value})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    response = await _completion(market, seed=2**64)
    assert (response.status_code, response.json()["error"]["param"]) == (400, "seed")
    assert await _completion(market, **{param: 131_072}) is not None
    await market.assert_books_balance()


@pytest.mark.parametrize(
    ("param", "value"),
    [("top_k", "many"), ("min_p", 2), ("repeat_penalty", 0), ("logit_bias", {"1": 1000})],
)
async def test_a_bad_value_for_a_runtime_option_is_this_requests_400(
    market: Market, simulator: str, param: str, value: object
) -> None:
    await market.add_node(simulator, "n1")
    response = await _completion(market, **{param: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)
    await market.assert_books_balance()


def test_a_hold_that_could_expire_before_its_request_ends_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="INFER_HOLD_TTL_SECONDS"):
        Settings(hold_ttl_seconds=600, upstream_total_timeout=600)
    with pytest.raises(ValidationError, match="INFER_DEFAULT_MAX_TOKENS"):
        Settings(default_max_tokens=5000, max_tokens_limit=4096)
    with pytest.raises(ValidationError):
        Settings(max_tokens_limit=2**31)


async def test_a_node_deregistered_mid_stream_is_still_paid_and_the_buyer_charged(
    market: Market,
) -> None:
    runtime = FakeRuntime(
        dialect="ollama", models=(MODEL,), pieces=tuple(f" w{i}" for i in range(60)), interval=0.02
    )
    with serve_in_thread(runtime) as url:
        node_id = await market.add_node(url, "leaving")
        chunks = 0
        async with market.http.stream(
            "POST",
            "/api/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "stream": True},
            headers=_auth(market),
        ) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                chunks += 1
                if chunks == 3:
                    body = {"query": "mutation($id: ID!) { deregisterNode(id: $id) }"}
                    gone = await market.http.post(
                        "/graphql",
                        json=body | {"variables": {"id": node_id}},
                        headers={"Authorization": f"Bearer {market.operator_key}"},
                    )
                    assert "errors" not in gone.json(), gone.json()
    [record] = await market.usage()
    assert (record.status, record.node_id, record.completion_tokens) == ("completed", None, 60)
    assert record.cost > 0
    assert await market.balance("operator@example.com") == record.operator_earning > 0
    await market.assert_books_balance()


async def test_a_non_streamed_answer_the_node_breaks_off_costs_nothing(market: Market) -> None:
    runtime = FakeRuntime(dialect="ollama", models=(MODEL,), fault="error_event")
    with serve_in_thread(runtime) as url:
        await market.add_node(url, "breaks")
        before = await market.balance("buyer@example.com")
        response = await _completion(market)
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    assert await market.balance("buyer@example.com") == before
    [record] = await market.usage()
    assert (record.status, record.cost, record.completion_tokens) == ("upstream_error", 0, 0)
    await market.assert_books_balance()


async def test_a_buyer_who_hangs_up_on_a_whole_answer_cancels_the_node_at_once(
    market: Market,
) -> None:
    runtime = FakeRuntime(
        dialect="ollama", models=(MODEL,), pieces=tuple(f" w{i}" for i in range(400)), interval=0.02
    )
    with serve_in_thread(runtime) as url:
        await market.add_node(url, "slow")
        with pytest.raises(httpx.ReadTimeout):
            await market.http.post(
                "/api/v1/chat/completions",
                json={"model": MODEL, "messages": MESSAGES},
                headers=_auth(market),
                timeout=0.6,
            )
        hung_up = time.monotonic()
        await asyncio.to_thread(runtime.disconnected.wait, 5)
        assert runtime.disconnected.is_set()
        assert time.monotonic() - hung_up < 2  # not after the 8 s the answer would take
    await _eventually(market.usage)
    [record] = await market.usage()
    assert record.status == "client_disconnected"
    assert 1 <= record.completion_tokens < 400
    assert record.cost == record.prompt_tokens + 2 * record.completion_tokens
    await market.assert_books_balance()


@pytest.fixture
async def impatient_market(platform_settings: Settings, db: Database) -> AsyncIterator[Market]:
    """A platform that waits 1 s for a buyer who stops reading, and 4 s for any request."""
    settings = platform_settings.model_copy(
        update={"client_write_timeout": 1.0, "upstream_total_timeout": 4.0}
    )
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        yield market
        await market.close()


def _raw_stream_request(market: Market, *, receive_buffer: int) -> socket.socket:
    """A buyer on a bare socket with a small receive buffer, its request sent."""
    host, port = market.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, int(port)))
    body = (
        b'{"model": "%s", "stream": true, "max_tokens": 131072, '
        b'"messages": [{"role": "user", "content": "go"}]}' % MODEL.encode()
    )
    sock.sendall(
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
        b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s"
        % (host.encode(), market.buyer_key.encode(), len(body), body)
    )
    return sock


# ~40 MB of events: far more than the socket buffers between node, platform and buyer take.
FLOOD = (" tok" * 32,) * 131_072


async def test_a_buyer_who_stops_reading_is_cut_off_and_pays_for_what_was_relayed(
    impatient_market: Market,
) -> None:
    market = impatient_market
    runtime = FakeRuntime(dialect="ollama", models=(MODEL,), pieces=FLOOD)
    with serve_in_thread(runtime) as url:
        await market.add_node(url, "fast")
        sock = _raw_stream_request(market, receive_buffer=4096)
        try:
            await _eventually(market.usage, seconds=15)  # settled while the buyer still waits
        finally:
            sock.close()
    [record] = await market.usage()
    assert record.status == "client_timeout"
    assert 0 < record.completion_tokens < len(FLOOD) * 32
    await market.assert_books_balance()


async def test_a_buyer_who_reads_slowly_is_cut_off_at_the_total_deadline(
    impatient_market: Market,
) -> None:
    market = impatient_market
    runtime = FakeRuntime(dialect="ollama", models=(MODEL,), pieces=FLOOD)
    with serve_in_thread(runtime) as url:
        await market.add_node(url, "fast")
        sock = _raw_stream_request(market, receive_buffer=65536)
        sock.settimeout(0.5)
        started, closed_after, last = time.monotonic(), None, b""
        try:
            # A trickle that never stalls for the write timeout: only the total deadline ends it.
            while time.monotonic() - started < 20:
                try:
                    data = await asyncio.to_thread(sock.recv, 65536)
                except TimeoutError:
                    continue
                if not data:  # the platform dropped the connection
                    closed_after = time.monotonic() - started
                    break
                last = data
                await asyncio.sleep(0.02)  # at most ~3 MB/s: the answer outlasts 4 s by far
        finally:
            sock.close()
    assert closed_after is not None
    assert 2.5 < closed_after < 10  # the 4 s deadline (less its 1 s lead), not the write timeout
    assert b"[DONE]" not in last
    await _eventually(market.usage)
    [record] = await market.usage()
    assert record.status == "client_timeout"
    await market.assert_books_balance()


async def test_a_node_too_slow_for_the_total_deadline_is_the_nodes_failure_not_the_buyers(
    impatient_market: Market,
) -> None:
    market = impatient_market
    runtime = FakeRuntime(
        dialect="ollama", models=(MODEL,), pieces=tuple(f" w{i}" for i in range(100)), interval=0.1
    )
    with serve_in_thread(runtime) as url:
        await market.add_node(url, "slow")
        started = time.monotonic()
        async with market.http.stream(
            "POST",
            "/api/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "stream": True},
            headers=_auth(market),
        ) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        assert 3.5 < time.monotonic() - started < 8  # the node's 4 s deadline
    assert '"upstream_timeout"' in lines[-2]  # an error event, then [DONE]
    await _eventually(market.usage)
    [record] = await market.usage()
    assert record.status == "upstream_error"
    await market.assert_books_balance()


@pytest.mark.parametrize("backend", ["postgres"])  # drops a PostgreSQL writer's connection
async def test_a_settlement_survives_the_database_dropping_its_connection(
    market: Market, simulator: str
) -> None:
    await market.add_node(simulator, "n1")
    assert (await _completion(market, max_tokens=8)).status_code == 200
    await market.settled()
    database = market.db.engine.url.database
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        # The settlement writer's connection, found by the statement it last ran.
        dropped = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND query LIKE '%released AS (%'",
            database,
        )
    finally:
        await admin.close()
    assert dropped == 1
    assert (await _completion(market, max_tokens=8)).status_code == 200
    await _eventually(lambda: _count(market, 2))
    records = await market.usage()
    assert len(records) == 2
    assert all(r.cost > 0 for r in records)
    await market.assert_books_balance()


async def _count(market: Market, expected: int) -> bool:
    return len(await market.usage()) == expected
