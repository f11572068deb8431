"""Deadlines of node calls: the clock of one streamed answer, the bound of one probe.

A socket read timeout restarts with every byte, so it cannot tell a first byte from a
keep-alive comment, nor a slow start from a stall; these can.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from infer.errors import UpstreamError, UpstreamTimeout
from infer.nodes.clients.base import Deadlines


class StreamClock:
    """The deadlines of one streamed answer: to the first event, between events, in all.

    Only events count (an NDJSON line, an SSE data event): keep-alive comments do not
    restart the idle deadline, so a node that only sends comments is stalled.
    """

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.end = now + deadlines.total
        self.next = now + deadlines.first_byte
        self.started = False

    def mark_event(self) -> None:
        """An event was handled (and handed on): the idle deadline starts again now."""
        self.started = True
        self.next = self._loop.time() + self.deadlines.idle

    def deadline(self) -> float:
        """The loop time by which something must arrive: the nearer of idle and total."""
        return min(self.next, self.end)

    def check(self) -> None:
        """Raise the total deadline's error if it has passed (a node that never pauses)."""
        if self._loop.time() >= self.end:
            raise self.expired()

    def expired(self) -> UpstreamError:
        """The error a passed deadline stands for (call when a wait timed out)."""
        d = self.deadlines
        if self._loop.time() >= self.end:
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
