"""Node tunnels end to end: the platform, the agent's TunnelClient, a runtime only it reaches.

Each test serves the platform on loopback with its lifespan, registers a node for a
tunnel, and runs the agent's `TunnelClient` against a simulator (or a scripted runtime)
whose URL only the agent is given: whatever the buyer gets came through the tunnel.
Where money moves the books are checked exactly: tokens times prices, the buyer's debit is
the operator's credit plus the fee, no hold left open.

A flood of streams on one tunnel (more than MAX_STREAMS at once) cannot be raised
through the gateway, whose node capacity admits far fewer; the platform's refusal is
tested on `Tunnel` itself here, the agent's in test_agent_tunnel.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from chat_market import CREDITS, assert_nothing_charged
from runtimes import FakeRuntime
from test_gateway import MESSAGES, MODEL, Market
from test_tunnel import agent, drained, gql, node_row, tunnel_node, tunnel_rows
from websockets.exceptions import ConnectionClosed

from infer.agent.tunnel import Backoff, TunnelClient
from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.errors import UpstreamError
from infer.models import NodeStatus, UsageRecord
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread
from infer.tunnel import protocol
from infer.tunnel.session import Tunnel

QUICK = Backoff(first=0.05, cap=0.2, reset_after=60.0)
DEADLINE = 30.0  # seconds any awaited state may take before the test fails


@pytest.fixture
def flow_settings(settings: Settings) -> Settings:
    # The default interval: a connected tunnel's node must be served after the one check
    # its connection triggers, not after a sweep or a confirming check.
    return settings.model_copy(update={"health_interval": 60.0})


@pytest.fixture
async def market(flow_settings: Settings, db: Database) -> AsyncIterator[Market]:
    with serve_in_thread(create_app(flow_settings), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=CREDITS)
        try:
            yield market
        finally:
            await market.close()


@pytest.fixture
def simulator() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as url:
        yield url


@contextlib.contextmanager
def tunnel_agent(platform: str, node_id: str, key: str, runtime: str) -> Iterator[TunnelClient]:
    """The agent's side, connected out to `platform`, calling `runtime` (its own) only."""
    client = TunnelClient(
        platform=platform, node_id=node_id, node_key=key, runtime_url=runtime, backoff=QUICK
    )
    client.start()
    try:
        yield client
    finally:
        client.stop()


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll `check` until it holds; fail naming `what` after DEADLINE."""
    end = time.monotonic() + DEADLINE
    while not await _value(check()):
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def _value(result: Awaitable[bool] | bool) -> bool:
    return result if isinstance(result, bool) else await result


async def served(market: Market, node_id: str) -> None:
    """The node is ONLINE (its checks ran over the tunnel) and the gateway offers its model."""

    async def ready() -> bool:
        if (await node_row(market, node_id)).status != NodeStatus.ONLINE:
            return False
        models = await market.http.get(
            "/api/v1/models", headers={"Authorization": f"Bearer {market.buyer_key}"}
        )
        return MODEL in {m["id"] for m in models.json().get("data", [])}

    await eventually(ready, f"node {node_id} online and routed")


async def offline(market: Market, node_id: str) -> None:
    async def down() -> bool:
        return (await node_row(market, node_id)).status == NodeStatus.OFFLINE

    await eventually(down, f"node {node_id} offline")


def chat(market: Market, **body: object) -> dict[str, Any]:
    return {
        "method": "POST",
        "url": "/api/v1/chat/completions",
        "json": {"model": MODEL, "messages": MESSAGES, **body},
        "headers": {"Authorization": f"Bearer {market.buyer_key}"},
    }


def direct(simulator: str, **body: object) -> dict[str, Any]:
    """What the simulator answers when called directly (the test may; the platform cannot)."""
    payload = {"model": MODEL, "messages": MESSAGES, **body}
    answer: dict[str, Any] = httpx.post(
        f"{simulator}/v1/chat/completions", json=payload, timeout=10
    ).json()
    return answer


def events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


async def assert_billed_exactly(market: Market, records: list[UsageRecord]) -> None:
    """Each record is its tokens times the node's prices; buyer paid = operator got + fee."""
    cost = 0
    for record in records:
        assert record.cost == record.prompt_tokens * 1 + record.completion_tokens * 2
        assert record.cost == record.operator_earning + record.platform_fee
        cost += record.cost
    assert await market.balance("buyer@example.com") == CREDITS - cost
    earned = sum(record.operator_earning for record in records)
    assert await market.balance("operator@example.com") == earned
    await market.assert_books_balance()


