"""A streamed answer with deadlines facing the buyer: a slow reader cannot hold it open.

A buyer who stops reading fills the socket's buffers, and then every write waits. A write
may wait `write_timeout` seconds, and the whole answer ends by `deadline` (the request's
total deadline), whatever the buyer's pace; past either, the upstream is closed, the
node's slot and the hold are released, what was relayed is charged as `client_timeout`,
and the connection is dropped.

Timing every write would cost a timer each; one watchdog per stream, waking a few times
a write timeout, cancels a write that has waited too long, and each write checks the
total deadline before it starts. Past the deadline the buyer is cut off only if the
answer spent at least half its time waiting for the buyer's reads; otherwise the node
was the slow one, and its own total deadline (a second later: `deadline` is set that
much earlier) ends the answer as the node's failure, so a slow reader cannot make a
node look bad.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Message, Send

from infer.completions.completion import Completion
from infer.models import UsageStatus

log = logging.getLogger(__name__)

WATCHDOG_WAKES_PER_TIMEOUT = 4
DEADLINE_LEAD_SECONDS = 1.0  # the buyer's deadline comes this much before the node's


class BuyerStream(StreamingResponse):
    def __init__(
        self,
        content: AsyncIterator[bytes],
        completion: Completion,
        *,
        write_timeout: float,
        deadline: float,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.completion = completion
        self.write_timeout = write_timeout
        self.deadline = deadline  # on time.monotonic()'s clock
        self._writing_since: float | None = None
        self._waited = 0.0  # seconds spent in writes that are over
        self._cut_off = False

    def _buyer_too_slow(self, now: float) -> bool:
        """Past the deadline, with the answer waiting on the buyer half its time or more."""
        if now < self.deadline:
            return False
        since = self._writing_since
        waited = self._waited + (now - since if since is not None else 0.0)
        return 2 * waited >= now - self.completion.started_at

    async def stream_response(self, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        every = min(1.0, self.write_timeout / WATCHDOG_WAKES_PER_TIMEOUT)
        wake: asyncio.TimerHandle

        def watchdog() -> None:
            nonlocal wake
            since, now = self._writing_since, time.monotonic()
            if since is not None and (
                now - since >= self.write_timeout or self._buyer_too_slow(now)
            ):
                self._cut_off = True
                task.cancel()
            else:
                wake = loop.call_later(every, watchdog)

        async def watched(message: Message) -> None:
            started = time.monotonic()
            if self._buyer_too_slow(started):
                raise TimeoutError
            self._writing_since = started
            await send(message)
            self._writing_since = None
            self._waited += time.monotonic() - started

        wake = loop.call_later(every, watchdog)
        try:
            await super().stream_response(watched)
        except TimeoutError:  # the total deadline, seen at a write
            await self._cut()
        except asyncio.CancelledError:
            if not self._cut_off:
                raise  # the server's own cancellation (a disconnect, shutdown)
            task.uncancel()  # the watchdog's: a write waited too long
            await self._cut()
        finally:
            wake.cancel()

    async def _cut(self) -> None:
        log.info(
            "request %s: the buyer was too slow to read its answer; cut off",
            self.completion.request_id,
        )
        await self.completion.finish(status=UsageStatus.CLIENT_TIMEOUT)
        await self.body_iterator.aclose()  # type: ignore[attr-defined]
        # Returning without the last body message makes the server drop the connection.
