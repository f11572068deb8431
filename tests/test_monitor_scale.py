"""The health monitor at scale: batched claims, bounded probes, its own thread and pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import PASSWORD, SIGN_UP, TEST_ENCRYPTION_KEYS, GraphQLClient, http_client, started
from runtimes import FakeRuntime
from sqlmodel import col, select

from infer.config import Settings
from infer.db import Database, create_engine
from infer.models import HealthCheck, Node, NodeStatus, Runtime, User, utcnow
from infer.nodes.clients.base import Deadlines
from infer.nodes.http import create_http_client
from infer.nodes.monitor import HealthMonitor
from infer.nodes.monitor_thread import MonitorConfig, MonitorThread
from infer.security.crypto import Keyring
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

SIMULATOR = SimulatorConfig(models=("llama3.2:1b",))
KEYRING = Keyring.parse(TEST_ENCRYPTION_KEYS)


@contextlib.contextmanager
def simulators(count: int) -> Iterator[list[str]]:
    """A few runtimes that many node rows share, as a big market's test bed."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve_simulator_in_thread(SIMULATOR)) for _ in range(count)]


async def add_nodes(db: Database, endpoints: list[str], count: int, *, due: bool = True) -> None:
    """`count` nodes of one operator spread over `endpoints`, due now or in an hour."""
    async with db.transaction() as session:
        operator = User(email=f"op-{uuid.uuid4().hex[:8]}@example.com")
        session.add(operator)
        await session.flush()
        when = None if due else utcnow() + timedelta(hours=1)
        session.add_all(
            Node(
                operator_id=operator.id,
                name=f"node-{i}",
                runtime=Runtime.OLLAMA,
                endpoint=endpoints[i % len(endpoints)],
                next_check_at=when,
            )
            for i in range(count)
        )


async def make_due(db: Database) -> None:
    async with db.transaction() as session:
        await session.exec(sa.update(Node).values(next_check_at=None))


async def checked_count(db: Database) -> int:
    async with db.session() as session:
        found = await session.exec(
            select(sa.func.count()).select_from(Node).where(col(Node.last_checked_at).is_not(None))
        )
        return found.one()


