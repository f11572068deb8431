"""Router state per node (in-flight requests, latency EWMAs, errors, cool-down): memory or Redis."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from infer.config import Settings

EWMA_ALPHA = 0.2  # weight of the newest measurement
ERROR_HALF_LIFE_SECONDS = 60.0  # an idle node's error rate halves this fast
COOLDOWN_SECONDS = 5.0  # after one failure; doubles with each consecutive one
MAX_COOLDOWN_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class NodeStats:
    """What the router knows about a node now; None means not measured yet."""

    in_flight: int = 0
    ttft_ms_ewma: float | None = None
    tokens_per_second_ewma: float | None = None
    error_ewma: float = 0.0
    cooldown_until: float = 0.0  # epoch seconds
    consecutive_failures: int = 0


class RouterState(Protocol):
    """Shared figures the router scores nodes by; each call is at most one round trip."""

    async def snapshot(self, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, NodeStats]:
        """Current stats of these nodes (nodes never seen get the defaults)."""
        ...

    async def acquire(self, node_id: uuid.UUID) -> None:
        """A request to this node starts."""
        ...

    async def release(
        self,
        node_id: uuid.UUID,
        *,
        ok: bool,
        ttft_ms: float | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        """A request to this node ended; record how it went."""
        ...

    async def seed(self, node_id: uuid.UUID, latency_ms: float) -> None:
        """A health check's latency, used as TTFT until real traffic measures one."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def decayed_error(error: float, updated_at: float, now: float) -> float:
    """The error EWMA as time without requests has faded it."""
    if error <= 0.0 or now <= updated_at:
        return max(0.0, error)
    return error * math.pow(0.5, (now - updated_at) / ERROR_HALF_LIFE_SECONDS)


def cooldown_seconds(consecutive_failures: int) -> float:
    """5 s after the first failure in a row, doubling up to 60 s."""
    exponent = min(max(consecutive_failures, 1) - 1, 8)
    return float(min(MAX_COOLDOWN_SECONDS, COOLDOWN_SECONDS * 2**exponent))


def _ewma(old: float | None, value: float | None) -> float | None:
    if value is None:
        return old
    return value if old is None else EWMA_ALPHA * value + (1 - EWMA_ALPHA) * old


@dataclass(slots=True)
class _Entry:
    in_flight: int = 0
    ttft_ms: float | None = None
    tokens_per_second: float | None = None
    error: float = 0.0
    error_at: float = 0.0
    cooldown_until: float = 0.0
    failures: int = 0


class MemoryRouterState:
    """State in this process only; nothing here awaits, so every update is atomic."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._clock = clock

    async def snapshot(self, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, NodeStats]:
        now = self._clock()
        result: dict[uuid.UUID, NodeStats] = {}
        for node_id in node_ids:
            entry = self._entries.get(node_id)
            if entry is None:
                result[node_id] = NodeStats()
                continue
            result[node_id] = NodeStats(
                in_flight=entry.in_flight,
                ttft_ms_ewma=entry.ttft_ms,
                tokens_per_second_ewma=entry.tokens_per_second,
                error_ewma=decayed_error(entry.error, entry.error_at, now),
                cooldown_until=entry.cooldown_until,
                consecutive_failures=entry.failures,
            )
        return result

    def _entry(self, node_id: uuid.UUID) -> _Entry:
        entry = self._entries.get(node_id)
        if entry is None:
            entry = self._entries[node_id] = _Entry()
        return entry

    async def acquire(self, node_id: uuid.UUID) -> None:
        self._entry(node_id).in_flight += 1

    async def release(
        self,
        node_id: uuid.UUID,
        *,
        ok: bool,
        ttft_ms: float | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        entry = self._entry(node_id)
        now = self._clock()
        entry.in_flight = max(0, entry.in_flight - 1)
        entry.ttft_ms = _ewma(entry.ttft_ms, ttft_ms)
        entry.tokens_per_second = _ewma(entry.tokens_per_second, tokens_per_second)
        error = (1 - EWMA_ALPHA) * decayed_error(entry.error, entry.error_at, now)
        if ok:
            entry.failures = 0
        else:
            error += EWMA_ALPHA
            entry.failures += 1
            until = now + cooldown_seconds(entry.failures)
            entry.cooldown_until = max(entry.cooldown_until, until)
        entry.error, entry.error_at = error, now

    async def seed(self, node_id: uuid.UUID, latency_ms: float) -> None:
        entry = self._entry(node_id)
        if entry.ttft_ms is None:
            entry.ttft_ms = latency_ms

    async def close(self) -> None:
        return None


def router_state_from_settings(settings: Settings) -> RouterState:
    """Redis-backed state when INFER_REDIS_URL is set (replicas share it), else in-process."""
    if not settings.redis_url:
        return MemoryRouterState()
    from redis.asyncio import Redis

    from infer.routing.redis_state import RedisRouterState

    client = Redis.from_url(
        settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=30
    )
    return RedisRouterState(client, settings.redis_prefix, owns_client=True)
