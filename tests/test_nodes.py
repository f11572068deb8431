"""The node registry and health monitor, against real runtimes on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from conftest import PASSWORD, SIGN_UP, GraphQLClient, http_client, started
from runtimes import FakeRuntime
from sqlmodel import select
from starlette.types import ASGIApp, Receive, Scope, Send

from infer.config import Settings
from infer.db import Database
from infer.models import HealthCheck, Node, Notification
from infer.resources import Resources
from infer.simulator import (
    SimulatorConfig,
    create_simulator_app,
    serve_in_thread,
    serve_simulator_in_thread,
)

REGISTER = """
mutation($input: RegisterNodeInput!) {
  registerNode(input: $input) {
    id name status statusReason hasToken endpoint
    models { name available inputPerMillion outputPerMillion }
  }
}"""
NODE = "query($id: ID!) { node(id: $id) { id status statusReason models { name available } } }"
ME_NODES = "{ me { nodes { id name runtime status models { name available } } } }"
SIMULATOR = SimulatorConfig(models=("llama3.2:1b", "qwen2.5:0.5b"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _code(body: dict[str, object]) -> str:
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


def _input(endpoint: str, **extra: object) -> dict[str, object]:
    return {"name": "box-1", "runtime": "OLLAMA", "endpoint": endpoint, **extra}


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_registered_simulator_is_online_at_once_with_its_models(
    graphql: GraphQLClient, user_key: str
) -> None:
    with serve_simulator_in_thread(SIMULATOR) as url:
        prices = [{"model": "llama3.2:1b", "inputPerMillion": "0.10", "outputPerMillion": "0.20"}]
        body = await graphql(REGISTER, {"input": _input(url + "/", prices=prices)}, key=user_key)
    node = body["data"]["registerNode"]  # type: ignore[index]
    assert node["status"] == "ONLINE"
    assert node["endpoint"] == url
    models = {m["name"]: m for m in node["models"]}
    assert set(models) == {"llama3.2:1b", "qwen2.5:0.5b"}
    assert models["llama3.2:1b"]["inputPerMillion"] == "0.10"
    assert all(m["available"] for m in models.values())
    listed = await graphql(ME_NODES, key=user_key)
    assert [n["id"] for n in listed["data"]["me"]["nodes"]] == [node["id"]]  # type: ignore[index]


async def test_registering_the_same_name_again_updates_the_node(
    graphql: GraphQLClient, user_key: str
) -> None:
    with serve_simulator_in_thread(SIMULATOR) as url:
        first = await graphql(REGISTER, {"input": _input(url)}, key=user_key)
        prices = [{"model": "qwen2.5:0.5b", "inputPerMillion": "1", "outputPerMillion": "2"}]
        second = await graphql(REGISTER, {"input": _input(url, prices=prices)}, key=user_key)
    assert first["data"]["registerNode"]["id"] == second["data"]["registerNode"]["id"]  # type: ignore[index]
    listed = await graphql(ME_NODES, key=user_key)
    assert len(listed["data"]["me"]["nodes"]) == 1  # type: ignore[index]


async def test_an_unreachable_endpoint_gives_an_offline_node_with_the_reason(
    graphql: GraphQLClient, user_key: str
) -> None:
    body = await graphql(
        REGISTER, {"input": _input(f"http://127.0.0.1:{_free_port()}")}, key=user_key
    )
    node = body["data"]["registerNode"]  # type: ignore[index]
    assert node["status"] == "OFFLINE"
    assert node["statusReason"]


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ("http://169.254.169.254/", "metadata"),
        ("http://user:secret@example.com", "credentials"),
        ("ftp://example.com", "http"),
    ],
)
async def test_refused_endpoints_name_the_reason(
    graphql: GraphQLClient, user_key: str, endpoint: str, fragment: str
) -> None:
    body = await graphql(REGISTER, {"input": _input(endpoint)}, key=user_key, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    assert fragment in body["errors"][0]["message"]  # type: ignore[index]
    assert (await graphql(ME_NODES, key=user_key))["data"]["me"]["nodes"] == []  # type: ignore[index]


async def test_loopback_endpoints_are_refused_unless_private_endpoints_are_allowed(
    settings: Settings,
) -> None:
    strict = settings.model_copy(update={"allow_private_endpoints": False})
    async with started(strict) as (app, _), http_client(app) as http:
        graphql = GraphQLClient(http)
        await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
        body = await graphql(
            REGISTER, {"input": _input("http://127.0.0.1:11434")}, expect_errors=True
        )
    assert _code(body) == "BAD_USER_INPUT"
    assert "INFER_ALLOW_PRIVATE_ENDPOINTS" in body["errors"][0]["message"]  # type: ignore[index]


async def test_another_operators_node_looks_like_not_found(graphql: GraphQLClient) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    with serve_simulator_in_thread(SIMULATOR) as url:
        node_id = (await graphql(REGISTER, {"input": _input(url)}))["data"]["registerNode"]["id"]  # type: ignore[index]
    await graphql("mutation { logOut }")
    await graphql(SIGN_UP, {"e": "mallory@example.com", "p": PASSWORD})
    for query, variables in [
        (NODE, {"id": node_id}),
        ("mutation($id: ID!) { deregisterNode(id: $id) }", {"id": node_id}),
        ('mutation($id: ID!) { updateNode(id: $id, input: {name: "x"}) { id } }', {"id": node_id}),
    ]:
        assert _code(await graphql(query, variables, expect_errors=True)) == "NOT_FOUND"


async def test_an_upstream_token_is_stored_encrypted_and_never_shown(
    graphql: GraphQLClient, user_key: str, db: Database
) -> None:
    with serve_simulator_in_thread(SIMULATOR) as url:
        body = await graphql(REGISTER, {"input": _input(url, token="tok-secret-123")}, key=user_key)
    assert body["data"]["registerNode"]["hasToken"] is True  # type: ignore[index]
    assert "tok-secret-123" not in str(body)
    async with db.session() as session:
        node = (await session.exec(select(Node))).one()
    assert node.token_ciphertext is not None
    assert b"tok-secret-123" not in node.token_ciphertext


async def test_deregistering_removes_the_node_and_its_history(
    graphql: GraphQLClient, user_key: str, db: Database
) -> None:
    with serve_simulator_in_thread(SIMULATOR) as url:
        node_id = (await graphql(REGISTER, {"input": _input(url)}, key=user_key))["data"][
            "registerNode"
        ]["id"]  # type: ignore[index]
    assert (
        await graphql(
            "mutation($id: ID!) { deregisterNode(id: $id) }", {"id": node_id}, key=user_key
        )
    )["data"] == {"deregisterNode": True}
    assert (await graphql(ME_NODES, key=user_key))["data"]["me"]["nodes"] == []  # type: ignore[index]
    async with db.session() as session:
        assert (await session.exec(select(HealthCheck))).all() == []


async def _status(db: Database) -> str:
    async with db.session() as session:
        return (await session.exec(select(Node.status))).one().value


def _runtime_app(runtime: str) -> ASGIApp:
    """A real runtime of each kind: the simulator for Ollama, test servers for the others."""
    if runtime == "OLLAMA":
        return create_simulator_app(SIMULATOR)
    return FakeRuntime(dialect="exo" if runtime == "EXO" else "openai", models=("tiny-model",))


@pytest.mark.parametrize("runtime", ["OLLAMA", "EXO", "OPENAI"])
async def test_a_node_goes_offline_when_killed_and_online_when_restarted(
    settings: Settings, db: Database, runtime: str
) -> None:
    fast = settings.model_copy(update={"health_interval": 0.4})
    port = _free_port()
    async with started(fast) as (app, _), http_client(app) as http:
        graphql = GraphQLClient(http)
        await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
        with serve_in_thread(_runtime_app(runtime), port=port) as url:
            await graphql(REGISTER, {"input": _input(url, runtime=runtime)})
            assert await _status(db) == "online"
        await _eventually(lambda: _is(db, "offline"))
        with serve_in_thread(_runtime_app(runtime), port=port):
            await _eventually(lambda: _is(db, "online"))
    async with db.session() as session:
        kinds = [
            n.kind
            for n in (
                await session.exec(select(Notification).order_by(Notification.created_at))
            ).all()
        ]  # type: ignore[arg-type]
        checks = (await session.exec(select(HealthCheck))).all()
    assert kinds[-2:] == ["node_degraded", "node_online"]
    assert "node_offline" in kinds
    assert any(not c.ok for c in checks)
    assert any(c.ok for c in checks)


async def _is(db: Database, status: str) -> bool:
    return await _status(db) == status


async def test_two_replicas_check_each_node_once_per_interval(
    settings: Settings, db: Database
) -> None:
    interval = 0.5
    fast = settings.model_copy(update={"health_interval": interval})
    with serve_simulator_in_thread(SIMULATOR) as url:
        async with started(fast) as (one, _), started(fast), http_client(one) as http:
            graphql = GraphQLClient(http)
            await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
            await graphql(REGISTER, {"input": _input(url)})
            began = time.monotonic()
            await asyncio.sleep(3.0)
            elapsed = time.monotonic() - began
    async with db.session() as session:
        checks = len((await session.exec(select(HealthCheck))).all())
    # One check at registration, then one per interval; two replicas would double it.
    assert checks <= 1 + elapsed / interval + 1
    # The checks keep coming (a busy machine may delay some; the bound above is the point).
    assert checks >= 3


class SlowSecondProbe:
    """An Ollama model list that answers the first probe at once and later ones in 1 s."""

    def __init__(self) -> None:
        self.probes = 0
        self.slow_probe_started = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if scope["path"] != "/api/tags":  # /api/version and /api/ps are optional
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        self.probes += 1
        if self.probes > 1:
            self.slow_probe_started.set()
            await asyncio.sleep(1.0)
        body = b'{"models": [{"name": "llama3.2:1b", "model": "llama3.2:1b"}]}'
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def test_a_health_check_in_progress_at_shutdown_is_recorded(
    settings: Settings, db: Database
) -> None:
    # Shutdown lets the sweep in hand finish instead of cancelling it mid-transaction.
    runtime = SlowSecondProbe()
    fast = settings.model_copy(update={"health_interval": 0.2})
    with serve_in_thread(runtime) as url:
        async with started(fast) as (app, _), http_client(app) as http:
            graphql = GraphQLClient(http)
            await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
            await graphql(REGISTER, {"input": _input(url)})
            await asyncio.to_thread(runtime.slow_probe_started.wait, 10)
        # The app has shut down while the second probe was waiting on the node.
    async with db.session() as session:
        checks = (await session.exec(select(HealthCheck))).all()
    assert runtime.probes == 2
    assert [check.ok for check in checks] == [True, True]


async def test_operators_read_and_clear_their_node_notifications(
    graphql: GraphQLClient, user_key: str
) -> None:
    await graphql(REGISTER, {"input": _input(f"http://127.0.0.1:{_free_port()}")}, key=user_key)
    unread = "{ me { notifications(unreadOnly: true) { id kind message nodeId } } }"
    notes = (await graphql(unread, key=user_key))["data"]["me"]["notifications"]  # type: ignore[index]
    assert [n["kind"] for n in notes] == ["node_offline"]
    assert "box-1" in notes[0]["message"]
    marked = await graphql("mutation { markNotificationsRead }", key=user_key)
    assert marked["data"] == {"markNotificationsRead": 1}
    assert (await graphql(unread, key=user_key))["data"]["me"]["notifications"] == []  # type: ignore[index]


async def test_a_nodes_health_history_is_shown_newest_first(
    graphql: GraphQLClient, user_key: str, resources: Resources
) -> None:
    with serve_simulator_in_thread(SIMULATOR) as url:
        node_id = (await graphql(REGISTER, {"input": _input(url)}, key=user_key))["data"][
            "registerNode"
        ]["id"]  # type: ignore[index]
    await resources.monitor.check_now(uuid.UUID(node_id), force=True)  # now unreachable
    history = "query($id: ID!) { node(id: $id) { healthChecks(last: 5) { ok error } } }"
    checks = (await graphql(history, {"id": node_id}, key=user_key))["data"]["node"]["healthChecks"]  # type: ignore[index]
    assert [c["ok"] for c in checks] == [False, True]
    assert checks[0]["error"]
