"""The platform's end of node tunnels: who may open one, what a hostile agent can break.

The platform is served on loopback in a thread; the agent is a raw `websockets` client
scripted frame by frame, so that each test can send exactly what a hostile or broken
agent would. The agent's own client is tested against real platforms in
test_tunnel_flow.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_gateway import MODEL, PRICES, REGISTER, Market
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.models import Node, NodeStatus, NodeTunnel
from infer.simulator import serve_in_thread
from infer.tunnel import protocol

CREATE_SCOPED = """mutation($n: String!, $s: [ApiKeyScope!]) {
  createApiKey(name: $n, scopes: $s) { secret } }"""
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { id } }"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
async def market(settings: Settings, db: Database) -> AsyncIterator[Market]:
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        try:
            yield market
        finally:
            await market.close()


async def gql(market: Market, key: str, query: str, **variables: Any) -> dict[str, Any]:
    response = await market.http.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {key}"},
    )
    body: dict[str, Any] = response.json()
    return body


async def tunnel_node(market: Market, name: str = "box") -> str:
    node = {"name": name, "runtime": "OLLAMA", "tunnel": True, "prices": PRICES}
    body = await gql(market, market.operator_key, REGISTER, input=node)
    return str(body["data"]["registerNode"]["id"])


def tunnel_url(market: Market, node_id: str) -> str:
    return market.url.replace("http://", "ws://") + f"/api/v1/nodes/{node_id}/tunnel"


@contextlib.asynccontextmanager
async def agent(
    market: Market, node_id: str, key: str | None = None
) -> AsyncIterator[ClientConnection]:
    headers = {"Authorization": f"Bearer {key or market.operator_key}"}
    async with connect(
        tunnel_url(market, node_id),
        subprotocols=[Subprotocol(protocol.SUBPROTOCOL)],
        additional_headers=headers,
        max_size=protocol.MAX_MESSAGE,
    ) as ws:
        yield ws


async def refusal(market: Market, node_id: str, key: str | None = None) -> tuple[int, str]:
    """How the platform ends a tunnel it will not take: the close code and reason."""
    async with agent(market, node_id, key) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def drained(ws: ClientConnection) -> None:
    """Read until the platform closes (the check on attach may open a stream first)."""
    while True:
        await ws.recv()


async def node_row(market: Market, node_id: str) -> Node:
    async with market.db.session() as session:
        node = await session.get(Node, uuid.UUID(node_id))
        assert node is not None
        return node


async def tunnel_rows(market: Market) -> list[NodeTunnel]:
    from sqlmodel import select

    async with market.db.session() as session:
        return list((await session.exec(select(NodeTunnel))).all())


async def test_a_node_registered_for_a_tunnel_has_no_endpoint_to_give(market: Market) -> None:
    node_id = await tunnel_node(market)
    query = "{ me { nodes { id endpoint tunnel status statusReason } } }"
    nodes = (await gql(market, market.operator_key, query))["data"]["me"]["nodes"]
    assert nodes == [
        {
            "id": node_id,
            "endpoint": f"tunnel://{node_id}",
            "tunnel": True,
            "status": "OFFLINE",
            "statusReason": "the node's tunnel is not connected",
        }
    ]
    both = {"name": "b", "runtime": "OLLAMA", "tunnel": True, "endpoint": "http://10.0.0.1:1"}
    errors = (await gql(market, market.operator_key, REGISTER, input=both))["errors"]
    assert errors[0]["message"] == "a node reached through a tunnel has no endpoint"
    neither = {"name": "c", "runtime": "OLLAMA"}
    errors = (await gql(market, market.operator_key, REGISTER, input=neither))["errors"]
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_the_platform_greets_a_tunnel_with_its_limits(market: Market) -> None:
    node_id = await tunnel_node(market)
    async with agent(market, node_id) as ws:
        hello = protocol.decode(str(await asyncio.wait_for(ws.recv(), 10)))
        assert hello == protocol.Hello(
            version=1,
            node=node_id,
            window=protocol.WINDOW,
            max_streams=protocol.MAX_STREAMS,
            max_body=protocol.MAX_BODY,
        )
        rows = await tunnel_rows(market)
        assert [str(row.node_id) for row in rows] == [node_id]
        assert rows[0].replica_url is not None
        assert rows[0].replica_url.startswith("http://127.")


async def test_tunnels_without_a_valid_key_are_closed_with_the_reason(market: Market) -> None:
    node_id = await tunnel_node(market)
    assert (await refusal(market, node_id, key="inf_" + "x" * 40))[0] == protocol.CLOSE_UNAUTHORIZED
    async with connect(
        tunnel_url(market, node_id), subprotocols=[Subprotocol(protocol.SUBPROTOCOL)]
    ) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == protocol.CLOSE_UNAUTHORIZED


async def test_a_revoked_key_cannot_open_a_tunnel(market: Market) -> None:
    node_id = await tunnel_node(market)
    keys = await gql(market, market.operator_key, "{ me { apiKeys { id } } }")
    # A second key with the same powers, then revoked.
    secret = (await gql(market, market.operator_key, CREATE_SCOPED, n="node", s=["NODES"]))["data"][
        "createApiKey"
    ]["secret"]
    after = await gql(market, market.operator_key, "{ me { apiKeys { id } } }")
    new_id = next(
        k["id"] for k in after["data"]["me"]["apiKeys"] if k not in keys["data"]["me"]["apiKeys"]
    )
    await gql(market, market.operator_key, REVOKE, id=new_id)
    code, reason = await refusal(market, node_id, key=secret)
    assert code == protocol.CLOSE_UNAUTHORIZED
    assert "revoked" in reason


async def test_a_key_that_may_not_serve_nodes_cannot_open_a_tunnel(market: Market) -> None:
    node_id = await tunnel_node(market)
    gateway_only = (await gql(market, market.operator_key, CREATE_SCOPED, n="g", s=["GATEWAY"]))[
        "data"
    ]["createApiKey"]["secret"]
    code, reason = await refusal(market, node_id, key=gateway_only)
    assert code == protocol.CLOSE_FORBIDDEN
    assert "NODES" in reason


async def test_an_operator_cannot_open_a_tunnel_for_another_operators_node(
    market: Market,
) -> None:
    node_id = await tunnel_node(market)
    code, reason = await refusal(market, node_id, key=market.buyer_key)
    assert (code, reason) == (protocol.CLOSE_FORBIDDEN, "this node belongs to another operator")
    assert await tunnel_rows(market) == []


async def test_nodes_that_are_not_tunnelled_or_do_not_exist_refuse_a_tunnel(
    market: Market,
) -> None:
    direct = await gql(
        market,
        market.operator_key,
        REGISTER,
        input={
            "name": "d",
            "runtime": "OLLAMA",
            "endpoint": "http://127.0.0.1:9",
            "prices": PRICES,
        },
    )
    direct_id = direct["data"]["registerNode"]["id"]
    assert await refusal(market, direct_id) == (
        protocol.CLOSE_NOT_FOUND,
        "this node is not registered for a tunnel",
    )
    assert (await refusal(market, str(uuid.uuid4())))[0] == protocol.CLOSE_NOT_FOUND
    assert (await refusal(market, "not-a-uuid"))[0] == protocol.CLOSE_NOT_FOUND


@pytest.mark.parametrize(
    "garbage",
    [
        "not json",
        "[1, 2]",
        json.dumps({"t": "open", "id": 1, "method": "GET", "path": "/", "length": 0}),
        json.dumps({"t": "head", "id": "one", "status": 200}),
        json.dumps({"t": "head", "id": 1, "status": 200, "headers": {"X\r\n": "v"}}),
        b"\x00\x01",
        "x" * (protocol.MAX_TEXT + 1),
    ],
    ids=["text", "array", "platform-only", "bad-id", "bad-header", "short-binary", "huge"],
)
async def test_a_malformed_message_closes_that_tunnel_only(
    market: Market, garbage: str | bytes
) -> None:
    hostile, other = await tunnel_node(market, "hostile"), await tunnel_node(market, "other")
    async with agent(market, other) as calm, agent(market, hostile) as ws:
        await ws.recv()
        await calm.recv()
        await ws.send(garbage)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(drained(ws), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code in (protocol.CLOSE_PROTOCOL, protocol.CLOSE_TOO_BIG)
        for _ in range(200):  # the platform forgets the hostile tunnel (its row goes)
            if [str(row.node_id) for row in await tunnel_rows(market)] == [other]:
                break
            await asyncio.sleep(0.05)
        assert [str(row.node_id) for row in await tunnel_rows(market)] == [other]
        await calm.ping()  # the other tunnel is as it was


async def test_a_dropped_tunnel_takes_its_node_offline_at_once(market: Market) -> None:
    node_id = await tunnel_node(market)
    async with agent(market, node_id) as ws:
        await ws.recv()
        async with market.db.transaction() as session:  # as if its checks had passed
            node = await session.get(Node, uuid.UUID(node_id))
            assert node is not None
            node.status = NodeStatus.ONLINE
    for _ in range(100):
        node = await node_row(market, node_id)
        if node.status == NodeStatus.OFFLINE:
            break
        await asyncio.sleep(0.05)
    assert node.status == NodeStatus.OFFLINE
    assert "tunnel" in (node.status_reason or "")
    assert await tunnel_rows(market) == []


async def test_while_the_database_is_away_tunnels_are_refused_then_taken_and_dropped_ones_recorded(
    settings: Settings, db: Database
) -> None:
    from test_outages import database_outage

    async with database_outage(settings) as (outage_settings, cut, restore):
        with serve_in_thread(create_app(outage_settings), lifespan="on") as url:
            market = Market(url, db)
            await market.setup(credits=0)
            try:
                node_id = await tunnel_node(market)
                await cut()
                code, reason = await refusal(market, node_id)
                assert (code, reason) == (
                    1011,
                    "the platform cannot take tunnels now; try again later",
                )
                await restore()
                async with agent(market, node_id) as ws:
                    assert isinstance(protocol.decode(str(await ws.recv())), protocol.Hello)
                    await cut()  # the tunnel drops while its end cannot be written down
                await asyncio.sleep(0.5)
                await restore()
                for _ in range(400):  # written once the database is back (retried every 5 s)
                    if not await tunnel_rows(market):
                        break
                    await asyncio.sleep(0.05)
                assert await tunnel_rows(market) == []
                assert (await node_row(market, node_id)).status == NodeStatus.OFFLINE
            finally:
                await market.close()


async def test_a_tunnel_that_moves_to_another_process_is_closed_on_the_first(
    settings: Settings, market: Market
) -> None:
    """The agent reconnected elsewhere before the first process noticed its connection drop."""
    node_id = await tunnel_node(market)
    with serve_in_thread(create_app(settings), lifespan="on") as other_url:
        other = Market(other_url, market.db)
        other.operator_key = market.operator_key
        try:
            async with agent(market, node_id) as old:
                await old.recv()
                [first] = await tunnel_rows(market)
                async with agent(other, node_id) as new:
                    assert isinstance(protocol.decode(str(await new.recv())), protocol.Hello)
                    with pytest.raises(ConnectionClosed) as closed:
                        await asyncio.wait_for(drained(old), 10)
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == protocol.CLOSE_REPLACED
                    [row] = await tunnel_rows(market)  # the other process holds it now
                    assert (row.replica, row.session) != (first.replica, first.session)
        finally:
            await other.close()


async def test_the_replica_hop_refuses_what_is_not_signed(market: Market) -> None:
    import hashlib

    import httpx

    node_id = await tunnel_node(market)
    async with agent(market, node_id) as ws:
        await ws.recv()
        [row] = await tunnel_rows(market)
        assert row.replica_url is not None
        stamp = str(int(time.time()))
        fields = {
            "x-infer-hop-node": node_id,
            "x-infer-hop-method": "GET",
            "x-infer-hop-path": "/api/tags",
            "x-infer-hop-time": stamp,
        }
        forged = hashlib.sha256(b"not the key").hexdigest()
        async with httpx.AsyncClient(base_url=row.replica_url) as hop:
            unsigned = await hop.post("/tunnel-hop", headers=fields)
            wrong = await hop.post(
                "/tunnel-hop", headers=fields | {"x-infer-hop-signature": forged}
            )
            stale = await hop.post(
                "/tunnel-hop",
                headers=fields | {"x-infer-hop-time": "1", "x-infer-hop-signature": forged},
            )
            junk = await hop.post("/tunnel-hop", headers={"x-infer-hop-node": "x"})
            elsewhere = await hop.get("/api/v1/models")
        for answer in (unsigned, wrong, stale):
            assert answer.status_code == 403
            assert answer.headers["x-infer-hop-error"] == "the hop's signature is not valid"
        assert junk.status_code == 400
        assert elsewhere.status_code == 404  # the hop's listener serves the hop and nothing else
        await ws.ping()  # the tunnel never saw any of it


async def test_the_replica_hop_listener_leaves_the_public_servers_access_log_on(
    settings: Settings,
) -> None:
    import logging

    from conftest import started

    access = logging.getLogger("uvicorn.access")
    access.propagate = True  # as `infer serve` leaves it (other tests' servers turn it off)
    async with started(settings) as (_, resources):
        assert resources.tunnels.replica.url is not None  # the hop's listener is up
        assert access.propagate, "starting the hop's listener silenced the access log"


async def test_an_agent_reconnecting_in_a_loop_is_held_off(
    settings: Settings, db: Database
) -> None:
    limited = settings.model_copy(update={"tunnel_limit_node": "2/minute"})
    with serve_in_thread(create_app(limited), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=0)
        try:
            node_id = await tunnel_node(market)
            for _ in range(2):
                async with agent(market, node_id) as ws:
                    assert isinstance(protocol.decode(str(await ws.recv())), protocol.Hello)
            code, reason = await refusal(market, node_id)
            assert code == protocol.CLOSE_TOO_MANY
            assert "too often" in reason
            other = await tunnel_node(market, "other")  # counted per node
            async with agent(market, other) as ws:
                assert isinstance(protocol.decode(str(await ws.recv())), protocol.Hello)
        finally:
            await market.close()


async def test_a_strangers_hop_is_refused_before_its_body_is_read(market: Market) -> None:
    node_id = await tunnel_node(market)
    async with agent(market, node_id) as ws:
        await ws.recv()
        [row] = await tunnel_rows(market)
        assert row.replica_url is not None
        host, port = row.replica_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        stamp = str(int(time.time()))
        writer.write(
            (
                f"POST /tunnel-hop HTTP/1.1\r\nhost: {host}\r\ncontent-length: 30000000\r\n"
                f"x-infer-hop-node: {node_id}\r\nx-infer-hop-method: POST\r\n"
                f"x-infer-hop-path: /api/chat\r\nx-infer-hop-time: {stamp}\r\n"
                f"x-infer-hop-head: {'0' * 64}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        # Answered without one byte of the 30 MB it announced.
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status.startswith(b"HTTP/1.1 403")
