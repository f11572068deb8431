"""Router state shared by replicas through Redis, answered from memory and synced behind.

The request path does no I/O: `snapshot`, `acquire` and `release` read and
update this replica's view of the nodes in memory, with the math of `MemoryRouterState`,
and queue each outcome. A background task (started on first use, or by `start()`)
sends the queue and this replica's in-flight counts to Redis in one Lua call and takes
the shared figures back, at most every `sync_interval` (0.1 s) while requests come and
every `idle_sync_interval` (1 s) otherwise, as the replica's heartbeat. The script
applies the outcomes to the shared EWMAs, errors and cool-downs as one `release` did
before, so the figures are the same, only up to ~0.2 s older on other replicas (their
sync, then ours). A failure cools the node down here at once; the others see it after
that delay. If Redis is unreachable, routing goes on with the last figures and this
replica's own outcomes; the queue is kept (bounded) and sent when Redis is back.

Why those intervals: Redis gets ~10 calls a second per replica whatever the request
rate (it got 3 per request), while figures 0.2 s old are fresh next to a completion's
seconds, and power of two choices absorbs stale load figures. redis-py sends each
command through `asyncio.wait_for` (an extra Task) when `socket_timeout` is set: that is
now paid once per sync, off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from infer.outages import Reachability
from infer.routing.redis_script import SYNC
from infer.routing.state import NodeFigures, NodeStats

log = logging.getLogger(__name__)

NODE_KEY_TTL_SECONDS = 7 * 24 * 3600  # figures of nodes nobody routes to fade away
MAX_PENDING_EVENTS = 10_000  # while Redis is away; older outcomes weigh little in an EWMA
FORGET_NODE_SECONDS = 600.0  # a node no plan asked about (gone from the catalog)
# Nodes a sync refreshes besides those it must send (see `_sync_ids`): the rest of a
# large market's figures are refreshed in turn, so a sync's cost does not grow with it.
REFRESH_PER_SYNC = 256
STOP_TASK_SECONDS = 0.5  # of close()'s budget, for the sync task to stop


@dataclass(slots=True)
class _View(NodeFigures):
    """A node as this replica sees it: `in_flight` is its own requests, exact."""

    key: str = ""
    others: int = 0  # other replicas' requests in flight, as of the last sync
    seen_at: float = 0.0  # last asked about, to forget nodes gone from the catalog


class _Event(NamedTuple):
    """An outcome (kind "1" ok, "0" failure) not acknowledged by Redis yet."""

    seq: int
    node_id: uuid.UUID
    kind: str
    at: float
    first: float | None  # ttft
    second: float | None  # tokens per second


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _text(value: float | None) -> str:
    return "-" if value is None else repr(value)


def _number(value: str) -> float | None:
    return None if value == "-" else float(value)


class RedisRouterState:
    """Router state shared through Redis, served from this replica's memory.

    One hash per node, `{prefix}:router:node:{id}`: the EWMAs (`ttft`, `tps`, `err`,
    `err_at`), the cool-down (`cool`, `fails`), and per replica its in-flight count
    (`r:{replica}`). A replica writes its exact count, not an increment, for every node
    it has requests on or changed since the last sync, so a lost write is put right by
    the next sync. Each sync stamps the replica's heartbeat in the sorted set
    `{prefix}:router:replicas`; counts of replicas not heard from within
    `replica_ttl_seconds` are left out, and their fields deleted after `forget_seconds`.
    Calls and outcomes carry sequence numbers, acknowledged per replica in
    `{prefix}:router:acks`, so a call retried after a timeout (which may have run) or
    overtaken by a later one applies nothing twice. Times in Redis are server time;
    the view converts them to this host's clock.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str,
        *,
        owns_client: bool = False,
        sync_interval: float = 0.1,
        idle_sync_interval: float = 1.0,
        replica_ttl_seconds: float = 10.0,
        forget_seconds: float = 3600.0,
        close_timeout: float = 2.0,
        autostart: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._interval = sync_interval
        self._idle_interval = idle_sync_interval
        self._replica_ttl = replica_ttl_seconds
        self._forget = forget_seconds
        self._close_timeout = close_timeout
        self._autostart = autostart
        self._clock = clock
        self.replica = uuid.uuid4().hex
        self._replicas_key = f"{prefix}:router:replicas"
        self._acks_key = f"{prefix}:router:acks"
        self._script = client.register_script(SYNC)
        self._views: dict[uuid.UUID, _View] = {}
        self._dirty: set[uuid.UUID] = set()  # counts changed since the last sync left
        self._busy: set[uuid.UUID] = set()  # with requests of ours in flight
        self._unfetched: set[uuid.UUID] = set()  # views whose shared figures never came
        self._ring: deque[uuid.UUID] = deque()  # every view, in the order syncs refresh them
        self._forgot_at = 0.0
        self._events: deque[_Event] = deque(maxlen=MAX_PENDING_EVENTS)
        self._event_seq = 0
        self._call_seq = 0
        self._synced_at = time.monotonic()
        self._lock = asyncio.Lock()  # one sync at a time
        self._wake = asyncio.Event()  # something to send
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.redis = Reachability(log, meanwhile="routing uses this replica's own figures")

    def node_key(self, node_id: uuid.UUID) -> str:
        return f"{self._prefix}:router:node:{node_id}"

    # The request path: memory only.

    async def snapshot(self, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, NodeStats]:
        if self._task is None:
            self._start_lazily()
        now = self._clock()
        views = self._views
        result: dict[uuid.UUID, NodeStats] = {}
        for node_id in node_ids:
            view = views.get(node_id)
            if view is None:
                view = self._view(node_id)
                self._wake.set()  # fetch its shared figures soon
            view.seen_at = now
            result[node_id] = view.stats(now, in_flight=view.in_flight + view.others)
        return result

    async def acquire(self, node_id: uuid.UUID) -> None:
        self._view(node_id).in_flight += 1
        self._dirty.add(node_id)
        self._busy.add(node_id)
        self._touch()

    async def release(
        self,
        node_id: uuid.UUID,
        *,
        ok: bool,
        ttft_ms: float | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        view = self._view(node_id)
        view.in_flight = max(0, view.in_flight - 1)
        self._dirty.add(node_id)
        if not view.in_flight:
            self._busy.discard(node_id)
        ttft, tps = _finite(ttft_ms), _finite(tokens_per_second)
        now = self._clock()
        view.record(ok=ok, ttft_ms=ttft, tokens_per_second=tps, now=now)
        self._queue(node_id, "1" if ok else "0", now, ttft, tps)

    def _view(self, node_id: uuid.UUID) -> _View:
        view = self._views.get(node_id)
        if view is None:
            view = _View(key=self.node_key(node_id), seen_at=self._clock())
            self._views[node_id] = view
            self._unfetched.add(node_id)
            self._ring.append(node_id)
        return view

    def _queue(
        self, node_id: uuid.UUID, kind: str, at: float, first: float | None, second: float | None
    ) -> None:
        self._event_seq += 1
        self._events.append(_Event(self._event_seq, node_id, kind, at, first, second))
        self._touch()

    def _touch(self) -> None:
        if self._task is None:
            self._start_lazily()
        self._wake.set()

    # The sync.

    def start(self) -> None:
        """Start the background sync now (else the first call starts it); needs a running loop."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="router-state-sync"
            )

    def _start_lazily(self) -> None:
        if self._autostart:
            self.start()

    async def sync(self) -> None:
        """One round trip: send queued outcomes and our counts, take in the shared figures.

        Raises RedisError (or OSError, TimeoutError) if Redis failed; then the view is
        left as it was and everything is sent again by the next sync.
        """
        async with self._lock:
            await self._sync(leaving=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = 0.0
        while not self._closed:
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_interval):
                        await self._wake.wait()
            # Activity wakes us at once, but calls stay `sync_interval` apart: a busy
            # replica sends batches, not one call per request.
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._closed:
                return
            self._wake.clear()
            started = loop.time()
            ok = await self._sync_quietly()
            next_at = started + (self._interval if ok else self._idle_interval)

    async def _sync_quietly(self) -> bool:
        try:
            await self.sync()
        except (RedisError, OSError, TimeoutError) as exc:
            # Routing goes on with the local view; said once, not ten times a second.
            self.redis.failed(exc)
            return False
        except Exception:  # a bug here must not end the sync for the life of the process
            log.exception("router state: sync failed")
            return False
        self.redis.succeeded()
        return True

    def _sync_ids(self, dirty: set[uuid.UUID], *, leaving: bool) -> list[uuid.UUID]:
        """The nodes a sync sends and refreshes: all it must, then some others in turn.

        Must: counts changed or in flight, queued outcomes, nodes a plan just met (never
        fetched). Others: REFRESH_PER_SYNC of the remaining views, round robin, so with
        10,000 nodes known each is refreshed every few seconds while the nodes this
        replica uses are refreshed by every sync; a sync costs the same at any market
        size. Leaving sends every node (its counts are withdrawn everywhere).
        """
        views = self._views
        if leaving or len(views) <= REFRESH_PER_SYNC:
            return list(views)
        must = dirty | self._busy | self._unfetched | {e.node_id for e in self._events}
        ids = [node_id for node_id in must if node_id in views]
        ring = self._ring
        for _ in range(min(REFRESH_PER_SYNC, len(ring))):
            node_id = ring.popleft()
            if node_id in views:  # forgotten views leave the ring here
                ring.append(node_id)
                if node_id not in must:
                    ids.append(node_id)
        return ids

    async def _sync(self, *, leaving: bool) -> None:
        views = self._views
        if not views:
            return
        dirty, self._dirty = self._dirty, set()
        ids = self._sync_ids(dirty, leaving=leaving)
        index = {node_id: i for i, node_id in enumerate(ids, 1)}
        counts = " ".join(
            f"{index[node_id]} {view.in_flight}"
            for node_id, view in views.items()
            if view.in_flight or node_id in dirty
        )
        events = list(self._events)
        first = events[0].seq if events else self._event_seq + 1
        last_sent = events[-1].seq if events else self._event_seq
        encoded = " ".join(
            f"{index[e.node_id]} {e.kind} {_text(e.first)} {_text(e.second)}" for e in events
        )
        self._call_seq += 1
        args: list[str | int | float] = [
            self.replica,
            NODE_KEY_TTL_SECONDS,
            self._replica_ttl,
            self._forget,
            self._call_seq,
            counts,
            first,
            encoded,
            "1" if leaving else "0",
        ]
        keys = [self._replicas_key, self._acks_key, *(views[node_id].key for node_id in ids)]
        sent_at = self._clock()
        try:
            reply = await self._script(keys=keys, args=args)
        except BaseException:
            self._dirty |= dirty  # the events stay queued until acknowledged
            if time.monotonic() - self._synced_at > self._replica_ttl:
                for view in views.values():
                    view.others = 0  # unknown by now; the EWMAs are still the best we have
            raise
        self._take_in(reply, ids, last_sent, local_now=(sent_at + self._clock()) / 2)

    def _take_in(
        self, reply: bytes | str, ids: list[uuid.UUID], last_sent: int, *, local_now: float
    ) -> None:
        """Replace the view by Redis's figures, then replay what happened since the call left."""
        parts = (reply.decode() if isinstance(reply, bytes) else str(reply)).split("|")
        offset = float(parts[0]) - local_now  # server clock minus ours
        events = self._events
        while events and events[0].seq <= last_sent:
            events.popleft()
        views = self._views
        for node_id, part in zip(ids, parts[1:], strict=True):
            view = views[node_id]
            others, ttft, tps, err, err_at, cool, fails = part.split(" ")
            view.others = int(float(others))
            view.ttft_ms = _number(ttft)
            view.tokens_per_second = _number(tps)
            view.error = _number(err) or 0.0
            view.error_at = 0.0 if err_at == "-" else float(err_at) - offset
            view.cooldown_until = 0.0 if cool == "-" else float(cool) - offset
            view.failures = 0 if fails == "-" else int(fails)
        self._unfetched.difference_update(ids)
        replaced = set(ids)
        for event in events:
            if event.node_id in replaced:
                self._replay(views[event.node_id], event)
        self._synced_at = time.monotonic()
        self._forget_stale(local_now)

    @staticmethod
    def _replay(view: _View, event: _Event) -> None:
        view.record(
            ok=event.kind == "1",
            ttft_ms=event.first,
            tokens_per_second=event.second,
            now=event.at,
        )

    def _forget_stale(self, now: float) -> None:
        # A walk over every view: once a minute is plenty for a 10-minute horizon.
        if now - self._forgot_at < FORGET_NODE_SECONDS / 10:
            return
        self._forgot_at = now
        cutoff = now - FORGET_NODE_SECONDS
        stale = [
            node_id
            for node_id, view in self._views.items()
            if view.seen_at < cutoff and not view.in_flight and node_id not in self._dirty
        ]
        if stale:
            queued = {event.node_id for event in self._events}
            for node_id in stale:
                if node_id not in queued:
                    del self._views[node_id]
                    self._unfetched.discard(node_id)

    async def close(self) -> None:
        """Stop the sync, send what is queued and withdraw our counts: at most `close_timeout`."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # redis-py may swallow a cancellation; a stuck task must not hold up shutdown.
            await asyncio.wait([task], timeout=min(STOP_TASK_SECONDS, self._close_timeout / 4))
        if self._views:
            flush = loop.create_task(self._flush())
            done, _ = await asyncio.wait([flush], timeout=max(0.0, deadline - loop.time()))
            if not done:
                flush.cancel()
                log.warning("router state: gave up sending the last figures to Redis")
        if self._owns_client:
            closing = loop.create_task(self._client.aclose())
            await asyncio.wait([closing], timeout=max(0.1, deadline - loop.time()))

    async def _flush(self) -> None:
        try:
            async with self._lock:
                await self._sync(leaving=True)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "router state: could not send the last figures to Redis: %s: %s",
                type(exc).__name__,
                exc,
            )
