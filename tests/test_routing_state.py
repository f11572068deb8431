"""Router state, in memory and in a real Redis: counts, EWMAs, cool-downs, replicas, syncs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from conftest import REDIS_URL
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from infer.routing import MemoryRouterState, RedisRouterState, RouterState
from infer.routing.redis_state import REFRESH_PER_SYNC
from infer.routing.state import EWMA_ALPHA, STALE_SECONDS

Replicas = Callable[..., RedisRouterState]
NO_RETRY = Retry(NoBackoff(), 0)


@pytest.fixture
async def replicas(redis_client: tuple[Redis, str]) -> AsyncIterator[Replicas]:
    """Makes replicas sharing one Redis; they sync only when told, unless `autostart`."""
    client, prefix = redis_client
    made: list[RedisRouterState] = []

    def make(**options: Any) -> RedisRouterState:
        state = RedisRouterState(
            options.pop("client", client), prefix, **{"autostart": False, **options}
        )
        made.append(state)
        return state

    yield make
    for state in made:
        await state.close()


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> RouterState:
    if request.param == "memory":
        return MemoryRouterState()
    make: Replicas = request.getfixturevalue("replicas")
    return make()


async def settled(state: RouterState, node: uuid.UUID) -> Any:
    """The node's stats after a round trip: Redis's figures, not only the local view."""
    if isinstance(state, RedisRouterState):
        await state.snapshot([node])  # a node is synced once this replica knows it
        await state.sync()
    return (await state.snapshot([node]))[node]


async def test_acquire_and_release_count_requests_in_flight(state: RouterState) -> None:
    node = uuid.uuid4()
    await state.acquire(node)
    await state.acquire(node)
    assert (await settled(state, node)).in_flight == 2
    await state.release(node, ok=True)
    assert (await settled(state, node)).in_flight == 1


async def test_a_node_never_seen_has_default_stats(state: RouterState) -> None:
    node = uuid.uuid4()
    stats = await settled(state, node)
    assert (stats.in_flight, stats.ttft_ms_ewma, stats.error_ewma) == (0, None, 0.0)


async def test_releases_update_the_latency_ewmas(state: RouterState) -> None:
    node = uuid.uuid4()
    for ttft in (100.0, 200.0):
        await state.acquire(node)
        await state.release(node, ok=True, ttft_ms=ttft, tokens_per_second=50.0)
    stats = await settled(state, node)
    assert stats.ttft_ms_ewma == pytest.approx(100 + EWMA_ALPHA * 100)
    assert stats.tokens_per_second_ewma == pytest.approx(50.0)


Age = Callable[[uuid.UUID], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def aging_state(request: pytest.FixtureRequest) -> tuple[RouterState, Age, Callable[[], float]]:
    """A state, a way to make a node's last outcome older than STALE_SECONDS, and its clock."""
    clock = [time.time()]
    if request.param == "memory":

        async def skip_ahead(node: uuid.UUID) -> None:
            clock[0] += STALE_SECONDS + 5

        return MemoryRouterState(clock=lambda: clock[0]), skip_ahead, lambda: clock[0]
    state: RedisRouterState = request.getfixturevalue("replicas")()
    client, _ = request.getfixturevalue("redis_client")

    async def backdate(node: uuid.UUID) -> None:  # Redis keeps server time
        await client.hset(state.node_key(node), "err_at", str(time.time() - STALE_SECONDS - 5))

    return state, backdate, time.time


