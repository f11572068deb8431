"""Rate limiting on sliding window counters: in-process by default, shared through Redis.

The counters follow the `limits` library's sliding window counter (its keys, its Redis Lua
script and its memory storage's aligned windows), so replicas still on `limits` share counts
with these; what this adds is counting several limits at once, all or none, in one round trip.
While Redis is unreachable, limits are counted in this process instead (`FailoverCounters`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from limits import RateLimitItem, parse
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from infer.batching import GroupCommit
from infer.config import Settings
from infer.errors import RateLimited
from infer.outages import REDIS_BACKOFF_SECONDS, Reachability

log = logging.getLogger(__name__)

# The longest a limiter call may wait on Redis, connecting included. redis-py would bound
# each command with its socket_timeout, but it sends through asyncio.wait_for (one more Task
# per command on Python 3.11); one asyncio.timeout around the whole call schedules a timer
# only, and redis-py drops a connection whose command was cancelled, so none is reused dirty.
REDIS_TIMEOUT = 2.0
_SWEEP_SECONDS = 60.0

# `limits`' acquire_sliding_window.lua for several limits, counting all or none; times in ms.
# KEYS: per limit, its previous window then its current one (`limits`' layout).
# ARGV[1]: '1' to count, '0' only to look; then per limit: amount allowed, window (s), cost.
# Returns the position (from 1) of the first limit the cost would take over, 0 for none, then
# per limit its previous count and TTL and its current count and TTL, after any counting.
_COUNT_SCRIPT = """
local n = #KEYS / 2
local reply = {0}
for i = 1, n do
    local previous, current = KEYS[2 * i - 1], KEYS[2 * i]
    local allowed = tonumber(ARGV[3 * i - 1])
    local expiry = tonumber(ARGV[3 * i]) * 1000
    local cost = tonumber(ARGV[3 * i + 1])
    local current_ttl = redis.call('pttl', current)
    if current_ttl > 0 and current_ttl < expiry then
        -- the current window is over: it becomes the previous one
        redis.call('rename', current, previous)
        redis.call('set', current, 0, 'PX', current_ttl + expiry)
    end
    local previous_count = tonumber(redis.call('get', previous)) or 0
    local previous_ttl = math.max(0, redis.call('pttl', previous))
    local current_count = tonumber(redis.call('get', current)) or 0
    current_ttl = math.max(0, redis.call('pttl', current))
    local weighted = math.floor(previous_count * previous_ttl / expiry) + current_count
    if reply[1] == 0 and (cost > allowed or weighted + cost > allowed) then
        reply[1] = i
    end
    table.insert(reply, previous_count)
    table.insert(reply, previous_ttl)
    table.insert(reply, current_count)
    table.insert(reply, current_ttl)
end
if ARGV[1] == '1' and reply[1] == 0 then
    for i = 1, n do
        local current, at = KEYS[2 * i], 4 * i
        local cost = tonumber(ARGV[3 * i + 1])
        if redis.call('exists', current) == 1 then
            redis.call('incrby', current, cost)
        else
            redis.call('set', current, cost, 'PX', tonumber(ARGV[3 * i]) * 2000)
            reply[at + 1] = tonumber(ARGV[3 * i]) * 2000
        end
        reply[at] = reply[at] + cost
    end
end
return reply
"""


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> RateLimitItem:
    return parse(text)


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `amount` per `seconds`, counted under `key` (the key `limits` gives it)."""

    amount: int
    seconds: int
    key: str

    @classmethod
    def parse(cls, text: str, *identifiers: str) -> Limit:
        """A limit written as `limits` reads it ("10/5 minutes"), for these identifiers."""
        item = _parse(text)
        return cls(item.amount, item.get_expiry(), item.key_for(*identifiers))


