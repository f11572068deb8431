"""Telling every replica at once that a key changed, so revocation is immediate everywhere.

Each replica caches key lookups for a few seconds. With Redis configured, a replica
that revokes, rotates or re-limits a key publishes its id, and every replica drops it
from its cache on receipt. Without Redis there is one process, which forgets directly.
While Redis is unreachable, nothing is published (other replicas' caches still expire
within seconds) and the listener reconnects every second, logging the loss once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from infer.outages import Reachability

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
POLL_SECONDS = 0.25
PUBLISH_TIMEOUT = 2.0


class KeyChanges:
    """Publishes key changes and, in the background, applies everyone's to `forget`."""

    def __init__(self, redis: Redis | None, *, channel: str, forget: Callable[[uuid.UUID], None]):
        self._redis = redis
        self._channel = channel
        self._forget = forget
        self._stopped = False
        self.redis = Reachability(
            log, meanwhile="API key changes reach other replicas only as their caches expire"
        )

    @classmethod
    def from_url(
        cls, url: str | None, *, prefix: str, forget: Callable[[uuid.UUID], None]
    ) -> KeyChanges:
        redis = Redis.from_url(url, socket_connect_timeout=2) if url else None
        return cls(redis, channel=f"{prefix}:api-key-changes", forget=forget)

    async def changed(self, key_id: uuid.UUID) -> None:
        """Forget the key here now, and tell the other replicas."""
        self._forget(key_id)
        if self._redis is None or not self.redis.should_try():
            return
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self._redis.publish(self._channel, str(key_id))
        except (RedisError, OSError) as exc:  # others still drop it when their cache expires
            self.redis.failed(exc)
        else:
            self.redis.succeeded()

    async def listen_forever(self) -> None:
        if self._redis is None:
            return
        while not self._stopped:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self.redis.succeeded()
                    # Polling with a short timeout (not a blocking listen) lets `stop()` end
                    # the loop even when redis-py has swallowed a cancellation.
                    while not self._stopped:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=POLL_SECONDS
                        )
                        if message is not None and message.get("type") == "message":
                            self._apply(message["data"])
            except (RedisError, OSError) as exc:
                if self._stopped:  # redis-py can turn our cancellation into this error
                    return
                self.redis.failed(exc)
                await asyncio.sleep(RECONNECT_SECONDS)

    def _apply(self, data: bytes | str) -> None:
        try:
            key_id = uuid.UUID(data.decode() if isinstance(data, bytes) else data)
        except ValueError:
            return
        self._forget(key_id)

    def stop(self) -> None:
        """Make the listener end instead of reconnecting (call before cancelling it)."""
        self._stopped = True

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
