"""Deadlines enforced with asyncio: the clock of one streamed answer, the bound of one probe.

httpx's read timeout restarts with every byte, so it cannot tell a first byte from a
keep-alive comment, nor a slow start from a stall; these can.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from infer.errors import UpstreamError, UpstreamTimeout
from infer.nodes.clients.base import Deadlines

T = TypeVar("T")


class StreamClock:
    """The deadlines of one streamed answer: to the first event, between events, in all.

    Only events count (an NDJSON line, an SSE data event): keep-alive comments do not
    restart the idle deadline, so a node that only sends comments is stalled.
    """

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        now = asyncio.get_running_loop().time()
        self.end = now + deadlines.total
        self.next = now + deadlines.first_byte
        self.started = False

    def mark_event(self) -> None:
        """An event was handled (and handed on): the idle deadline starts again now."""
        self.started = True
        self.next = asyncio.get_running_loop().time() + self.deadlines.idle

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await under the nearest deadline; raise what that deadline stands for."""
        until = min(self.next, self.end)
        scope = asyncio.timeout_at(until)
        try:
            async with scope:
                return await awaitable
        except TimeoutError as exc:
            if not scope.expired():
                raise
            raise self._expired(total=until >= self.end) from exc

    def _expired(self, *, total: bool) -> UpstreamError:
        d = self.deadlines
        if total:
            return UpstreamTimeout(f"the node did not finish within {d.total:g} s")
        if not self.started:
            return UpstreamTimeout(f"the node sent no answer within {d.first_byte:g} s")
        return UpstreamError(f"the node stalled: nothing new for {d.idle:g} s")


@contextlib.asynccontextmanager
async def probe_deadline(deadlines: Deadlines) -> AsyncIterator[None]:
    """Bound a whole health check (every call it makes) by `deadlines.health`."""
    scope = asyncio.timeout(deadlines.health)
    try:
        async with scope:
            yield
    except TimeoutError as exc:
        if not scope.expired():
            raise
        raise UpstreamTimeout(f"the health check took longer than {deadlines.health:g} s") from exc