async def test_after_a_long_silence_the_next_outcome_starts_the_figures_afresh(
    aging_state: tuple[RouterState, Age, Callable[[], float]],
) -> None:
    # A cold start (Ollama loading the model: 10 s to the first token) must not weigh on
    # a node for good: unused for STALE_SECONDS, it is scored as unmeasured and tried.
    state, age, now = aging_state
    node = uuid.uuid4()
    await state.acquire(node)
    await state.release(node, ok=True, ttft_ms=10_000.0, tokens_per_second=20.0)
    cold = await settled(state, node)
    assert cold.ttft_ms_ewma == pytest.approx(10_000.0)
    assert cold.latency_known(now())
    await age(node)
    assert not (await settled(state, node)).latency_known(now())
    await state.acquire(node)
    await state.release(node, ok=True, ttft_ms=200.0, tokens_per_second=50.0)
    warm = await settled(state, node)
    assert warm.ttft_ms_ewma == pytest.approx(200.0)  # not 0.2 x 200 + 0.8 x 10,000
    assert warm.tokens_per_second_ewma == pytest.approx(50.0)
    assert warm.latency_known(now())


async def test_a_failure_raises_errors_and_cools_the_node_down(state: RouterState) -> None:
    node = uuid.uuid4()
    await state.acquire(node)
    await state.release(node, ok=False)
    first = await settled(state, node)
    assert first.error_ewma == pytest.approx(EWMA_ALPHA, rel=0.01)
    assert time.time() + 3 < first.cooldown_until < time.time() + 6
    await state.release(node, ok=False)
    second = await settled(state, node)
    assert second.cooldown_until > time.time() + 8  # doubled
    await state.release(node, ok=True)
    after = await settled(state, node)
    assert after.consecutive_failures == 0
    assert after.error_ewma < second.error_ewma


async def test_concurrent_requests_leave_nothing_in_flight(state: RouterState) -> None:
    node = uuid.uuid4()

    async def request(i: int) -> None:
        await state.acquire(node)
        await asyncio.sleep(0.001 * (i % 5))
        await state.release(node, ok=True, ttft_ms=float(i))

    await asyncio.gather(*(request(i) for i in range(100)))
    assert (await settled(state, node)).in_flight == 0


async def test_the_request_path_waits_on_no_redis(
    replicas: Replicas, redis_client: tuple[Redis, str]
) -> None:
    client, _ = redis_client
    state, node = replicas(), uuid.uuid4()
    await state.acquire(node)
    await state.release(node, ok=False, ttft_ms=90.0)
    stats = (await state.snapshot([node]))[node]
    assert stats.cooldown_until > time.time() + 3  # at once, here
    assert stats.ttft_ms_ewma == pytest.approx(90.0)
    assert not await client.exists(state.node_key(node))  # nothing sent yet
    await state.sync()
    assert float(await client.hget(state.node_key(node), "ttft")) == 90.0


async def test_replicas_see_each_others_requests_after_a_sync(replicas: Replicas) -> None:
    one, two, node = replicas(), replicas(), uuid.uuid4()
    await one.acquire(node)
    await two.acquire(node)
    assert (await one.snapshot([node]))[node].in_flight == 1  # its own, exact
    await two.sync()
    await one.sync()
    assert (await one.snapshot([node]))[node].in_flight == 2
    await two.release(node, ok=True, ttft_ms=80.0, tokens_per_second=30.0)
    await two.sync()
    await one.sync()
    stats = (await one.snapshot([node]))[node]
    assert stats.in_flight == 1
    assert (stats.ttft_ms_ewma, stats.tokens_per_second_ewma) == (80.0, 30.0)


async def test_a_failure_cools_the_node_down_here_at_once_and_elsewhere_after_a_sync(
    replicas: Replicas,
) -> None:
    one, two, node = replicas(), replicas(), uuid.uuid4()
    await two.snapshot([node])
    await one.acquire(node)
    await one.release(node, ok=False)
    assert (await one.snapshot([node]))[node].cooldown_until > time.time() + 3
    assert (await two.snapshot([node]))[node].cooldown_until == 0.0
    await one.sync()
    await two.sync()
    seen = (await two.snapshot([node]))[node]
    assert time.time() + 3 < seen.cooldown_until < time.time() + 6
    assert seen.consecutive_failures == 1
    await two.acquire(node)
    await two.release(node, ok=False)  # the second failure in a row, across replicas
    assert (await two.snapshot([node]))[node].cooldown_until > time.time() + 8