async def test_a_tunnelled_node_serves_streamed_and_whole_completions_billed_exactly(
    market: Market, simulator: str
) -> None:
    node_id = await tunnel_node(market)
    assert (await node_row(market, node_id)).status == NodeStatus.OFFLINE  # no tunnel yet
    with tunnel_agent(market.url, node_id, market.operator_key, simulator):
        await served(market, node_id)
        # Online after the one check its connection triggered (offline for want of a
        # tunnel is not a runtime to watch recover over two checks).
        assert (await node_row(market, node_id)).consecutive_successes == 1
        async with market.http.stream(
            **chat(market, seed=3, max_tokens=40, stream=True)
        ) as response:
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines() if line]
        whole = await market.http.request(**chat(market, seed=4, max_tokens=30))
    streamed = events(lines)
    assert lines[-1] == "data: [DONE]"
    assert (
        text_of(streamed)
        == direct(simulator, seed=3, max_tokens=40)["choices"][0]["message"]["content"]
    )
    expected = direct(simulator, seed=4, max_tokens=30)
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"] == expected["choices"]
    assert whole.json()["usage"]["completion_tokens"] == expected["usage"]["completion_tokens"]
    records = await market.usage()
    assert sorted(r.status for r in records) == ["completed", "completed"]
    assert {str(r.node_id) for r in records} == {node_id}
    assert not any(r.estimated for r in records)
    await assert_billed_exactly(market, records)


async def test_a_buyer_who_stops_reading_does_not_hold_up_another(market: Market) -> None:
    # Long answers (~0.6 MB each). On loopback the sockets' buffers may take all of the
    # stalled answer, so this shows the other buyer unaffected, not the window closing:
    # the agent stopping at the window is test_agent_tunnel.py's.
    config = SimulatorConfig(models=(MODEL,), seed=7, length_range=(3000, 3000))
    with serve_simulator_in_thread(config) as simulator:
        node_id = await tunnel_node(market)
        with tunnel_agent(market.url, node_id, market.operator_key, simulator):
            await served(market, node_id)
            fast_done = asyncio.Event()

            async def slow() -> str:
                async with market.http.stream(**chat(market, stream=True)) as response:
                    parts = response.aiter_bytes(512)
                    received = [await anext(parts)]
                    await asyncio.wait_for(fast_done.wait(), DEADLINE)  # stalled meanwhile
                    async for part in parts:
                        received.append(part)
                        await asyncio.sleep(0)  # a chunk at a time
                return b"".join(received).decode()

            async def fast() -> str:
                async with market.http.stream(**chat(market, stream=True)) as response:
                    body = (await response.aread()).decode()
                fast_done.set()
                return body

            slow_body, fast_body = await asyncio.gather(slow(), fast())
    for body in (slow_body, fast_body):
        lines = [line for line in body.splitlines() if line]
        assert lines[-1] == "data: [DONE]"
        assert len(text_of(events(lines)).split()) > 1000
    records = await market.usage()
    assert [r.status for r in records] == ["completed", "completed"]
    await assert_billed_exactly(market, records)


async def test_a_tunnel_dropped_mid_stream_ends_the_answer_with_an_error_and_the_node_offline(
    market: Market,
) -> None:
    config = SimulatorConfig(models=(MODEL,), seed=7, tokens_per_second=50)
    with serve_simulator_in_thread(config) as simulator:
        node_id = await tunnel_node(market)
        client = TunnelClient(
            platform=market.url,
            node_id=node_id,
            node_key=market.operator_key,
            runtime_url=simulator,
            backoff=QUICK,
        )
        client.start()
        try:
            await served(market, node_id)
            lines: list[str] = []
            async with market.http.stream(**chat(market, max_tokens=500, stream=True)) as response:
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    lines.append(line)
                    if len(events(lines)) == 5 and client.state.state == "connected":
                        await asyncio.to_thread(client.stop)
        finally:
            client.stop()
        await offline(market, node_id)
    chunks = events(lines)
    assert lines[-1] == "data: [DONE]"
    assert "error" in chunks[-1], chunks[-1]
    relayed = [c for c in chunks if c.get("choices")]
    [record] = await market.usage()
    assert record.status == "upstream_error"
    assert 5 <= record.completion_tokens < 500
    assert record.completion_tokens == len(relayed)
    assert (await node_row(market, node_id)).status_reason == "the agent's tunnel closed"
    assert await tunnel_rows(market) == []
    await assert_billed_exactly(market, [record])


async def test_the_agent_reconnects_by_itself_and_serves_without_registering_again(
    market: Market, simulator: str
) -> None:
    node_id = await tunnel_node(market)
    with tunnel_agent(market.url, node_id, market.operator_key, simulator):
        await served(market, node_id)
        first = (await tunnel_rows(market))[0].session
        # Another connection for the node makes the platform close the agent's (4409);
        # the agent, reconnecting by itself, takes the node back the same way.
        async with agent(market, node_id) as usurper:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(drained(usurper), DEADLINE)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == protocol.CLOSE_REPLACED
        await served(market, node_id)
        [row] = await tunnel_rows(market)
        assert row.session != first
        whole = await market.http.request(**chat(market, seed=4, max_tokens=10))
    assert whole.status_code == 200, whole.text
    nodes = (await gql(market, market.operator_key, "{ me { nodes { id } } }"))["data"]
    assert nodes == {"me": {"nodes": [{"id": node_id}]}}
    await assert_billed_exactly(market, await market.usage())


