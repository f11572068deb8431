"""A streamed answer with deadlines facing the buyer: a slow reader cannot hold it open.

A buyer who stops reading fills the socket's buffers, and then every write waits. Each
write gets `write_timeout` seconds, and the whole answer ends by `deadline` (the request's
total deadline), whatever the buyer's pace; past either, the upstream is closed, the
node's slot and the hold are released, what was relayed is charged as `client_timeout`,
and the connection is dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Send

from infer.completions.service import Completion
from infer.models import UsageStatus

log = logging.getLogger(__name__)


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

    async def stream_response(self, send: Send) -> None:
        async def timed(message: Message) -> None:
            seconds = min(self.write_timeout, self.deadline - time.monotonic())
            if seconds <= 0:  # checked here: a send that need not wait never sees its timer
                raise TimeoutError
            with anyio.fail_after(seconds):
                await send(message)

        try:
            await super().stream_response(timed)
        except TimeoutError:
            log.info(
                "request %s: the buyer was too slow to read its answer; cut off",
                self.completion.request_id,
            )
            await self.completion.finish(status=UsageStatus.CLIENT_TIMEOUT)
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            # Returning without the last body message makes the server drop the connection.
