"""Redis or the database going away: requests degrade (or get 503 / UNAVAILABLE), never crash.

Real outages: a Redis server of the test's own, killed, frozen and restarted on its port;
PostgreSQL behind a loopback proxy that the test cuts and restores; SQLite's write lock
held by another connection. Runtimes are the simulator, served on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import redis
import redis.asyncio
from conftest import CREATE_KEY, PASSWORD, SIGN_UP, http_client, started
from sqlalchemy.engine import make_url
from sqlmodel import select

from infer.audit import ClientInfo
from infer.billing import ledger
from infer.billing.credits import grant_credits
from infer.config import Settings
from infer.models import Hold
from infer.resources import Resources
from infer.security.apikeys import generate_key
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

MODEL = "llama3.2:1b"
REGISTER = """mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"""
LOG_IN = "mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { id email } }"
PRICES = [{"model": MODEL, "inputPerMillion": "1", "outputPerMillion": "2"}]
Outage = Callable[[], Awaitable[None]]  # takes the database away, or gives it back
COMPLETION = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of this test's own, which it can kill, freeze and start again."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        assert self._process is not None
        self._process.kill()
        self._process.wait()

    def freeze(self) -> None:
        """Connections are still accepted, but nothing is answered (a hung Redis)."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def keys(self, pattern: str) -> list[bytes]:
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        with contextlib.closing(client):
            return list(client.scan_iter(match=pattern))

    def subscribers(self, channel: str) -> int:
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        with contextlib.closing(client):
            return int(client.pubsub_numsub(channel)[0][1])


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    with contextlib.suppress(Exception):
        server.thaw()
    with contextlib.suppress(Exception):
        server.kill()


