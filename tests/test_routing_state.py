"""Router state, in memory and in a real Redis: counts, EWMAs, cool-downs, replicas."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import REDIS_URL, REQUIRE_SERVICES
from redis.asyncio import Redis
from redis.exceptions import RedisError

from infer.routing import MemoryRouterState, RedisRouterState, RouterState
from infer.routing.state import EWMA_ALPHA

Factory = Callable[[], RouterState]


@pytest.fixture
async def redis_client() -> AsyncIterator[tuple[Redis, str]]:
    client = Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
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


@pytest.fixture(params=["memory", "redis"])
def new_state(request: pytest.FixtureRequest) -> Factory:
    """Makes states that share one store: each call is another replica (Redis)."""
    if request.param == "memory":
        shared = MemoryRouterState()
        return lambda: shared
    client, prefix = request.getfixturevalue("redis_client")
    return lambda: RedisRouterState(client, prefix)


async def test_acquire_and_release_count_requests_in_flight(new_state: Factory) -> None:
    state, node = new_state(), uuid.uuid4()
    await state.acquire(node)
    await state.acquire(node)
    assert (await state.snapshot([node]))[node].in_flight == 2
    await state.release(node, ok=True)
    assert (await state.snapshot([node]))[node].in_flight == 1


async def test_a_node_never_seen_has_default_stats(new_state: Factory) -> None:
    state, node = new_state(), uuid.uuid4()
    stats = (await state.snapshot([node]))[node]
    assert (stats.in_flight, stats.ttft_ms_ewma, stats.error_ewma) == (0, None, 0.0)


async def test_releases_update_the_latency_ewmas(new_state: Factory) -> None:
    state, node = new_state(), uuid.uuid4()
    for ttft in (100.0, 200.0):
        await state.acquire(node)
        await state.release(node, ok=True, ttft_ms=ttft, tokens_per_second=50.0)
    stats = (await state.snapshot([node]))[node]
    assert stats.ttft_ms_ewma == pytest.approx(100 + EWMA_ALPHA * 100)
    assert stats.tokens_per_second_ewma == pytest.approx(50.0)


async def test_a_health_check_seeds_latency_only_until_traffic_measures_it(
    new_state: Factory,
) -> None:
    state, node = new_state(), uuid.uuid4()
    await state.seed(node, 40.0)
    assert (await state.snapshot([node]))[node].ttft_ms_ewma == pytest.approx(40.0)
    await state.release(node, ok=True, ttft_ms=140.0)
    await state.seed(node, 10.0)
    assert (await state.snapshot([node]))[node].ttft_ms_ewma == pytest.approx(60.0)


async def test_a_failure_raises_errors_and_cools_the_node_down(new_state: Factory) -> None:
    state, node = new_state(), uuid.uuid4()
    await state.acquire(node)
    await state.release(node, ok=False)
    first = (await state.snapshot([node]))[node]
    assert first.error_ewma == pytest.approx(EWMA_ALPHA, rel=0.01)
    assert time.time() + 3 < first.cooldown_until < time.time() + 6
    await state.release(node, ok=False)
    second = (await state.snapshot([node]))[node]
    assert second.cooldown_until > time.time() + 8  # doubled
    await state.release(node, ok=True)
    after = (await state.snapshot([node]))[node]
    assert after.consecutive_failures == 0
    assert after.error_ewma < second.error_ewma


async def test_concurrent_requests_leave_nothing_in_flight(new_state: Factory) -> None:
    state, node = new_state(), uuid.uuid4()

    async def request(i: int) -> None:
        await state.acquire(node)
        await asyncio.sleep(0.001 * (i % 5))
        await state.release(node, ok=True, ttft_ms=float(i))

    await asyncio.gather(*(request(i) for i in range(100)))
    assert (await state.snapshot([node]))[node].in_flight == 0


async def test_replicas_see_each_others_requests(new_state: Factory) -> None:
    one, two, node = new_state(), new_state(), uuid.uuid4()
    await one.acquire(node)
    await two.acquire(node)
    assert (await one.snapshot([node]))[node].in_flight == 2
    await two.release(node, ok=True, ttft_ms=80.0)
    stats = (await one.snapshot([node]))[node]
    assert stats.in_flight == 1
    assert stats.ttft_ms_ewma == pytest.approx(80.0)


async def test_requests_of_a_silent_replica_stop_counting(
    redis_client: tuple[Redis, str],
) -> None:
    client, prefix = redis_client
    node = uuid.uuid4()
    dead = RedisRouterState(client, prefix)
    await dead.acquire(node)
    await dead.acquire(node)
    # Another replica, for which a replica silent for 0.2 s is gone.
    alive = RedisRouterState(client, prefix, replica_ttl_seconds=0.2)
    assert (await alive.snapshot([node]))[node].in_flight == 2
    await asyncio.sleep(0.3)
    assert (await alive.snapshot([node]))[node].in_flight == 0


async def test_a_lost_write_is_put_right_by_the_next_one(
    redis_client: tuple[Redis, str],
) -> None:
    client, prefix = redis_client
    state, node = RedisRouterState(client, prefix), uuid.uuid4()
    await state.acquire(node)
    [field] = [f for f in await client.hkeys(state.node_key(node)) if f.startswith(b"r:")]
    await client.hset(state.node_key(node), field, 7)  # as if a release had been lost
    assert (await state.snapshot([node]))[node].in_flight == 7
    await state.acquire(node)
    await state.release(node, ok=True)
    assert (await state.snapshot([node]))[node].in_flight == 1
