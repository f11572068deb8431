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
import logging
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, Self

from infer.errors import BadInput, UpstreamError, UpstreamTimeout
from infer.nodes.connection import Connection, Target, parse_target, wait_until
from infer.security.outbound import AddressPolicy, resolve, vet_addresses

KEEPALIVE_EXPIRY = 30.0  # seconds an idle connection is kept for reuse
MAX_IDLE_PER_ORIGIN = 100
_FORBIDDEN_IN_HEADERS = str.maketrans("", "", "\r\n\0")

log = logging.getLogger(__name__)


class NodeResponse:
    """A node's answer, read the same whether the node was called directly (`Response`)
    or through its agent's tunnel (infer/tunnel/): status and headers now, then the body."""

    url: str
    status: int
    headers: Mapping[str, str]

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_redirect(self) -> bool:
        return False

    async def read(self, until: float | None = None) -> bytes:
        """The body bytes that arrived since the last read (waiting if none); b"" at the end."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Tunnels(Protocol):
    """Where `tunnel://` URLs go (infer/tunnel/calls.py): nodes reached through their agent."""

    async def request(
        self,
        url: str,
        *,
        method: str,
        headers: Mapping[str, str],
        body: bytes,
        until: float | None,
    ) -> NodeResponse: ...

    async def aclose(self) -> None: ...


class Response(NodeResponse):
    """A directly called node's answer, on one of the pool's connections."""

    def __init__(self, pool: NodeHTTP, connection: Connection, url: str) -> None:
        self._pool = pool
        self._connection: Connection | None = connection
        self.url = url
        self.status = connection.status
        self.headers: Mapping[str, str] = connection.headers

    @property
    def is_redirect(self) -> bool:
        return self.status in (301, 302, 303, 307, 308) and "location" in self.headers

    async def read(self, until: float | None = None) -> bytes:
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
                await wait_until(waiter, until)
            finally:
                conn.waiter = None

    async def aclose(self) -> None:
        """Give the connection back for reuse if the body was read to its end, else close it."""
        conn, self._connection = self._connection, None
        if conn is not None and not self._pool.release(conn):
            await conn.shut()


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
        self._idle: dict[tuple[str, str, int], collections.deque[Connection]] = {}
        self._busy: set[Connection] = set()
        self._ssl = ssl_context  # None: certifi's CAs, loaded at the first https node
        self.tunnels: Tunnels | None = None  # set when the process can reach tunnelled nodes

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] = {},
        body: bytes = b"",
        until: float | None = None,
    ) -> NodeResponse:
        """Send one request; return once the response head has arrived.

        TimeoutError when `until` (loop time) passes first; UpstreamError when the node
        cannot be reached, refuses the protocol, or its address is not allowed.
        """
        if url.startswith("tunnel://"):
            if self.tunnels is None:
                raise UpstreamError("the node is reached through a tunnel this process cannot use")
            return await self.tunnels.request(
                url, method=method, headers=headers, body=body, until=until
            )
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
        self, conn: Connection, head: bytes, body: bytes, until: float | None, url: str
    ) -> Response:
        self._busy.add(conn)
        try:
            conn.send(head, body)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                waiter = conn.waiter = asyncio.get_running_loop().create_future()
                try:
                    await wait_until(waiter, until)
                finally:
                    conn.waiter = None
        except BaseException:
            self._busy.discard(conn)
            await conn.shut()
            raise
        return Response(self, conn, url)

    def _pooled(self, origin: tuple[str, str, int]) -> Connection | None:
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

    def release(self, conn: Connection) -> bool:
        """Take a connection back from a finished response; False if it cannot be reused."""
        self._busy.discard(conn)
        idle = self._idle.setdefault(conn.origin, collections.deque())
        if not conn.reusable() or len(idle) >= MAX_IDLE_PER_ORIGIN:
            return False
        conn.idle_since = asyncio.get_running_loop().time()
        idle.append(conn)
        return True

    async def _connect(self, target: Target, until: float | None) -> Connection:
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
                            lambda: Connection(origin),
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
        if self.tunnels is not None:
            await self.tunnels.aclose()

    async def __aenter__(self) -> NodeHTTP:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
