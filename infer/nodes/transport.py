"""The platform's HTTP/1.1 client for node runtimes: guarded, pooled, and lean.

Every call to a node goes through one `NodeHTTP`. It connects only to addresses the
outbound policy admits (resolved and vetted per connection, then pinned: the socket goes
to the vetted IP, while the Host header and TLS verification use the name), never follows
redirects, ignores proxy settings, and keeps connections alive per origin.

Why not httpx here: on the benchmark box httpx's own request and response machinery
cost ~370 µs of CPU per call before any byte crossed the network, a fifth of the
gateway's whole latency budget. The node calls need little of it: a POST or GET with a
small body, a response read as it arrives under deadlines the caller sets. This client
does that on an asyncio protocol with httptools' parser (the one uvicorn uses):
data is parsed as the socket delivers it and a read that finds bytes waiting returns
them without a task switch or a timer.

Deadlines: `request(..., until=)` and `Response.read(until=)` take an absolute event
loop time and raise TimeoutError when it passes while waiting; a connect has its own
timeout. Errors are UpstreamError with a message that names what failed, never what
the node sent.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from infer.errors import BadInput, UpstreamError, UpstreamTimeout
from infer.security.outbound import AddressPolicy, resolve, vet_addresses

KEEPALIVE_EXPIRY = 30.0  # seconds an idle connection is kept for reuse
MAX_IDLE_PER_ORIGIN = 100
MAX_HEAD_BYTES = 64 << 10  # status line and headers of one response
READ_BUFFER_BYTES = 256 << 10  # body bytes buffered before the socket is paused
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN_IN_HEADERS = str.maketrans("", "", "\r\n\0")

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
    if scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
        raise UpstreamError("the node's URL is not valid")
    port = port or _DEFAULT_PORTS[scheme]
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    return Target(scheme, host, port, path, host_header)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _wait(waiter: asyncio.Future[None], until: float | None) -> None:
    """Await `waiter`; TimeoutError once the loop time passes `until`."""
    if until is None:
        await waiter
        return
    timer = waiter.get_loop().call_at(until, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


class _Connection(asyncio.Protocol):
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


class Response:
    """A node's answer: status and headers now, the body as it arrives."""

    def __init__(self, pool: NodeHTTP, connection: _Connection, url: str) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self.url = url
        self.status = connection.status
        self.headers: Mapping[str, str] = connection.headers

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_redirect(self) -> bool:
        return self.status in (301, 302, 303, 307, 308) and "location" in self.headers

    async def read(self, until: float | None = None) -> bytes:
        """The body bytes that arrived since the last read (waiting if none); b"" at the end."""
        conn = self._connection
        if conn is None:
            return b""
        while True:
            if conn.body:
                return conn.take_body()
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                return b""
            waiter = conn.waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(waiter, until)
            finally:
                conn.waiter = None

    async def aclose(self) -> None:
        """Give the connection back for reuse if the body was read to its end, else close it."""
        conn, self._connection = self._connection, None
        if conn is not None and not self._pool.release(conn):
            await conn.shut()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class NodeHTTP:
    """The process's client for node calls; close it at shutdown."""

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        connect_timeout: float,
        user_agent: str,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self._user_agent = user_agent
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._ssl = ssl_context  # None: certifi's CAs, loaded at the first https node

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] = {},
        body: bytes = b"",
        until: float | None = None,
    ) -> Response:
        """Send one request; return once the response head has arrived.

        TimeoutError when `until` (loop time) passes first; UpstreamError when the node
        cannot be reached, refuses the protocol, or its address is not allowed.
        """
        target = parse_target(url)
        head = self._head(method, target, headers, len(body))
        conn = self._pooled((target.scheme, target.host, target.port))
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, until, url)
            except UpstreamError:
                if conn.received:
                    raise
                # The node had closed the idle connection as we sent on it: once more, fresh.
        conn = await self._connect(target, until)
        return await self._exchange(conn, head, body, until, url)

    def _head(self, method: str, target: Target, headers: Mapping[str, str], length: int) -> bytes:
        lines = [
            f"{method} {target.path} HTTP/1.1",
            f"Host: {target.host_header}",
            f"User-Agent: {self._user_agent}",
        ]
        for name, value in headers.items():
            if value.translate(_FORBIDDEN_IN_HEADERS) != value:
                raise UpstreamError(f"the {name} header for the node holds a line break")
            lines.append(f"{name}: {value}")
        if length or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length}")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError as exc:
            raise UpstreamError("a header for the node holds characters HTTP cannot carry") from exc

    async def _exchange(
        self, conn: _Connection, head: bytes, body: bytes, until: float | None, url: str
    ) -> Response:
        self._busy.add(conn)
        try:
            conn.send(head, body)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                waiter = conn.waiter = asyncio.get_running_loop().create_future()
                try:
                    await _wait(waiter, until)
                finally:
                    conn.waiter = None
        except BaseException:
            self._busy.discard(conn)
            await conn.shut()
            raise
        return Response(self, conn, url)

    def _pooled(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        stale_before = asyncio.get_running_loop().time() - self.keepalive_expiry
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have timed out
            if not conn.closed and conn.idle_since >= stale_before:
                return conn
            conn.close()
        return None

    def release(self, conn: _Connection) -> bool:
        """Take a connection back from a finished response; False if it cannot be reused."""
        self._busy.discard(conn)
        idle = self._idle.setdefault(conn.origin, collections.deque())
        if not conn.reusable() or len(idle) >= MAX_IDLE_PER_ORIGIN:
            return False
        conn.idle_since = asyncio.get_running_loop().time()
        idle.append(conn)
        return True

    async def _connect(self, target: Target, until: float | None) -> _Connection:
        """A new connection to a vetted address of the target (the name is resolved now)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        if until is not None and until < deadline:
            deadline = until
        origin = (target.scheme, target.host, target.port)
        tls = self._tls() if target.scheme == "https" else None
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await resolve(target.host, target.port)
                vet_addresses(target.host, addresses, self.policy)
                error: OSError | None = None
                for ip in addresses:  # pinned: we connect to the address we checked
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(origin),
                            str(ip),
                            target.port,
                            ssl=tls,
                            server_hostname=target.host if tls else None,
                        )
                        return conn
                    except OSError as exc:  # ssl.SSLError is an OSError
                        error = exc
                raise error or OSError("no address to connect to")
        except BadInput as exc:
            log.warning("call to %s refused by the outbound policy: %s", target.host, exc.message)
            raise UpstreamError("the node's address is not allowed by the platform") from exc
        except TimeoutError as exc:
            if until is not None and deadline >= until:
                raise  # the caller's deadline: the caller says what it stands for
            raise UpstreamTimeout("the node did not answer in time") from exc
        except ssl.SSLError as exc:
            raise UpstreamError("the TLS handshake with the node failed") from exc
        except OSError as exc:
            raise UpstreamError("cannot connect to the node") from exc

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            import certifi  # httpx's CA bundle; loaded once, at the first https node

            self._ssl = ssl.create_default_context(cafile=certifi.where())
        return self._ssl

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()

    async def __aenter__(self) -> NodeHTTP:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
