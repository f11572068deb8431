"""Group commit: the first job runs at once, jobs that arrive meanwhile share the next batch.

Nothing waits for a timer, so a lone request pays no extra latency, while under load
one database transaction serves many requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

# A batch runner answers each job with a result, or with the exception for that job.
BatchRunner = Callable[[Sequence[J]], Awaitable[Sequence[R | BaseException]]]


class GroupCommit(Generic[J, R]):
    """Jobs batched as they come; `linger` (seconds) lets a small batch wait for company.

    Leave `linger` at 0 for jobs a caller waits on; give it to jobs nobody waits for
    (settlements written after the answer), so that light load batches too.
    """

    def __init__(
        self, run: BatchRunner[J, R], *, max_batch: int = 128, linger: float = 0.0
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._linger = linger
        self._queue: list[tuple[J, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, job: J) -> R:
        """Queue the job and wait for its result."""
        # The job is committed (or not) whatever happens to the caller meanwhile.
        return await asyncio.shield(self.enqueue(job))

    def enqueue(self, job: J) -> asyncio.Future[R]:
        """Queue the job without waiting; the future holds its result or its error."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((job, future))
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        return future

    @property
    def backlog(self) -> int:
        """Jobs queued behind the batch that is running."""
        return len(self._queue)

    @property
    def pending(self) -> bool:
        """Jobs are queued or running."""
        return self._worker is not None

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self._linger and len(self._queue) < self._max_batch:
                    await asyncio.sleep(self._linger)
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    results = await self._run([job for job, _ in batch])
                except Exception as exc:  # every job of a failed batch gets its error
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._worker = None

    async def drained(self) -> None:
        """Wait for the jobs already submitted (and any submitted meanwhile)."""
        while self._worker is not None:
            await asyncio.shield(self._worker)
