"""Rate limiting with `limits`: in-process by default, shared through Redis when configured."""

from __future__ import annotations

import math
import time

from limits import parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from infer.config import Settings
from infer.errors import RateLimited


class RateLimiter:
    """Named limits ("10/5 minutes") checked against one storage for the whole process."""

    def __init__(self, storage: Storage) -> None:
        # A sliding window counter costs O(1) per hit whatever the cost (tokens), unlike a
        # moving window that stores one timestamp per unit.
        self._limiter = SlidingWindowCounterRateLimiter(storage)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        if settings.redis_url:
            storage: Storage = RedisStorage(
                "async+" + settings.redis_url,
                implementation="redispy",
                key_prefix=settings.redis_prefix,
            )
            return cls(storage)
        return cls(MemoryStorage())

    async def retry_after(self, limit: str, *identifiers: str) -> int | None:
        """Seconds to wait if `limit` is used up for these identifiers, else None."""
        item = parse(limit)
        if await self._limiter.test(item, *identifiers):
            return None
        stats = await self._limiter.get_window_stats(item, *identifiers)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def hit(self, limit: str, *identifiers: str, cost: int = 1) -> bool:
        """Count `cost` against the limit; False when it would go over."""
        return await self._limiter.hit(parse(limit), *identifiers, cost=cost)

    async def check(self, limit: str, *identifiers: str, message: str) -> None:
        """Count one request; raise RateLimited (with Retry-After) when over the limit."""
        if not await self.hit(limit, *identifiers):
            wait = await self.retry_after(limit, *identifiers)
            raise RateLimited(message, retry_after=wait or 1)

    async def remaining(self, *checks: tuple[str, str, str]) -> list[int]:
        """What is left of each (limit, scope, identifier) in its current window."""
        left = []
        for limit, *identifiers in checks:
            stats = await self._limiter.get_window_stats(parse(limit), *identifiers)
            left.append(int(stats.remaining))
        return left
