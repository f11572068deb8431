"""Group commit: the first job runs at once, jobs that arrive meanwhile share the next batch.

Nothing waits for a timer, so a lone request pays no extra latency, while under load
one transaction (or one Redis round trip) serves many requests.

A batch that fails as a whole is run again one job at a time, so one bad job fails alone
and the others of its batch still commit. With `retry`, a failure it calls transient
(the database unreachable for a while) is tried again with a bounded backoff, before any
later batch: jobs commit in the order they came, and none is dropped, until `close()`
gives up on what the deadline leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

# A batch runner answers each job with a result, or with the exception for that job.
BatchRunner = Callable[[Sequence[J]], Awaitable[Sequence[R | BaseException]]]

FIRST_BACKOFF = 0.05  # seconds before the first retry; doubled each time
MAX_BACKOFF = 5.0


class GroupCommit(Generic[J, R]):
    """Jobs batched as they come; `linger` (seconds) lets a small batch wait for company.

    Leave `linger` at 0 for jobs a caller waits on; give it to jobs nobody waits for
    (settlements written after the answer), so that light load batches too.
    `retry(error)` says whether a failure is worth trying again (None: never retry).
    `split(error)` says whether a batch's failure may be one job's fault, worth running its
    jobs one by one (not for an outage: each job would only wait for it again).
    """

    def __init__(
        self,
        run: BatchRunner[J, R],
        *,
        max_batch: int = 128,
        linger: float = 0.0,
        retry: Callable[[BaseException], bool] | None = None,
        split: Callable[[BaseException], bool] = lambda error: True,
        name: str = "batch",
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._linger = linger
        self._retry = retry
        self._split = split
        self._name = name
        self._queue: list[tuple[J, asyncio.Future[R]]] = []
        self._running: list[tuple[J, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None
        self._give_up_at: float | None = None  # set by close(): retry no more after this
        self._failing = False

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

    @property
    def retrying(self) -> bool:
        """A batch is failing and being tried again (the database is away)."""
        return self._failing

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self._linger and len(self._queue) < self._max_batch:
                    await asyncio.sleep(self._linger)
                batch = self._running = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                results = await self._attempt([job for job, _ in batch])
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._worker, self._running = None, []

    async def _attempt(self, jobs: list[J]) -> Sequence[R | BaseException]:
        """Run the batch, retrying transient failures; a failed batch is run job by job."""
        backoff = FIRST_BACKOFF
        while True:
            try:
                results = await self._run(jobs)
            except Exception as exc:
                if self._retry is not None and self._retry(exc) and not self._given_up():
                    if not self._failing:
                        log.warning("%s failed; retrying until it commits", self._name)
                        self._failing = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                if len(jobs) == 1 or not self._split(exc):
                    return [exc] * len(jobs)
                log.warning("a %s of %d failed; running it job by job", self._name, len(jobs))
                return [(await self._attempt([job]))[0] for job in jobs]
            if self._failing:
                log.warning("%s commits again", self._name)
                self._failing = False
            return results

    def _given_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    async def flushed(self) -> None:
        """Wait for the jobs queued or running now; not for those queued meanwhile, so
        that a busy queue, which never drains, does not keep the caller waiting.
        """
        futures = [future for _, future in (*self._running, *self._queue)]
        if futures:
            await asyncio.wait(futures)

    async def drained(self) -> None:
        """Wait for the jobs already submitted (and any submitted meanwhile)."""
        while self._worker is not None:
            await asyncio.shield(self._worker)

    async def close(self, *, deadline: float) -> None:
        """Wait for what is queued; past `deadline` seconds, stop retrying (jobs then fail)."""
        self._give_up_at = time.monotonic() + deadline
        await self.drained()
