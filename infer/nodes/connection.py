"""One HTTP/1.1 connection to a node, as an asyncio protocol over httptools' parser.

`NodeHTTP` (`transport.py`) pools these and hands out their answers as `Response`s.
A connection carries one exchange at a time: httptools parses the answer as the socket
delivers it, the head and the body wake whoever waits for them, and reading pauses
when READ_BUFFER_BYTES of body wait unread.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from infer.errors import UpstreamError

MAX_HEAD_BYTES = 64 << 10  # status line and headers of one response
READ_BUFFER_BYTES = 256 << 10  # body bytes buffered before the socket is paused
DEFAULT_PORTS = {"http": 80, "https": 443}

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points: the origin a connection serves and the request target."""

    scheme: str
    host: str
    port: int
    path: str  # request target: path and query, percent-encoded
    host_header: str


@functools.lru_cache(maxsize=4096)
def parse_target(url: str) -> Target:
    """Split an http(s) URL; UpstreamError when it is not one this client can call."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UpstreamError("the node's URL is not valid") from exc
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host or parts.username or parts.password:
        raise UpstreamError("the node's URL is not valid")
    port = port or DEFAULT_PORTS[scheme]
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    return Target(scheme, host, port, path, host_header)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def wait_until(waiter: asyncio.Future[None], until: float | None) -> None:
    """Await `waiter`; TimeoutError once the loop time passes `until`."""
    if until is None:
        await waiter
        return
    timer = waiter.get_loop().call_at(until, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


class Connection(asyncio.Protocol):
    """One keep-alive connection to an origin, carrying one exchange at a time."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self._head_bytes = 0
        self.head_done = False
        self.received = False  # any byte of this exchange's answer
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.until_eof = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.complete:  # bytes after the end of the answer: the connection is spoiled
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:  # the same, when they came with the end of the answer
                self.close()
                return
            log.debug("unparseable answer from %s: %s", self.origin[1], exc)
            self._fail(UpstreamError("the node broke off the connection or the HTTP protocol"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if self.head_done and self.until_eof and not self.complete and exc is None:
            # A body without length or chunks ends with the connection (a reset cuts it short).
            self.complete = True
            self._wake()
        elif not self.complete:
            self._fail(UpstreamError("the node broke off the connection or the HTTP protocol"))

    def pause_writing(self) -> None:  # request bodies are small and written at once
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request is not part of the first
            raise ValueError("bytes after the end of the answer")  # stops the parser

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail(UpstreamError("the node's response headers are too large"))
            raise ValueError("headers too large")  # stops the parser
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (103 Early Hints): the real one follows
            self.headers, self._head_bytes = {}, 0
            return
        self.status = status
        self.head_done = True
        framed = (
            "content-length" in self.headers
            or "chunked" in self.headers.get("transfer-encoding", "").lower()
        )
        self.until_eof = not framed and status not in (204, 304)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > READ_BUFFER_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            # llhttp answers this only inside the callbacks.
            self.keep_alive = self.parser.should_keep_alive()
            self._wake()

    # used by Response

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def take_body(self) -> bytes:
        body = self.body
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return data

    def send(self, head: bytes, body: bytes) -> None:
        self._reset()
        self.exchanges += 1
        assert self.transport is not None
        self.transport.write(head + body)

    def reusable(self) -> bool:
        return (
            self.complete
            and not self.closed
            and not self.until_eof
            and self.error is None
            and self.keep_alive
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def shut(self) -> None:
        """Close, and wait (briefly) until the socket is closed: the node sees it at once."""
        self.close()
        if self.transport is not None and not self.lost.done():
            await asyncio.wait((self.lost,), timeout=1.0)
