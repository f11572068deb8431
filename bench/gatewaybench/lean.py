"""The lean load generator: HTTP/1.1 keep-alive on an asyncio.Protocol, parsed by httptools.

Everything runs on one 2-core machine, so what the load generator spends per request is
taken from the platform. httpx (httpcore, h11, anyio) costs it 1.4 to 3.5 ms of CPU per
request here, this client 0.1 to 0.7: it writes bytes prepared once per row (`Call.raw`)
and lets llhttp, in C, parse the answer, calling back into Python a few times per
response: no streams, no per-request header objects, no cancel scopes, one future per
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import cast
from urllib.parse import urlsplit

import httptools

from .calls import Call, Reply, Sender, Target
from .errors import CallFailed

TIMEOUT = 30.0  # seconds for a whole answer, as the httpx clients allow
WATCH_EVERY = 1.0  # seconds between the watchdog's looks at the connections


class Wire(asyncio.Protocol):
    """One TCP connection: one request at a time, its answer collected by httptools callbacks.

    Content-length and chunked bodies alike end in `on_message_complete`, which resolves
    the waiting request's future. No timer per request: the pool's watchdog aborts an
    exchange that makes no progress.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reusable = False
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.parts: list[bytes] = []
        self.first: float | None = None
        self.exchanges = 0  # requests sent so far: the watchdog's sign of progress

    async def exchange(self, raw: bytes) -> Reply:
        assert self.transport is not None
        self.status, self.parts, self.first = 0, [], None
        self.exchanges += 1
        waiter = self.waiter = self.loop.create_future()
        self.transport.write(raw)
        try:
            await waiter
        finally:
            self.waiter = None
        return Reply(self.status, b"".join(self.parts), self.first)

    def fail(self, message: str) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(CallFailed(message))

    def time_out(self) -> None:
        self.fail(f"no complete answer within {TIMEOUT:g} s")
        if self.transport is not None:
            self.transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.fail(f"unparsable answer ({type(exc).__name__}: {exc})")
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost ({exc or 'closed by the server'})")

    # httptools.HttpResponseParser callbacks

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.parser.should_keep_alive():
            self.reusable = False  # answered, then closed: the next request reconnects

    def on_body(self, body: bytes) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.parts.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class LeanSender:
    """One worker's keep-alive connection, (re)opened when needed."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.wire: Wire | None = None

    async def send(self, call: Call) -> Reply:
        wire = self.wire
        if wire is None or not wire.reusable:
            wire = self.wire = await self.connect()
        return await wire.exchange(call.raw)

    async def connect(self) -> Wire:
        self.close()
        loop = asyncio.get_running_loop()
        try:
            _, wire = await loop.create_connection(lambda: Wire(loop), self.host, self.port)
        except OSError as exc:
            raise CallFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return wire

    def close(self) -> None:
        if self.wire is not None and self.wire.transport is not None:
            self.wire.transport.close()
        self.wire = None


class LeanPool:
    """`size` lean senders per server, each with its own connection, and their watchdog."""

    def __init__(self, *, size: int) -> None:
        self.size = size
        self._senders: dict[str, list[LeanSender]] = {}
        self._watchdog: asyncio.Task[None] | None = None

    def senders(self, target: Target, count: int) -> list[Sender]:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self.watch())
        if target.path not in self._senders:
            url = urlsplit(target.url)
            assert url.hostname is not None
            assert url.port is not None
            self._senders[target.path] = [
                LeanSender(url.hostname, url.port) for _ in range(self.size)
            ]
        senders = self._senders[target.path]
        return [senders[i % len(senders)] for i in range(count)]

    async def watch(self) -> None:
        """Fail every request that has waited TIMEOUT seconds for its answer.

        A look at all connections each second instead of a timer per request: uvloop's
        `call_later` and `cancel` cost 12 to 15 µs, a quarter of this client's CPU per answer.
        """
        seen: dict[Wire, tuple[int, float]] = {}  # the exchange waiting, since when
        while True:
            await asyncio.sleep(WATCH_EVERY)
            now = time.monotonic()
            for senders in self._senders.values():
                for sender in senders:
                    wire = sender.wire
                    if wire is None or wire.waiter is None:
                        continue
                    exchange, since = seen.get(wire, (-1, now))
                    if exchange != wire.exchanges:
                        seen[wire] = (wire.exchanges, now)
                    elif now - since >= TIMEOUT:
                        wire.time_out()

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for senders in self._senders.values():
            for sender in senders:
                sender.close()
