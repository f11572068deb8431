"""Rate limits in memory and in a real Redis: per-key requests and tokens, replicas, timeouts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import REDIS_URL
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import Redis

from infer.accounts.principal import Principal
from infer.errors import RateLimited
from infer.keys.limits import KeyLimits, admit
from infer.models import Role
from infer.ratelimit import Limit, MemoryCounters, RateLimiter, RedisCounters

Factory = Callable[[], RateLimiter]
DEFAULTS = KeyLimits(requests_per_minute=600, tokens_per_minute=1_000_000)


@pytest.fixture
def redis_prefix(redis_client: tuple[Redis, str]) -> str:
    return redis_client[1]


@pytest.fixture
async def made() -> AsyncIterator[list[RateLimiter]]:
    """The limiters a test made, closed after it."""
    limiters: list[RateLimiter] = []
    yield limiters
    for limiter in limiters:
        await limiter.close()


@pytest.fixture(params=["memory", "redis"])
def new_limiter(request: pytest.FixtureRequest, made: list[RateLimiter]) -> Factory:
    """Makes limiters that share one set of counters: each call is another replica (Redis)."""
    if request.param == "memory":
        made.append(RateLimiter(MemoryCounters()))
        return lambda: made[0]
    prefix = request.getfixturevalue("redis_prefix")

    def replica() -> RateLimiter:
        made.append(RateLimiter(RedisCounters.from_url(REDIS_URL, prefix=prefix)))
        return made[-1]

    return replica


def key(requests: int | None = None, tokens: int | None = None) -> Principal:
    return Principal(
        user_id=uuid.uuid4(),
        role=Role.USER,
        api_key_id=uuid.uuid4(),
        requests_per_minute=requests,
        tokens_per_minute=tokens,
    )


async def test_requests_past_the_limit_get_429_with_retry_after(new_limiter: Factory) -> None:
    limiter, principal = new_limiter(), key(requests=3)
    seen = [await admit(limiter, principal, defaults=DEFAULTS, tokens=10) for _ in range(3)]
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
    assert seen[0]["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(RateLimited, match="3 requests per minute") as refused:
        await admit(limiter, principal, defaults=DEFAULTS, tokens=10)
    assert 1 <= refused.value.retry_after <= 60


async def test_remaining_tokens_go_down_and_a_request_over_them_is_refused(
    new_limiter: Factory,
) -> None:
    limiter, principal = new_limiter(), key(tokens=1000)
    first = await admit(limiter, principal, defaults=DEFAULTS, tokens=600)
    assert (first["x-ratelimit-limit-tokens"], first["x-ratelimit-remaining-tokens"]) == (
        "1000",
        "400",
    )
    with pytest.raises(RateLimited, match="1000 tokens per minute") as refused:
        await admit(limiter, principal, defaults=DEFAULTS, tokens=600)
    assert refused.value.retry_after >= 1
    last = await admit(limiter, principal, defaults=DEFAULTS, tokens=400)
    assert last["x-ratelimit-remaining-tokens"] == "0"


async def test_a_request_refused_for_its_tokens_does_not_use_up_a_request(
    new_limiter: Factory,
) -> None:
    limiter, principal = new_limiter(), key(requests=2, tokens=1000)
    await admit(limiter, principal, defaults=DEFAULTS, tokens=900)
    with pytest.raises(RateLimited, match="tokens"):
        await admit(limiter, principal, defaults=DEFAULTS, tokens=500)
    headers = await admit(limiter, principal, defaults=DEFAULTS, tokens=100)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "0"


async def test_a_request_refused_for_requests_counts_no_tokens(new_limiter: Factory) -> None:
    limiter = new_limiter()
    requests, tokens = Limit.parse("1/minute", "r", "k"), Limit.parse("1000/minute", "t", "k")
    assert (await limiter.acquire((requests, 1), (tokens, 100))).refused is None
    refused = await limiter.acquire((requests, 1), (tokens, 100))
    assert refused.refused is not None
    assert refused.refused.limit == requests
    after = await limiter.acquire((tokens, 100))
    assert after.windows[0].remaining == 800


async def test_a_request_wanting_more_tokens_than_a_minute_allows_passes_on_an_idle_key(
    new_limiter: Factory,
) -> None:
    limiter, principal = new_limiter(), key(tokens=1000)
    headers = await admit(limiter, principal, defaults=DEFAULTS, tokens=5000)
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(RateLimited):
        await admit(limiter, principal, defaults=DEFAULTS, tokens=1)


async def test_keys_without_their_own_limits_get_the_defaults(new_limiter: Factory) -> None:
    headers = await admit(new_limiter(), key(), defaults=KeyLimits(5, 50), tokens=20)
    assert headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-limit-tokens": "50",
        "x-ratelimit-remaining-tokens": "30",
    }


async def test_two_replicas_share_the_count_of_one_key(new_limiter: Factory) -> None:
    one, other, principal = new_limiter(), new_limiter(), key(requests=2)
    await admit(one, principal, defaults=DEFAULTS, tokens=1)
    headers = await admit(other, principal, defaults=DEFAULTS, tokens=1)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited):
        await admit(one, principal, defaults=DEFAULTS, tokens=1)


async def test_concurrent_requests_never_get_past_the_limit(new_limiter: Factory) -> None:
    replicas, principal = [new_limiter(), new_limiter()], key(requests=10, tokens=10_000)

    async def attempt(i: int) -> bool:
        try:
            await admit(replicas[i % 2], principal, defaults=DEFAULTS, tokens=100)
        except RateLimited:
            return False
        return True

    admitted = await asyncio.gather(*(attempt(i) for i in range(40)))
    assert sum(admitted) == 10


async def test_the_limit_frees_up_as_the_window_slides_on(new_limiter: Factory) -> None:
    limiter = new_limiter()
    assert await limiter.hit("2/second", "burst", "k")
    assert await limiter.hit("2/second", "burst", "k")
    assert not await limiter.hit("2/second", "burst", "k")
    await asyncio.sleep(2.1)  # two windows on, the old hits weigh nothing
    assert await limiter.hit("2/second", "burst", "k")


async def test_check_raises_once_the_limit_is_used_up(new_limiter: Factory) -> None:
    limiter = new_limiter()
    await limiter.check("2/hour", "signup", "203.0.113.7", message="slow down")
    await limiter.check("2/hour", "signup", "203.0.113.7", message="slow down")
    with pytest.raises(RateLimited, match="slow down") as refused:
        await limiter.check("2/hour", "signup", "203.0.113.7", message="slow down")
    assert 1 <= refused.value.retry_after <= 3600
    await limiter.check("2/hour", "signup", "198.51.100.1", message="slow down")


async def test_retry_after_is_none_until_the_limit_is_used_up(new_limiter: Factory) -> None:
    limiter = new_limiter()
    assert await limiter.retry_after("2/5 minutes", "login", "ann") is None
    await limiter.hit("2/5 minutes", "login", "ann")
    assert await limiter.retry_after("2/5 minutes", "login", "ann") is None
    await limiter.hit("2/5 minutes", "login", "ann")
    wait = await limiter.retry_after("2/5 minutes", "login", "ann")
    assert wait is not None
    assert 1 <= wait <= 300


async def test_replicas_still_on_limits_share_the_counts(redis_prefix: str) -> None:
    """A rolling deploy: the old code (`limits` itself) and the new count the same keys."""
    storage = RedisStorage(f"async+{REDIS_URL}", implementation="redispy", key_prefix=redis_prefix)
    old = SlidingWindowCounterRateLimiter(storage)
    new = RateLimiter(RedisCounters.from_url(REDIS_URL, prefix=redis_prefix))
    principal = key(requests=3, tokens=1000)
    api_key = str(principal.api_key_id)
    assert await old.hit(parse("3/minute"), "key-requests", api_key)
    assert await old.hit(parse("1000/minute"), "key-tokens", api_key, cost=300)
    headers = await admit(new, principal, defaults=DEFAULTS, tokens=200)
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-remaining-tokens"] == "500"
    stats = await old.get_window_stats(parse("3/minute"), "key-requests", api_key)
    assert stats.remaining == 1
    await new.close()


async def test_a_hung_redis_fails_the_call_within_the_timeout() -> None:
    """A server that accepts connections and never answers must not hold requests forever."""
    accepted: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=None)
    limiter = RateLimiter(RedisCounters(redis, prefix="hung", timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await admit(limiter, key(), defaults=DEFAULTS, tokens=1)
    assert time.monotonic() - started < 2
    await limiter.close()
    for writer in accepted:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_concurrent_calls_survive_redis_forgetting_its_scripts(
    redis_prefix: str, made: list[RateLimiter]
) -> None:
    made.append(RateLimiter(RedisCounters.from_url(REDIS_URL, prefix=redis_prefix)))
    limiter, principal = made[-1], key(requests=10, tokens=10_000)
    admin = Redis.from_url(REDIS_URL)
    try:
        await admin.script_flush()  # as after a Redis restart
    finally:
        await admin.aclose()

    async def attempt() -> bool:
        try:
            await admit(limiter, principal, defaults=DEFAULTS, tokens=100)
        except RateLimited:
            return False
        return True

    assert sum(await asyncio.gather(*(attempt() for _ in range(20)))) == 10


async def test_a_connection_redis_closed_while_idle_does_not_fail_the_next_request(
    redis_client: tuple[Redis, str], made: list[RateLimiter]
) -> None:
    admin, prefix = redis_client
    made.append(RateLimiter(RedisCounters.from_url(REDIS_URL, prefix=prefix)))
    limiter, principal = made[-1], key(requests=10, tokens=10_000)
    await admit(limiter, principal, defaults=DEFAULTS, tokens=100)
    # As Redis's own `timeout` does to idle clients, or a restart: every other client goes.
    await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    headers = await admit(limiter, principal, defaults=DEFAULTS, tokens=100)
    assert headers["x-ratelimit-remaining-requests"] == "8"