@dataclass(frozen=True, slots=True)
class Window:
    """One limit's count as last seen: what is left, and in how long the count next drops."""

    limit: Limit
    remaining: int
    reset_in: float

    @classmethod
    def weigh(
        cls, limit: Limit, previous: int, previous_ttl: float, current: int, current_ttl: float
    ) -> Window:
        """The window from its two counts and their TTLs in seconds, as `limits` weighs them."""
        weighted = previous * previous_ttl / limit.seconds + current
        previous_reset = previous_ttl % (limit.seconds / previous) if previous else math.inf
        current_reset = current_ttl % limit.seconds if current else math.inf
        reset_in = min(previous_reset, current_reset)
        return cls(
            limit,
            max(0, limit.amount - math.floor(weighted)),
            0.0 if reset_in == math.inf else reset_in,
        )

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_in))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The windows of the limits asked about, and the first one the costs would take over."""

    windows: tuple[Window, ...]
    refused: Window | None


class Counters(Protocol):
    async def count(self, costs: Sequence[tuple[Limit, int]], *, commit: bool) -> Verdict:
        """Check every cost against its limit; when all fit and `commit`, count them all."""
        ...

    async def close(self) -> None: ...


_Job = tuple[list[str], list[int]]  # one call's keys and arguments


class RedisCounters:
    """Counters in Redis, shared by every replica; one EVALSHA per call.

    Calls made while one is out go together in one pipeline (one round trip), each
    script still atomic on its own. The batches run one at a time, so they use one
    connection of their own, past the pool and its retry wrapper (a third of a call's
    CPU here); a failed batch drops it, and the next one reconnects.
    """

    def __init__(self, redis: Redis, *, prefix: str, timeout: float = REDIS_TIMEOUT) -> None:
        self._redis = redis
        self._sha = redis.register_script(_COUNT_SCRIPT).sha
        self._prefix = prefix
        self._timeout = timeout
        self._connection: AbstractConnection | None = None
        self._calls: GroupCommit[_Job, list[int]] = GroupCommit(
            self._run,
            split=lambda error: False,  # one connection: the calls fail together
        )

    async def _run(self, jobs: Sequence[_Job]) -> Sequence[list[int] | BaseException]:
        async with asyncio.timeout(self._timeout):
            for attempt in (1, 2):
                if self._connection is None:
                    pool = self._redis.connection_pool
                    self._connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                connection = self._connection
                try:
                    replies = await self._send(connection, jobs)
                    if any(isinstance(r, NoScriptError) for r in replies):
                        # Redis restarted or flushed its scripts (none of these ran): load it.
                        await connection.send_command("SCRIPT", "LOAD", _COUNT_SCRIPT)
                        await connection.read_response()
                        replies = await self._send(connection, jobs)
                    return replies
                except RedisConnectionError:
                    # Redis closed the idle connection (its `timeout`, a restart): once more.
                    await self._drop(connection)
                    if attempt == 2:
                        raise
                except BaseException:
                    await self._drop(connection)
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _drop(self, connection: AbstractConnection) -> None:
        self._connection = None
        await connection.disconnect()

    async def _send(
        self, connection: AbstractConnection, jobs: Sequence[_Job]
    ) -> list[list[int] | BaseException]:
        commands: list[tuple[str | int, ...]] = [
            ("EVALSHA", self._sha, len(keys), *keys, *args) for keys, args in jobs
        ]
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[list[int] | BaseException] = []
        for _ in jobs:
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:  # this command's own error; the rest still follow
                replies.append(error)
        return replies

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisCounters:
        return cls(Redis.from_url(url, socket_timeout=None), prefix=prefix)

    async def ping(self) -> None:
        """Raise unless Redis answers within the timeout."""
        async with asyncio.timeout(self._timeout):
            await self._redis.ping()

    async def count(self, costs: Sequence[tuple[Limit, int]], *, commit: bool) -> Verdict:
        keys: list[str] = []
        args: list[int] = [int(commit)]
        for limit, cost in costs:
            # Both windows of a limit share a hash tag, as in `limits`; the limits of one call
            # do not, so this needs a single Redis (a cluster would refuse with CROSSSLOT).
            current = f"{self._prefix}:{{{limit.key}}}"
            keys += (f"{current}/-1", current)
            args += (limit.amount, limit.seconds, cost)
        reply = await self._calls.submit((keys, args))
        windows = tuple(
            Window.weigh(limit, *_seconds(reply[1 + 4 * i : 5 + 4 * i]))
            for i, (limit, _) in enumerate(costs)
        )
        return Verdict(windows, windows[reply[0] - 1] if reply[0] else None)

    async def close(self) -> None:
        await self._calls.drained()
        if self._connection is not None:
            await self._connection.disconnect()
        await self._redis.aclose()


def _seconds(counts: list[int]) -> tuple[int, float, int, float]:
    previous, previous_ttl, current, current_ttl = counts
    return previous, previous_ttl / 1000, current, current_ttl / 1000


@dataclass(slots=True)
class _Counts:
    seconds: int
    window: int  # which aligned window `current` counts: time.time() // seconds
    current: int
    previous: int


class MemoryCounters:
    """Counters in this process, on windows aligned to the clock like `limits`' memory storage.

    Nothing in `count` awaits, so under asyncio its checks and increments are atomic.
    """

    def __init__(self) -> None:
        self._counts: dict[str, _Counts] = {}
        self._next_sweep = time.time() + _SWEEP_SECONDS

    async def count(self, costs: Sequence[tuple[Limit, int]], *, commit: bool) -> Verdict:
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        seen = [self._read(limit, now) for limit, _ in costs]
        refused = None
        for i, ((limit, cost), counts) in enumerate(zip(costs, seen, strict=True)):
            if cost > limit.amount or _weighted(counts, now) + cost > limit.amount:
                refused = i
                break
        if commit and refused is None:
            for (limit, cost), counts in zip(costs, seen, strict=True):
                counts.current += cost
                self._counts[limit.key] = counts
        windows = tuple(
            _window(limit, counts, now) for (limit, _), counts in zip(costs, seen, strict=True)
        )
        return Verdict(windows, None if refused is None else windows[refused])

    def _read(self, limit: Limit, now: float) -> _Counts:
        """A copy of the counts under `limit.key`, moved on to the window `now` is in."""
        window = int(now // limit.seconds)
        counts = self._counts.get(limit.key)
        if counts is None or counts.window < window - 1:
            return _Counts(limit.seconds, window, 0, 0)
        if counts.window == window - 1:
            return _Counts(limit.seconds, window, 0, counts.current)
        return _Counts(limit.seconds, window, counts.current, counts.previous)

    def _sweep(self, now: float) -> None:
        """Forget counts that no longer weigh (idle for two windows), so memory stays bounded."""
        self._next_sweep = now + _SWEEP_SECONDS
        for key, counts in list(self._counts.items()):
            if counts.window < int(now // counts.seconds) - 1:
                del self._counts[key]

    async def close(self) -> None:
        pass


def _left(counts: _Counts, now: float) -> float:
    """Seconds until the current aligned window ends (the previous one's weight reaches 0)."""
    return counts.seconds - now % counts.seconds


def _weighted(counts: _Counts, now: float) -> int:
    return math.floor(counts.previous * _left(counts, now) / counts.seconds) + counts.current


def _window(limit: Limit, counts: _Counts, now: float) -> Window:
    left = _left(counts, now)
    return Window.weigh(
        limit,
        counts.previous,
        left if counts.previous else 0.0,
        counts.current,
        left + limit.seconds,
    )


# What a Redis that is down or unreachable raises (TimeoutError: our own deadline).
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class FailoverCounters:
    """Counters in Redis while it answers, else in this process; back to Redis when it is.

    Once a call fails, every call is counted in memory at once (none waits on Redis) while
    a background task pings Redis every back-off until it answers. Counts made in memory
    meanwhile stay there: for the outage each replica enforces the limits on its own.
    """

    def __init__(self, shared: RedisCounters, *, backoff: float = REDIS_BACKOFF_SECONDS) -> None:
        self._shared = shared
        self._local = MemoryCounters()
        self._backoff = backoff
        self.reachability = Reachability(log, meanwhile="rate limits are counted in this process")
        self._probe: asyncio.Task[None] | None = None

    async def count(self, costs: Sequence[tuple[Limit, int]], *, commit: bool) -> Verdict:
        if not self.reachability.down:
            try:
                return await self._shared.count(costs, commit=commit)
            except REDIS_ERRORS as exc:
                self.reachability.failed(exc)
                if self._probe is None:
                    self._probe = asyncio.create_task(self._wait_for_redis(), name="redis-probe")
        return await self._local.count(costs, commit=commit)

    async def _wait_for_redis(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._backoff)
                try:
                    await self._shared.ping()
                except REDIS_ERRORS as exc:
                    self.reachability.failed(exc)
                else:
                    self.reachability.succeeded()
                    return
        finally:
            self._probe = None

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._shared.close()


class RateLimiter:
    """Named limits ("10/5 minutes") counted in one set of counters for the whole platform."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        if settings.redis_url:
            redis = RedisCounters.from_url(settings.redis_url, prefix=settings.redis_prefix)
            return cls(FailoverCounters(redis))
        return cls(MemoryCounters())

    @property
    def redis(self) -> Reachability | None:
        """How Redis looks to the limiter; None when it counts in this process by design."""
        counters = self._counters
        return counters.reachability if isinstance(counters, FailoverCounters) else None

    async def acquire(self, *costs: tuple[Limit, int]) -> Verdict:
        """Count each cost against its limit if all of them fit, else none; one round trip.

        The windows are as they stand after counting (or, when refused, unchanged).
        """
        return await self._counters.count(costs, commit=True)

    async def retry_after(self, limit: str, *identifiers: str) -> int | None:
        """Seconds to wait if `limit` is used up for these identifiers, else None."""
        verdict = await self._counters.count([(Limit.parse(limit, *identifiers), 1)], commit=False)
        return None if verdict.refused is None else verdict.refused.retry_after

    async def hit(self, limit: str, *identifiers: str, cost: int = 1) -> bool:
        """Count `cost` against the limit; False when it would go over."""
        verdict = await self.acquire((Limit.parse(limit, *identifiers), cost))
        return verdict.refused is None

    async def check(self, limit: str, *identifiers: str, message: str) -> None:
        """Count one request; raise RateLimited (with Retry-After) when over the limit."""
        verdict = await self.acquire((Limit.parse(limit, *identifiers), 1))
        if verdict.refused is not None:
            raise RateLimited(message, retry_after=verdict.refused.retry_after)

    async def close(self) -> None:
        await self._counters.close()