class Proxy:
    """A TCP proxy on loopback to PostgreSQL that can be cut (connections closed, new ones
    refused) and restored on the same port."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._open:
            writer.transport.abort()
        self._open.clear()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, upstream}
        await asyncio.gather(self._pipe(reader, upstream), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self._open.discard(writer)


@dataclass
class Platform:
    """The app in this process, a buyer with a key and credits, and one simulator node."""

    http: httpx.AsyncClient
    resources: Resources
    buyer_key: str

    async def complete(self) -> httpx.Response:
        return await self.http.post(
            "/api/v1/chat/completions",
            json=COMPLETION,
            headers={"Authorization": f"Bearer {self.buyer_key}"},
        )

    async def log_in(self) -> dict[str, object]:
        response = await self.http.post(
            "/graphql",
            json={"query": LOG_IN, "variables": {"e": "buyer@example.com", "p": PASSWORD}},
        )
        assert response.status_code != 500
        body: dict[str, object] = response.json()
        return body

    async def assert_books_balance(self) -> None:
        await self.resources.completions.settled()
        async with self.resources.db.session() as session:
            report = await ledger.check_books(session)
            open_holds = (await session.exec(select(Hold).where(Hold.released_at == None))).all()  # noqa: E711
        assert report.balanced, report
        assert open_holds == []


async def _user(http: httpx.AsyncClient, email: str) -> str:
    await http.post("/graphql", json={"query": SIGN_UP, "variables": {"e": email, "p": PASSWORD}})
    body = (await http.post("/graphql", json={"query": CREATE_KEY, "variables": {"n": "k"}})).json()
    http.cookies.clear()
    return str(body["data"]["createApiKey"]["secret"])


@asynccontextmanager
async def platform(settings: Settings, simulator: str) -> AsyncIterator[Platform]:
    async with started(settings) as (app, resources), http_client(app) as http:
        buyer_key = await _user(http, "buyer@example.com")
        operator_key = await _user(http, "operator@example.com")
        await grant_credits(
            resources.db, email="buyer@example.com", amount=10_000_000, client=ClientInfo.cli()
        )
        variables = {
            "input": {"name": "sim", "runtime": "OLLAMA", "endpoint": simulator, "prices": PRICES}
        }
        node = await http.post(
            "/graphql",
            json={"query": REGISTER, "variables": variables},
            headers={"Authorization": f"Bearer {operator_key}"},
        )
        assert node.json()["data"]["registerNode"]["status"] == "ONLINE", node.text
        yield Platform(http, resources, buyer_key)


@pytest.fixture
def simulator() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as url:
        yield url


def _with_redis(settings: Settings, server: RedisServer, **update: object) -> Settings:
    return settings.model_copy(update={"redis_url": server.url, **update})


async def _eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.1)


# Redis.


async def test_with_redis_gone_completions_and_log_ins_go_on_and_shared_state_resumes(
    settings: Settings,
    redis_server: RedisServer,
    simulator: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="infer")
    prefix = settings.redis_prefix
    async with platform(_with_redis(settings, redis_server), simulator) as market:
        assert (await market.complete()).status_code == 200
        assert redis_server.keys(f"{prefix}:*")  # limits and router figures are shared

        redis_server.kill()
        for _ in range(5):
            assert (await market.complete()).status_code == 200
            assert "errors" not in await market.log_in()
        ready = await market.http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "degraded", "database": "ok", "redis": "degraded"}
        lost = [r for r in caplog.records if r.name == "infer.ratelimit"]
        assert [r.levelname for r in lost] == ["WARNING"]  # once, not once per request

        redis_server.start()  # the same port, empty

        async def ready_again() -> bool:
            return bool((await market.http.get("/readyz")).json()["redis"] == "ok")

        await _eventually(ready_again)
        assert (await market.complete()).status_code == 200
        assert (await market.log_in())["data"]
        assert redis_server.keys(f"{prefix}:{{LIMITER*")  # limits counted in Redis again
        assert redis_server.subscribers(f"{prefix}:api-key-changes") == 1  # revocations too

        async def routing_shared() -> bool:  # the router state's next sync
            return bool(redis_server.keys(f"{prefix}:router:node:*"))

        await _eventually(routing_shared)
        back = [r for r in caplog.records if r.name == "infer.ratelimit"][1:]
        assert [r.levelname for r in back] == ["INFO"]
        await market.assert_books_balance()


async def test_with_redis_gone_limits_still_hold_in_the_process(
    settings: Settings, redis_server: RedisServer, simulator: str
) -> None:
    limited = _with_redis(settings, redis_server, login_limit_address="3/minute")
    async with platform(limited, simulator) as market:
        redis_server.kill()
        wrong = {"e": "buyer@example.com", "p": "not the password at all"}
        codes = []
        for _ in range(4):
            response = await market.http.post(
                "/graphql", json={"query": LOG_IN, "variables": wrong}
            )
            codes.append(response.json()["errors"][0]["extensions"]["code"])
    assert codes == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"]


async def test_a_hung_redis_costs_one_wait_not_one_per_request(
    settings: Settings, redis_server: RedisServer, simulator: str
) -> None:
    async with platform(_with_redis(settings, redis_server), simulator) as market:
        redis_server.freeze()
        started_at = time.monotonic()
        assert (await market.complete()).status_code == 200  # waits out one Redis timeout
        assert time.monotonic() - started_at < 4
        for _ in range(10):
            started_at = time.monotonic()
            assert (await market.complete()).status_code == 200
            assert time.monotonic() - started_at < 1
        redis_server.thaw()
        await market.assert_books_balance()


# The database.


@asynccontextmanager
async def database_outage(settings: Settings) -> AsyncIterator[tuple[Settings, Outage, Outage]]:
    """Settings for a platform whose database the test can take away (`cut`) and give back
    (`restore`): PostgreSQL behind a proxy, or SQLite with its write lock held elsewhere."""
    quick = settings.model_copy(update={"database_timeout": 1.0})
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        locker = sqlite3.connect(str(url.database), isolation_level=None)

        async def lock() -> None:
            locker.execute("BEGIN IMMEDIATE")

        async def unlock() -> None:
            locker.execute("ROLLBACK")

        try:
            yield quick, lock, unlock
        finally:
            locker.close()
        return
    proxy = Proxy(url.port or 5432)
    await proxy.start()
    behind = url.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        yield quick.model_copy(update={"database_url": behind}), proxy.cut, proxy.start
    finally:
        with contextlib.suppress(Exception):
            await proxy.cut()


async def test_with_the_database_gone_the_api_says_503_and_graphql_unavailable_then_recovers(
    settings: Settings, simulator: str
) -> None:
    async with (
        database_outage(settings) as (outage_settings, cut, restore),
        platform(outage_settings, simulator) as market,
    ):
        assert (await market.complete()).status_code == 200
        await market.resources.completions.settled()

        await cut()
        response = await market.complete()
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "service_unavailable"
        assert response.json()["error"]["code"] == "database_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        body = await market.log_in()
        assert body["errors"][0]["extensions"]["code"] == "UNAVAILABLE"  # type: ignore[index]
        if market.resources.db.engine.dialect.name == "postgresql":
            assert (await market.http.get("/readyz")).status_code == 503

        await restore()
        assert (await market.complete()).status_code == 200
        assert (await market.log_in())["data"]
        assert (await market.http.get("/readyz")).status_code == 200
        await market.assert_books_balance()


async def test_an_unreachable_database_tells_nothing_about_it(settings: Settings) -> None:
    unreachable = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://nobody:hunter2@127.0.0.1:9/none"}
    )
    async with started(unreachable) as (app, _), http_client(app) as http:
        response = await http.post(
            "/api/v1/chat/completions",
            json=COMPLETION,
            headers={"authorization": f"Bearer {generate_key()}"},
        )
        graphql = await http.post("/graphql", json={"query": "{ me { id } }"})
        log_in = await http.post(
            "/graphql", json={"query": LOG_IN, "variables": {"e": "a@example.com", "p": PASSWORD}}
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert log_in.json()["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    for text in (response.text, graphql.text, log_in.text):
        assert "hunter2" not in text
        assert "127.0.0.1:9" not in text
