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
# Latency figures older than this are not trusted: the node is scored as unmeasured
# (so it is tried again) and its next outcome starts the EWMAs afresh. Without it, one
# slow first answer (Ollama loading the model) kept a node out of light traffic forever.
STALE_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class NodeStats:
    """What the router knows about a node now; None means not measured yet."""

    in_flight: int = 0
    ttft_ms_ewma: float | None = None
    tokens_per_second_ewma: float | None = None
    error_ewma: float = 0.0
    cooldown_until: float = 0.0  # epoch seconds
    consecutive_failures: int = 0
    measured_at: float = 0.0  # epoch seconds of the last outcome; 0 for never

    def latency_known(self, now: float) -> bool:
        """Whether the TTFT and tokens/s figures are recent enough to score by."""
        return now - self.measured_at <= STALE_SECONDS


class RouterState(Protocol):
    """Figures the router scores nodes by; no call waits on the network (sharing runs behind)."""

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

    async def close(self) -> None:
        """Flush what is not shared yet and release connections, in bounded time."""
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
class NodeFigures:
    """One node's figures, as both states keep them in memory; times are this host's clock."""

    in_flight: int = 0
    ttft_ms: float | None = None
    tokens_per_second: float | None = None
    error: float = 0.0
    error_at: float = 0.0
    cooldown_until: float = 0.0
    failures: int = 0

    def record(
        self, *, ok: bool, ttft_ms: float | None, tokens_per_second: float | None, now: float
    ) -> None:
        """Fold one request's outcome in (not its in-flight count): EWMAs, errors, cool-down."""
        if now - self.error_at > STALE_SECONDS:
            self.ttft_ms = self.tokens_per_second = None  # too old: start afresh
        self.ttft_ms = _ewma(self.ttft_ms, ttft_ms)
        self.tokens_per_second = _ewma(self.tokens_per_second, tokens_per_second)
        error = (1 - EWMA_ALPHA) * decayed_error(self.error, self.error_at, now)
        if ok:
            self.failures = 0
        else:
            error += EWMA_ALPHA
            self.failures += 1
            self.cooldown_until = max(self.cooldown_until, now + cooldown_seconds(self.failures))
        self.error, self.error_at = error, now

    def stats(self, now: float, *, in_flight: int) -> NodeStats:
        return NodeStats(
            in_flight=in_flight,
            ttft_ms_ewma=self.ttft_ms,
            tokens_per_second_ewma=self.tokens_per_second,
            error_ewma=decayed_error(self.error, self.error_at, now),
            cooldown_until=self.cooldown_until,
            consecutive_failures=self.failures,
            measured_at=self.error_at,
        )


_UNSEEN = NodeStats()


class MemoryRouterState:
    """State in this process only; nothing here awaits, so every update is atomic."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._nodes: dict[uuid.UUID, NodeFigures] = {}
        self._clock = clock

    async def snapshot(self, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, NodeStats]:
        now = self._clock()
        nodes = self._nodes
        result: dict[uuid.UUID, NodeStats] = {}
        for node_id in node_ids:
            figures = nodes.get(node_id)
            result[node_id] = (
                _UNSEEN if figures is None else figures.stats(now, in_flight=figures.in_flight)
            )
        return result

    def _figures(self, node_id: uuid.UUID) -> NodeFigures:
        figures = self._nodes.get(node_id)
        if figures is None:
            figures = self._nodes[node_id] = NodeFigures()
        return figures

    async def acquire(self, node_id: uuid.UUID) -> None:
        self._figures(node_id).in_flight += 1

    async def release(
        self,
        node_id: uuid.UUID,
        *,
        ok: bool,
        ttft_ms: float | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        figures = self._figures(node_id)
        figures.in_flight = max(0, figures.in_flight - 1)
        figures.record(
            ok=ok, ttft_ms=ttft_ms, tokens_per_second=tokens_per_second, now=self._clock()
        )

    async def close(self) -> None:
        return None


def router_state_from_settings(settings: Settings) -> RouterState:
    """Redis-backed state when INFER_REDIS_URL is set (replicas share it), else in-process."""
    if not settings.redis_url:
        return MemoryRouterState()
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from infer.routing.redis_state import RedisRouterState

    # Only the background sync uses this client, and it tries again on its own next
    # round: one immediate retry (a connection Redis closed) rather than redis-py's ten
    # with backoff, so a sync while Redis is away fails in about a second.
    client = Redis.from_url(
        settings.redis_url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1),
    )
    return RedisRouterState(client, settings.redis_prefix, owns_client=True)