async def checks_per_node(db: Database) -> list[int]:
    async with db.session() as session:
        found = await session.exec(
            select(sa.func.count()).select_from(HealthCheck).group_by(col(HealthCheck.node_id))
        )
        return list(found)


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until `check` holds; fails past `within`."""
    started_at = time.monotonic()
    while not await check():
        assert time.monotonic() - started_at < within, "condition not reached in time"
        await asyncio.sleep(0.05)
    return time.monotonic() - started_at


def monitor_config(settings: Settings, **changes: object) -> MonitorConfig:
    config = MonitorConfig(
        database_url=settings.database_url,
        database_timeout=5.0,
        pool_size=4,
        allow_private=True,
        interval=60.0,
        concurrency=64,
        keyring=KEYRING,
        deadlines=Deadlines(health=5.0),
    )
    return MonitorConfig(**{**config.__dict__, **changes})  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def monitor_thread(config: MonitorConfig) -> AsyncIterator[tuple[MonitorThread, list[str]]]:
    """A running monitor thread; the list collects the thread each change was heard on."""
    heard: list[str] = []
    thread = MonitorThread(config, on_change=lambda: heard.append(threading.current_thread().name))
    thread.start()
    try:
        yield thread, heard
    finally:
        await thread.stop(5.0)


async def test_500_nodes_are_checked_within_one_interval_on_a_pool_of_4(
    settings: Settings, db: Database
) -> None:
    interval = 20.0
    with simulators(3) as endpoints:
        await add_nodes(db, endpoints, 520, due=False)
        async with monitor_thread(monitor_config(settings, interval=interval)) as (thread, heard):
            connects = 0

            def counted(*_: object) -> None:
                nonlocal connects
                connects += 1

            sa.event.listen(thread.monitor.db.engine.sync_engine, "connect", counted)
            await make_due(db)
            thread.wake()
            took = await eventually(lambda: _all_checked(db, 520), within=interval)
    assert took < interval
    assert await checks_per_node(db) == [1] * 520  # each once: the claims hand out leases
    if db.engine.dialect.name == "postgresql":
        assert connects <= 4  # its own pool, never overflowing
    assert heard
    assert set(heard) == {threading.current_thread().name}  # heard on the gateway's loop


async def _all_checked(db: Database, count: int) -> bool:
    return await checked_count(db) == count


async def test_two_monitors_on_one_database_split_the_nodes_without_double_checks(
    settings: Settings, db: Database
) -> None:
    with simulators(2) as endpoints:
        await add_nodes(db, endpoints, 300, due=False)
        config = monitor_config(settings, concurrency=16)
        async with monitor_thread(config) as (one, _), monitor_thread(config) as (two, _):
            await asyncio.sleep(0.5)  # their first sweeps found nothing; the next are 60 s off
            await make_due(db)
            counts = await asyncio.gather(one.sweep(), two.sweep())
    assert sum(counts) == 300
    assert min(counts) > 0  # both took part
    assert await checks_per_node(db) == [1] * 300


async def test_hanging_nodes_do_not_delay_the_others_beyond_the_timeout(
    settings: Settings, db: Database
) -> None:
    hanging = FakeRuntime(dialect="ollama", fault="hang")
    timeout = 1.0
    with simulators(1) as endpoints, serve_in_thread(hanging) as stuck:
        await add_nodes(db, [stuck], 40)
        await add_nodes(db, endpoints, 200)
        config = monitor_config(settings, deadlines=Deadlines(health=timeout), concurrency=64)
        async with monitor_thread(config):
            took = await eventually(lambda: _all_checked(db, 240), within=timeout + 10)
        async with db.session() as session:
            offline = (await session.exec(select(Node).where(Node.endpoint == stuck))).all()
    assert took < timeout + 5  # the hanging forty held 40 of 64 slots, one timeout long
    assert {node.status for node in offline} == {NodeStatus.OFFLINE}
    assert all("longer than 1 s" in (node.status_reason or "") for node in offline)


async def test_a_sweep_never_has_more_checks_in_flight_than_its_bound(
    settings: Settings, db: Database
) -> None:
    hanging = FakeRuntime(dialect="ollama", fault="hang")
    with serve_in_thread(hanging) as stuck:
        await add_nodes(db, [stuck], 50)
        config = monitor_config(settings, deadlines=Deadlines(health=1.0), concurrency=8)
        async with monitor_thread(config):
            await asyncio.sleep(0.6)  # the first wave is hanging
            in_flight = len(hanging.seen)
            await eventually(lambda: _all_checked(db, 50), within=20)
    assert in_flight == 8
    assert len(hanging.seen) == 50  # each node once, eight at a time


async def test_the_gateway_answers_at_once_while_the_monitor_sweeps(settings: Settings) -> None:
    hanging = FakeRuntime(dialect="ollama", fault="hang")
    quick = settings.model_copy(update={"health_timeout": 1.0})
    with simulators(2) as endpoints, serve_in_thread(hanging) as stuck:
        async with started(quick) as (app, resources), http_client(app) as http:
            await add_nodes(resources.db, [*endpoints, stuck], 400)
            resources.monitor.wake()
            slowest = 0.0
            while await checked_count(resources.db) < 400:
                began = time.perf_counter()
                assert (await http.get("/healthz")).status_code == 200
                slowest = max(slowest, time.perf_counter() - began)
                await asyncio.sleep(0.01)
            # The sweep ran on the monitor's own thread, not the gateway's loop.
            assert "infer-health-monitor" in {t.name for t in threading.enumerate()}
    assert slowest < 0.25  # generous: a shared, noisy 2-core machine


async def test_wake_checks_a_new_node_at_once_from_any_thread(settings: Settings) -> None:
    with simulators(1) as endpoints:
        async with started(settings) as (_, resources):
            await asyncio.sleep(0.2)  # the first sweep found nothing; the next is a minute off
            await add_nodes(resources.db, endpoints, 1)
            waker = threading.Thread(target=resources.monitor.wake)
            waker.start()
            waker.join()
            took = await eventually(lambda: _all_checked(resources.db, 1), within=5)
    assert took < 2


async def test_register_node_is_checked_through_the_monitors_thread(settings: Settings) -> None:
    with simulators(1) as endpoints:
        async with started(settings) as (app, _), http_client(app) as http:
            graphql = GraphQLClient(http)
            await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
            body = await graphql(
                "mutation($i: RegisterNodeInput!) { registerNode(input: $i) { status } }",
                {"i": {"name": "box", "runtime": "OLLAMA", "endpoint": endpoints[0]}},
            )
    assert body["data"]["registerNode"]["status"] == "ONLINE"  # type: ignore[index]


async def test_the_node_limit_per_operator_is_a_setting(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_nodes_per_operator": 2})
    mutation = "mutation($i: RegisterNodeInput!) { registerNode(input: $i) { id } }"
    with simulators(1) as endpoints:
        async with started(limited) as (app, _), http_client(app) as http:
            graphql = GraphQLClient(http)
            await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
            for name in ("a", "b"):
                node = {"name": name, "runtime": "OLLAMA", "endpoint": endpoints[0]}
                await graphql(mutation, {"i": node})
            node = {"name": "c", "runtime": "OLLAMA", "endpoint": endpoints[0]}
            body = await graphql(mutation, {"i": node}, expect_errors=True)
    assert body["errors"][0]["message"] == "at most 2 nodes per operator"  # type: ignore[index]


async def test_an_exhausted_pool_pauses_the_sweep_with_a_log_line(
    settings: Settings, db: Database, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend != "postgres":
        pytest.skip("SQLite's pool is not a bounded queue")
    engine = create_engine(settings.database_url, pool_size=2, max_overflow=0, timeout=0.3)
    own = Database(engine)
    http = create_http_client(allow_private=True, deadlines=Deadlines())
    monitor = HealthMonitor(own, http, interval=60, keyring=KEYRING, deadlines=Deadlines())
    with simulators(1) as endpoints:
        await add_nodes(db, endpoints, 5)
        held = [await engine.connect() for _ in range(2)]  # someone else took the pool
        caplog.set_level(logging.WARNING, logger="infer.nodes.monitor")
        running = asyncio.create_task(monitor.run_forever())
        await asyncio.sleep(1.0)
        assert not running.done()
        assert "health sweep paused" in caplog.text
        assert await checked_count(db) == 0
        for connection in held:
            await connection.close()
        monitor.wake()
        await eventually(lambda: _all_checked(db, 5), within=10)
        monitor.stop()
        await asyncio.wait_for(running, 10)
    await http.aclose()
    await own.dispose()


async def test_with_a_monitor_process_the_gateway_only_checks_registrations(
    settings: Settings,
) -> None:
    elsewhere = settings.model_copy(update={"health_monitor": "process"})
    with simulators(1) as endpoints:
        async with started(elsewhere) as (app, resources), http_client(app) as http:
            await add_nodes(resources.db, endpoints, 3)
            resources.monitor.wake()
            await asyncio.sleep(1.0)
            assert await checked_count(resources.db) == 0  # the sweeps are another process's
            graphql = GraphQLClient(http)
            await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
            body = await graphql(
                "mutation($i: RegisterNodeInput!) { registerNode(input: $i) { status } }",
                {"i": {"name": "box", "runtime": "OLLAMA", "endpoint": endpoints[0]}},
            )
    assert body["data"]["registerNode"]["status"] == "ONLINE"  # type: ignore[index]


async def test_infer_monitor_checks_the_nodes_and_stops_on_sigterm(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "INFER_DATABASE_URL": settings.database_url,
        "INFER_SECRETS_FILE": str(tmp_path / "secrets.json"),
        "INFER_ENCRYPTION_KEYS": TEST_ENCRYPTION_KEYS,
        "INFER_ALLOW_PRIVATE_ENDPOINTS": "true",
    }
    with simulators(1) as endpoints:
        await add_nodes(db, endpoints, 50)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "infer.cli", "monitor", env=env
        )
        try:
            await eventually(lambda: _all_checked(db, 50), within=30)
            child.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(child.wait(), 15)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert code == 0
    assert await checks_per_node(db) == [1] * 50