async def test_outcomes_during_a_sync_are_not_lost_from_the_view(replicas: Replicas) -> None:
    state, node = replicas(), uuid.uuid4()
    await state.acquire(node)
    syncing = asyncio.create_task(state.sync())
    await asyncio.sleep(0)  # the call has left
    await state.release(node, ok=False, ttft_ms=50.0)
    await syncing
    stats = (await state.snapshot([node]))[node]
    assert (stats.in_flight, stats.ttft_ms_ewma, stats.consecutive_failures) == (0, 50.0, 1)
    assert (await settled(state, node)).consecutive_failures == 1  # sent once, next time


async def test_requests_of_a_silent_replica_stop_counting(replicas: Replicas) -> None:
    dead, node = replicas(), uuid.uuid4()
    await dead.acquire(node)
    await dead.acquire(node)
    await dead.sync()
    alive = replicas(replica_ttl_seconds=0.2)  # for which a replica silent 0.2 s is gone
    assert (await settled(alive, node)).in_flight == 2
    await asyncio.sleep(0.3)
    assert (await settled(alive, node)).in_flight == 0


async def test_a_lost_write_is_put_right_by_the_next_sync(
    replicas: Replicas, redis_client: tuple[Redis, str]
) -> None:
    client, _ = redis_client
    state, other, node = replicas(), replicas(), uuid.uuid4()
    await state.acquire(node)
    await state.sync()
    await client.hset(state.node_key(node), f"r:{state.replica}", 7)  # as if a write was lost
    assert (await settled(other, node)).in_flight == 7
    await state.sync()
    assert (await settled(other, node)).in_flight == 1


async def test_close_sends_what_is_queued_and_withdraws_the_counts(replicas: Replicas) -> None:
    leaving, staying, node = replicas(), replicas(), uuid.uuid4()
    await leaving.acquire(node)
    await leaving.acquire(node)
    await leaving.sync()
    assert (await settled(staying, node)).in_flight == 2
    await leaving.release(node, ok=False, ttft_ms=70.0)
    await leaving.close()
    stats = await settled(staying, node)
    assert (stats.in_flight, stats.ttft_ms_ewma, stats.consecutive_failures) == (0, 70.0, 1)


