"""Shared fixtures: a fresh database per test, on SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
import redis.asyncio
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from infer.app import create_app
from infer.config import Settings
from infer.db import Database, upgrade_database
from infer.resources import Resources

POSTGRES_DSN = os.environ.get(
    "INFER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("INFER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# CI sets this so an unreachable PostgreSQL or Redis fails the run instead of skipping.
REQUIRE_SERVICES = os.environ.get("INFER_TEST_REQUIRE_SERVICES") == "1"
TEST_ENCRYPTION_KEYS = "1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

_counter = itertools.count()


def _asyncpg_url(dsn: str, database: str) -> str:
    base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def _pg_admin(*statements: str) -> None:
    connection = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _services_reachable() -> str | None:
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL unreachable: {exc}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return f"Redis unreachable: {exc}"
    return None


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_database(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    problem = _services_reachable()
    if problem:
        if REQUIRE_SERVICES:
            pytest.fail(problem)
        pytest.skip(problem)
    name = f"infer_tpl_{os.getpid()}"
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    upgrade_database(_asyncpg_url(POSTGRES_DSN, name))
    yield name
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of its own for this test."""
    if backend == "sqlite":
        path = tmp_path / "infer.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"infer_t_{os.getpid()}_{next(_counter)}"
    # A run killed mid-way may have left one of this name (same process id) behind.
    asyncio.run(
        _pg_admin(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name} TEMPLATE {template}")
    )
    yield _asyncpg_url(POSTGRES_DSN, name)
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def settings(backend: str, database_url: str, tmp_path: Path) -> Iterator[Settings]:
    """The platform's settings for one test; its Redis keys are deleted afterwards."""
    prefix = f"infer-test-{uuid.uuid4().hex}"
    yield Settings(
        database_url=database_url,
        redis_url=REDIS_URL if backend == "postgres" else None,
        redis_prefix=prefix,
        secret_key=SecretStr("test-session-secret-" + "x" * 32),
        lookup_key=SecretStr("test-lookup-secret-" + "y" * 32),
        encryption_keys=SecretStr(TEST_ENCRYPTION_KEYS),
        secrets_file=tmp_path / "secrets.json",
        health_interval=60,
        allow_private_endpoints=True,
    )
    if backend == "postgres":
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        with contextlib.closing(client), contextlib.suppress(redis.RedisError):
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database.from_url(settings.database_url)
    yield database
    await database.dispose()


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[tuple[ASGIApp, Resources]]:
    """The app with its lifespan running, as a server would run it, and its resources."""
    app: Starlette = create_app(settings)
    async with app.router.lifespan_context(app) as state:

        async def served(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})  # a copy per request, as servers do
            await app(scope, receive, send)

        yield served, state["resources"]


def http_client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4321))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000")


@pytest.fixture
async def running_app(settings: Settings) -> AsyncIterator[tuple[ASGIApp, Resources]]:
    async with started(settings) as running:
        yield running


@pytest.fixture
def app(running_app: tuple[ASGIApp, Resources]) -> ASGIApp:
    return running_app[0]


@pytest.fixture
def resources(running_app: tuple[ASGIApp, Resources]) -> Resources:
    return running_app[1]


@pytest.fixture
async def client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as http:
        yield http


class GraphQLClient:
    """Posts operations to /graphql as JSON, the way the dashboard and SDKs do."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def __call__(
        self,
        query: str,
        variables: dict[str, object] | None = None,
        *,
        key: str | None = None,
        expect_errors: bool = False,
    ) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        body: dict[str, object] = response.json()
        if not expect_errors:
            assert "errors" not in body, body
        return body


@pytest.fixture
def graphql(client: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(client)


SIGN_UP = "mutation($e: String!, $p: String!) { signUp(email: $e, password: $p) { id email } }"
CREATE_KEY = "mutation($n: String!) { createApiKey(name: $n) { apiKey { id name prefix } secret } }"
PASSWORD = "correct horse battery staple"


@pytest.fixture
async def user_key(graphql: GraphQLClient) -> str:
    """A signed-up user (ann@example.com) and the secret of an API key of theirs."""
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    body = await graphql(CREATE_KEY, {"n": "default"})
    return str(body["data"]["createApiKey"]["secret"])  # type: ignore[index]


@pytest.fixture
async def redis_client() -> AsyncIterator[tuple[redis.asyncio.Redis, str]]:
    """A Redis client and a fresh key prefix; the prefix's keys are deleted afterwards."""
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        await client.aclose()
        if REQUIRE_SERVICES:
            pytest.fail(f"Redis unreachable: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    prefix = f"infer-test-{uuid.uuid4().hex}"
    yield client, prefix
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