@contextlib.contextmanager
def replica(settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        yield url


async def test_a_buyer_on_another_replica_is_served_through_the_hop(
    flow_settings: Settings, db: Database, simulator: str
) -> None:
    with contextlib.ExitStack() as replica_a, replica(flow_settings) as url_b:
        url_a = replica_a.enter_context(replica(flow_settings))
        on_a = Market(url_a, db)
        await on_a.setup(credits=CREDITS)
        on_b = Market(url_b, db)
        on_b.buyer_key, on_b.operator_key = on_a.buyer_key, on_a.operator_key
        try:
            node_id = await tunnel_node(on_a)
            with tunnel_agent(url_a, node_id, on_a.operator_key, simulator):
                await served(on_b, node_id)
                [row] = await tunnel_rows(on_b)
                async with on_b.http.stream(
                    **chat(on_b, seed=3, max_tokens=40, stream=True)
                ) as response:
                    lines = [line async for line in response.aiter_lines() if line]
                assert (
                    text_of(events(lines))
                    == direct(simulator, seed=3, max_tokens=40)["choices"][0]["message"]["content"]
                )
                [record] = await on_b.usage()
                assert record.status == "completed"
                await assert_billed_exactly(on_b, [record])
                replica_a.close()  # replica A stops: its tunnel drops with it
                await offline(on_b, node_id)
                assert await tunnel_rows(on_b) == []
                refused = await on_b.http.request(**chat(on_b, max_tokens=5))
                assert refused.status_code >= 400
                assert len(await on_b.usage()) == 1
                await assert_billed_exactly(on_b, [record])
            # The agent, pointed at B (as a load balancer would), serves again.
            with tunnel_agent(url_b, node_id, on_b.operator_key, simulator):
                await served(on_b, node_id)
                assert [r.replica for r in await tunnel_rows(on_b)] != [row.replica]
                whole = await on_b.http.request(**chat(on_b, seed=4, max_tokens=10))
            assert whole.status_code == 200, whole.text
            await assert_billed_exactly(on_b, await on_b.usage())
        finally:
            await on_a.close()
            await on_b.close()


async def test_a_buyer_who_leaves_mid_stream_hangs_up_on_the_runtime_and_pays_for_what_came(
    market: Market,
) -> None:
    runtime = FakeRuntime(
        dialect="ollama", models=(MODEL,), pieces=tuple(f" w{i}" for i in range(200)), interval=0.02
    )
    with serve_in_thread(runtime) as box:
        node_id = await tunnel_node(market)
        with tunnel_agent(market.url, node_id, market.operator_key, box):
            await served(market, node_id)
            received = 0
            async with market.http.stream(**chat(market, max_tokens=200, stream=True)) as response:
                async for line in response.aiter_lines():
                    received += line.startswith("data: ")
                    if received == 5:
                        break

            async def hung_up() -> bool:
                return runtime.disconnected.is_set() and bool(await market.usage())

            await eventually(hung_up, "the runtime saw the buyer leave")
    [record] = await market.usage()
    assert record.status == "client_disconnected"
    assert 5 <= record.completion_tokens < 200
    await assert_billed_exactly(market, [record])


async def test_a_tunnel_refuses_streams_beyond_its_limit_and_serves_the_rest() -> None:
    sent: list[str | bytes] = []

    async def send(message: str | bytes) -> None:
        sent.append(message)

    tunnel = Tunnel(uuid.uuid4(), send, max_streams=3)
    writer = asyncio.create_task(tunnel.write_forever())
    opens = [
        asyncio.create_task(
            tunnel.request("POST", "/api/chat", headers={}, body=b"{}", until=None, url="t")
        )
        for _ in range(3)
    ]
    await eventually(lambda: len(sent) == 6, "three opens and bodies sent")
    with pytest.raises(UpstreamError, match="as many requests as it can"):
        await tunnel.request("POST", "/api/chat", headers={}, body=b"", until=None, url="t")
    tunnel.receive_text(protocol.encode(protocol.Head(1, 200, {})))
    answer = await opens[0]
    tunnel.receive_text(protocol.encode(protocol.Signal("end", 1)))
    assert await answer.read() == b""
    assert tunnel.open_streams == 2
    tunnel.close(protocol.CLOSE_GOING_AWAY, "test over")
    for waiting in opens[1:]:
        with pytest.raises(UpstreamError, match="test over"):
            await waiting
    await writer


async def test_nothing_is_charged_when_the_tunnel_is_not_connected(market: Market) -> None:
    node_id = await tunnel_node(market)
    answer = await market.http.request(**chat(market, max_tokens=5))
    assert answer.status_code >= 400
    assert (await node_row(market, node_id)).status == NodeStatus.OFFLINE
    await assert_nothing_charged(market)
