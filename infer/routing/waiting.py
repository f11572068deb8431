"""At capacity, wait briefly: a fair (first come, first served) queue of requests per model.

When every node serving a model is busy (`NodesBusy`), the request joins its model's
queue for up to INFER_CAPACITY_WAIT_SECONDS. Only the request at the head plans again:
when a request anywhere in this process releases a node's slot (`WakingState`), when
the head before it leaves without taking the slot it was woken for (out of time,
disconnected), and at least every RECHECK_SECONDS for slots freed by other processes.
A served head does not wake the next: a node's slot is taken only when it is called,
after the hold, so the next waits for the next release rather than take the same slot.
A request arriving while others wait queues behind them. Nothing is held while waiting:
the hold is placed after the plan, the node's slot when it is called.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from infer.errors import NodesBusy
from infer.metrics import Metrics
from infer.routing.catalog import Candidate
from infer.routing.state import NodeStats, RouterState

RECHECK_SECONDS = 1.0


class BuyerGone(Exception):
    """The buyer disconnected while waiting for a free node; nobody is left to answer."""


class CapacityQueues:
    """One FIFO queue of waiting requests per model, in this process."""

    def __init__(self, *, wait_seconds: float, limit: int, metrics: Metrics) -> None:
        self.wait_seconds = wait_seconds
        self.limit = limit
        self._metrics = metrics
        self._queues: dict[str, deque[asyncio.Event]] = {}

    def waiting(self, model: str) -> int:
        return len(self._queues.get(model, ()))

    async def plan(
        self,
        model: str,
        plan: Callable[[], Awaitable[list[Candidate]]],
        *,
        gone: Callable[[], Awaitable[None]] | None = None,
    ) -> list[Candidate]:
        """`plan()`'s candidates, once a node can take the request; NodesBusy after the wait;
        BuyerGone as soon as `gone()` returns while waiting (the buyer disconnected).
        """
        queue = self._queues.get(model)
        busy: NodesBusy | None = None
        if not queue:
            try:
                return await plan()
            except NodesBusy as error:
                if self.wait_seconds <= 0:
                    raise
                busy = error
            queue = self._queues.setdefault(model, deque())
        if len(queue) >= self.limit:
            self._metrics.waits_refused.inc()
            raise NodesBusy(
                f"every node serving {model!r} is busy and {len(queue)} requests are waiting;"
                " try again shortly"
            )
        me = asyncio.Event()
        queue.append(me)
        self._metrics.waiting.inc()
        outcome = self._metrics.waits_left  # unless served or out of time: the buyer left
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        # Only a waiting request watches for its buyer's disconnect (a task per request
        # costs the hot path more than the rest of this module).
        left = None if gone is None else asyncio.ensure_future(gone())
        try:
            while True:
                head = queue[0] is me
                if head and busy is None:
                    try:
                        attempts = await plan()
                    except NodesBusy as error:
                        busy = error
                    else:
                        outcome = self._metrics.waits_served
                        return attempts
                remaining = deadline - loop.time()
                if remaining <= 0:
                    outcome = self._metrics.waits_timed_out
                    raise busy or NodesBusy(
                        f"every node serving {model!r} is busy; try again shortly"
                    )
                woken = asyncio.ensure_future(me.wait())
                await asyncio.wait(
                    [woken] if left is None else [woken, left],
                    timeout=min(remaining, RECHECK_SECONDS),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken.cancel()
                if left is not None and left.done():
                    raise BuyerGone
                me.clear()
                busy = None  # woken or rechecking: plan again when at the head
        finally:
            if left is not None:
                left.cancel()
            outcome.inc()
            self._metrics.waiting.dec()
            was_head = queue[0] is me
            queue.remove(me)
            if not queue:
                del self._queues[model]
            elif was_head and outcome is not self._metrics.waits_served:
                queue[0].set()  # the slot it was woken for is still free: the next one tries

    def released(self) -> None:
        """A slot was freed somewhere: each waiting model's head plans again."""
        for queue in self._queues.values():
            queue[0].set()


class WakingState:
    """A RouterState that tells the capacity queues of every released slot."""

    def __init__(self, inner: RouterState, on_release: Callable[[], None]) -> None:
        self.inner = inner
        self._on_release = on_release

    async def snapshot(self, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, NodeStats]:
        return await self.inner.snapshot(node_ids)

    async def acquire(self, node_id: uuid.UUID) -> None:
        await self.inner.acquire(node_id)

    async def release(
        self,
        node_id: uuid.UUID,
        *,
        ok: bool,
        ttft_ms: float | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        try:
            await self.inner.release(
                node_id, ok=ok, ttft_ms=ttft_ms, tokens_per_second=tokens_per_second
            )
        finally:
            self._on_release()

    async def close(self) -> None:
        await self.inner.close()