async def test_the_background_sync_shares_figures_on_its_own(replicas: Replicas) -> None:
    one = replicas(autostart=True, sync_interval=0.01, idle_sync_interval=0.05)
    two = replicas(autostart=True, sync_interval=0.01, idle_sync_interval=0.05)
    node = uuid.uuid4()
    await two.snapshot([node])
    await one.acquire(node)
    await one.release(node, ok=True, ttft_ms=30.0)
    await one.acquire(node)
    for _ in range(500):  # no sync() here: the background tasks do it, within 5 s
        stats = (await two.snapshot([node]))[node]
        if stats.in_flight == 1:
            break
        await asyncio.sleep(0.01)
    assert (stats.in_flight, stats.ttft_ms_ewma) == (1, 30.0)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_routing_goes_on_without_redis_and_warns_once(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    client = Redis(
        port=_closed_port(), socket_timeout=0.5, socket_connect_timeout=0.5, retry=NO_RETRY
    )
    state = replicas(client=client, autostart=True, sync_interval=0.01, idle_sync_interval=0.01)
    node = uuid.uuid4()
    with caplog.at_level(logging.WARNING, logger="infer.routing.redis_state"):
        for _ in range(3):
            await state.acquire(node)
        await state.release(node, ok=False, ttft_ms=60.0)
        await asyncio.sleep(0.2)  # syncs fail meanwhile
        with pytest.raises(RedisError):
            await state.sync()
    stats = (await state.snapshot([node]))[node]
    assert (stats.in_flight, stats.ttft_ms_ewma) == (2, 60.0)
    assert stats.cooldown_until > time.time()
    assert len(caplog.records) == 1
    started = time.monotonic()
    await state.close()
    assert time.monotonic() - started < 2.5
    await client.aclose()


class _Proxy:
    """A TCP relay to the real Redis that can be cut, or made to drop Redis's replies."""

    def __init__(self) -> None:
        self.port = 0
        self.drop_replies = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = REDIS_URL.split("//")[1].split("/")[0].split(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        self._writers += [writer, upstream_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if up or not self.drop_replies:
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(
            pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False)
        )


@pytest.fixture
async def proxy() -> AsyncIterator[_Proxy]:
    relay = _Proxy()
    await relay.start()
    yield relay
    with contextlib.suppress(AssertionError):
        await relay.stop()


async def test_the_queue_reaches_redis_once_it_is_back(replicas: Replicas, proxy: _Proxy) -> None:
    client = Redis(port=proxy.port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=NO_RETRY)
    state, other, node = replicas(client=client), replicas(), uuid.uuid4()
    await settled(state, node)  # connected once
    await proxy.stop()
    await state.acquire(node)
    await state.release(node, ok=False, ttft_ms=40.0)
    with pytest.raises(RedisError):
        await state.sync()
    await proxy.start()
    await state.sync()
    stats = await settled(other, node)
    assert (stats.ttft_ms_ewma, stats.consecutive_failures) == (40.0, 1)
    await state.close()
    await client.aclose()


async def test_other_replicas_counts_lapse_while_redis_stays_away(
    replicas: Replicas, proxy: _Proxy
) -> None:
    client = Redis(port=proxy.port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=NO_RETRY)
    state, other, node = replicas(client=client, replica_ttl_seconds=0.2), replicas(), uuid.uuid4()
    await other.acquire(node)
    await other.sync()
    assert (await settled(state, node)).in_flight == 1
    await proxy.stop()
    await asyncio.sleep(0.3)
    with pytest.raises(RedisError):
        await state.sync()
    assert (await state.snapshot([node]))[node].in_flight == 0
    await client.aclose()


async def test_a_call_retried_after_a_lost_reply_applies_nothing_twice(
    replicas: Replicas, proxy: _Proxy
) -> None:
    client = Redis(port=proxy.port, socket_timeout=0.3, socket_connect_timeout=0.3, retry=NO_RETRY)
    state, other, node = replicas(client=client), replicas(), uuid.uuid4()
    await settled(state, node)  # connected, script loaded
    await state.acquire(node)
    await state.release(node, ok=False)
    proxy.drop_replies = True  # Redis runs the call; we never hear back
    with pytest.raises(RedisError):
        await state.sync()
    proxy.drop_replies = False
    await state.sync()  # sends the same outcome again
    assert (await settled(other, node)).consecutive_failures == 1
    await state.close()
    await client.aclose()


async def test_a_sync_in_a_large_market_sends_a_bounded_share_and_refreshes_all_in_turn(
    replicas: Replicas,
) -> None:
    one, two = replicas(), replicas()
    market = [uuid.uuid4() for _ in range(3 * REFRESH_PER_SYNC)]
    await one.snapshot(market)
    await one.sync()  # the first sync fetches every node a plan met
    busy = market[0]
    await one.acquire(busy)
    sent: list[int] = []
    script = one._script

    async def counting(*, keys: list[str], args: list[object]) -> object:
        sent.append(len(keys) - 2)  # the replicas' set and the acks come first
        return await script(keys=keys, args=args)

    one._script = counting  # type: ignore[assignment]
    await two.acquire(market[-1])  # another replica's request on the last node
    await two.sync()
    for _ in range(3):
        await one.sync()
    assert max(sent) <= REFRESH_PER_SYNC + 1  # the busy node, then a share of the others
    # Within three syncs every node came round once: the other replica's count arrived.
    seen = await one.snapshot([market[-1], busy])
    assert seen[market[-1]].in_flight == 1
    assert seen[busy].in_flight == 1
