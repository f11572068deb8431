"""The agent's end of the node tunnel: one outbound WebSocket, requests served by the runtime.

The platform cannot reach a box behind NAT, so the agent connects out and the platform
sends buyers' requests down that connection (frames: infer/tunnel/protocol.py). The
agent trusts the platform with nothing but a path: every call goes to the runtime's base
URL it was configured with, so a compromised platform cannot use the tunnel to reach
anything else on the operator's network.

It runs in a thread of its own with its own event loop, beside the agent's synchronous
rounds, and reconnects with exponential backoff and full jitter until a permanent
refusal (a revoked key, a node that is not the key's) or `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from infer import __version__
from infer.agent.platform import graphql_url
from infer.errors import UpstreamError, UpstreamTimeout
from infer.nodes.transport import NodeHTTP
from infer.security.outbound import AddressPolicy
from infer.tunnel import protocol
from infer.tunnel.protocol import Credit, Hello, Open, ProtocolError, Signal

LOG = logging.getLogger("infer.agent.tunnel")
_PERMANENT_STATUSES = {401: "the key was refused", 403: "the key may not open this tunnel"}
_REFUSALS = {
    protocol.CLOSE_UNAUTHORIZED: "the platform refused the key",
    protocol.CLOSE_FORBIDDEN: "the key may not open a tunnel for this node",
    protocol.CLOSE_NOT_FOUND: "the platform knows no tunnel node with this id",
}


def tunnel_url(platform: str, node_id: str) -> str:
    """The tunnel's WebSocket URL: the platform's base URL, http→ws and https→wss."""
    base = graphql_url(platform).removesuffix("/graphql")
    scheme, rest = base.split("://", 1)
    scheme = "wss" if scheme == "https" else "ws"
    return f"{scheme}://{rest}/api/v1/nodes/{quote(node_id, safe='')}/tunnel"


@dataclass(frozen=True, slots=True)
class RuntimeDeadlines:
    """Seconds the runtime has to accept a connection, and to send its answer's head or
    its next bytes (a model loading, a long prompt)."""

    connect: float = 5.0
    answer: float = 300.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds between attempts: full jitter over `first` doubling up to `cap`; a connection
    that lasted `reset_after` seconds starts the count again."""

    first: float = 1.0
    cap: float = 60.0
    reset_after: float = 60.0

    def delay(self, failures: int, draw: Callable[[], float] = random.random) -> float:
        ceiling: float = min(self.cap, self.first * 2.0 ** max(failures - 1, 0))
        return draw() * ceiling


@dataclass(frozen=True, slots=True)
class TunnelState:
    """What the status line and the console show about the tunnel."""

    state: Literal["connecting", "connected", "refused", "stopped"] = "connecting"
    attempt: int = 0
    retry_in: float | None = None  # seconds until the next attempt, while waiting
    reason: str | None = None  # why the last connection ended, or why it was refused
    streams: int = 0
    served: int = 0

    def describe(self, *, counts: bool = False) -> str:
        """One line; without `counts` it changes only with the state (the status line's log)."""
        if self.state == "connected":
            served = f" ({self.streams} open, {self.served} served)" if counts else ""
            return f"tunnel connected{served}"
        if self.state == "connecting":
            wait = f", next try in {self.retry_in:.0f} s" if counts and self.retry_in else ""
            why = f": {self.reason}" if self.reason else ""
            return f"tunnel connecting (attempt {self.attempt}{wait}){why}"
        return f"tunnel {self.state}" + (f": {self.reason}" if self.reason else "")


class _Refused(Exception):
    """The platform will not take this tunnel; retrying cannot help."""


@dataclass(eq=False, slots=True)
class _Stream:
    """One exchange: the request's body as it arrives, the answer's credit, its task."""

    open: Open
    credit: int
    body: bytearray
    task: asyncio.Task[None] | None = None
    credited: asyncio.Event = field(default_factory=asyncio.Event)


class TunnelClient:
    """Keeps the tunnel open from a thread of its own; `stop()` from any thread ends it."""

    def __init__(
        self,
        *,
        platform: str,
        node_id: str,
        node_key: str,
        runtime_url: str,
        runtime_token: str | None = None,
        backoff: Backoff | None = None,
        open_timeout: float = 10.0,
        runtime_deadlines: RuntimeDeadlines = RuntimeDeadlines(),
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.url = tunnel_url(platform, node_id)
        self.node_id = node_id
        self.node_key = node_key
        self.runtime_url = runtime_url.rstrip("/")
        self.runtime_token = runtime_token
        self.backoff = backoff or Backoff()
        self.open_timeout = open_timeout
        self.runtime_deadlines = runtime_deadlines
        self.draw = draw
        self._state = TunnelState(attempt=1)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def state(self) -> TunnelState:
        with self._lock:
            return self._state

    def describe(self) -> str:
        return self.state.describe()

    def _update(self, **changes: object) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)  # type: ignore[arg-type]

    def start(self) -> None:
        """Connects in a background thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="infer-tunnel", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Closes the tunnel and its streams, and waits for the thread to end."""
        with self._lock:
            self._stopping = True
            if self._loop is not None and self._task is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        task = asyncio.current_task()
        with self._lock:
            if self._stopping:
                return
            self._loop, self._task = asyncio.get_running_loop(), task
        try:
            # The platform's own lean client for runtimes (infer/nodes/transport.py): no
            # proxies, no redirects, deadlines per read; httpx cost ~4x its CPU per call.
            # The runtime is the operator's own, on loopback or their network: allowed.
            async with NodeHTTP(
                policy=AddressPolicy(allow_private=True),
                connect_timeout=self.runtime_deadlines.connect,
                user_agent=f"infer-agent/{__version__}",
            ) as http:
                await self._keep_connected(http)
        except asyncio.CancelledError:
            pass
        finally:
            with self._lock:
                self._loop = self._task = None  # stop() after this has nothing to cancel
            if self.state.state != "refused":
                self._update(state="stopped", retry_in=None, streams=0)

    async def _keep_connected(self, http: NodeHTTP) -> None:
        failures = 0
        while True:
            self._update(state="connecting", attempt=failures + 1, retry_in=None)
            began = time.monotonic()
            try:
                reason = await self._connect_once(http)
            except _Refused as exc:
                LOG.error("tunnel refused: %s", exc)
                self._update(state="refused", reason=str(exc), retry_in=None, streams=0)
                return
            if time.monotonic() - began > self.backoff.reset_after:
                failures = 0
            failures += 1
            delay = self.backoff.delay(failures, self.draw)
            LOG.warning("tunnel closed (%s); next try in %.1f s", reason, delay)
            self._update(
                state="connecting", attempt=failures + 1, retry_in=delay, reason=reason, streams=0
            )
            await asyncio.sleep(delay)

    async def _connect_once(self, http: NodeHTTP) -> str:
        """One connection, served until it ends; why it ended. Raises _Refused for good."""
        try:
            async with connect(
                self.url,
                subprotocols=[protocol.SUBPROTOCOL],  # type: ignore[list-item]
                additional_headers={"Authorization": f"Bearer {self.node_key}"},
                max_size=protocol.MAX_MESSAGE,
                compression=None,  # tokens in small frames: deflate costs more than it saves
                open_timeout=self.open_timeout,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=5,  # a platform that stopped reading must not hold up stop()
            ) as ws:
                await _Session(self, ws, http).serve()
                code, why = ws.close_code, ws.close_reason
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in _PERMANENT_STATUSES or status == 404:
                raise _Refused(
                    _PERMANENT_STATUSES.get(status, "the platform has no tunnel for this node")
                ) from exc
            return f"the platform answered HTTP {status}"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return f"could not connect: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        except ConnectionClosed as exc:
            code, why = exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""
        if code in protocol.PERMANENT_CLOSES:
            raise _Refused(f"{_REFUSALS[code]}" + (f" ({why})" if why else ""))
        return f"closed with {code}" + (f": {why}" if why else "") if code else "connection lost"


class _Session:
    """One connection's streams: reads the platform's frames, runs one task per stream."""

    def __init__(self, client: TunnelClient, ws: ClientConnection, http: NodeHTTP) -> None:
        self.client = client
        self.ws = ws
        self.http = http
        self.streams: dict[int, _Stream] = {}
        self.hello: Hello | None = None

    async def serve(self) -> None:
        try:
            self.hello = await self._greeting()
            self.client._update(state="connected", reason=None, retry_in=None)
            LOG.info("tunnel connected to %s", self.client.url)
            async for message in self.ws:
                try:
                    if isinstance(message, str):
                        await self._control(protocol.decode(message))
                    else:
                        self._body(*protocol.unchunk(message))
                except ProtocolError as exc:
                    if exc.stream is None:
                        raise
                    # An open this agent will not serve (a method other than GET or
                    # POST): that stream is refused, the others carry on.
                    await self._send(Signal("error", exc.stream, exc.message))
        except ProtocolError as exc:
            LOG.warning("tunnel: the platform broke the protocol: %s", exc.message)
            await self.ws.close(exc.code, exc.message[:120])
        finally:
            tasks = [s.task for s in self.streams.values() if s.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.streams.clear()

    async def _greeting(self) -> Hello:
        try:
            first = await asyncio.wait_for(self.ws.recv(), self.client.open_timeout)
        except TimeoutError as exc:
            raise ProtocolError("no hello from the platform") from exc
        hello = protocol.decode(first) if isinstance(first, str) else None
        if not isinstance(hello, Hello):
            raise ProtocolError("the first message was not a hello")
        if hello.version != protocol.VERSION or hello.node != self.client.node_id:
            raise ProtocolError("the hello names another version or node")
        # The platform's limits, within the agent's own: a platform cannot make it take more.
        return replace(
            hello,
            max_streams=min(hello.max_streams, protocol.MAX_STREAMS),
            max_body=min(hello.max_body, protocol.MAX_BODY),
        )

    async def _control(self, message: protocol.Message) -> None:
        match message:
            case Open():
                await self._open(message)
            case Credit():
                stream = self.streams.get(message.id)
                if stream is not None:
                    stream.credit += message.bytes
                    stream.credited.set()
            case Signal(kind="cancel"):
                stream = self.streams.pop(message.id, None)
                if stream is not None and stream.task is not None:
                    stream.task.cancel()
                self._count()
            case _:
                raise ProtocolError("the platform sent a message only the agent sends")

    async def _open(self, request: Open) -> None:
        hello = self.hello
        assert hello is not None  # serve() reads the hello first
        reused = self.streams.pop(request.id, None)
        if reused is not None:
            if reused.task is not None:
                reused.task.cancel()
            refusal: str | None = "stream id reused while its request was open"
        elif len(self.streams) >= hello.max_streams:
            refusal = "too many streams"
        elif request.length > hello.max_body:
            refusal = f"request body over {hello.max_body} bytes"
        elif request.length + self._awaited() > hello.max_body:
            # The platform sends each body right after its open: bodies awaited on several
            # streams at once would only let it make the agent hold 128 of them.
            refusal = f"request bodies awaited over {hello.max_body} bytes"
        elif not protocol.path_allowed(request.path):
            refusal = "path refused: the agent calls its own runtime's API paths only"
        else:
            refusal = None
        if refusal is not None:
            self._count()
            await self._send(Signal("error", request.id, refusal))
            return
        stream = _Stream(request, credit=hello.window, body=bytearray())
        self.streams[request.id] = stream
        if request.length == 0:
            self._begin(stream)
        self._count()

    def _awaited(self) -> int:
        """Body bytes declared by streams whose call has not begun."""
        return sum(s.open.length for s in self.streams.values() if s.task is None)

    def _body(self, stream_id: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.task is not None:
            return  # a stream refused, cancelled or already answered: nothing to feed
        if len(stream.body) + len(payload) > stream.open.length:
            raise ProtocolError("more body bytes than the open declared")
        stream.body += payload
        if len(stream.body) == stream.open.length:
            self._begin(stream)

    def _begin(self, stream: _Stream) -> None:
        stream.task = asyncio.create_task(self._call(stream), name=f"tunnel-{stream.open.id}")

    def _count(self) -> None:
        self.client._update(streams=len(self.streams))

    async def _send(self, message: protocol.Message) -> None:
        await self.ws.send(protocol.encode(message))

    async def _call(self, stream: _Stream) -> None:
        """The runtime's answer to one stream, relayed within its credit."""
        request, client = stream.open, self.client
        headers = protocol.kept_headers(request.headers, protocol.REQUEST_HEADERS)
        if client.runtime_token:
            headers["authorization"] = f"Bearer {client.runtime_token}"
        loop, patience = asyncio.get_running_loop(), client.runtime_deadlines.answer
        began = False
        try:
            answer = await self.http.request(
                request.method,
                client.runtime_url + request.path,
                headers=headers,
                body=bytes(stream.body),
                until=loop.time() + patience,
            )
            async with answer:  # left early (a cancel): the connection is closed, not reused
                kept = protocol.kept_headers(answer.headers, protocol.ANSWER_HEADERS)
                await self._send(protocol.Head(request.id, answer.status, kept))
                began = True
                while data := await answer.read(loop.time() + patience):
                    await self._relay(stream, data)
            await self._send(Signal("end", request.id))
            client._update(served=client.state.served + 1)
        except (TimeoutError, UpstreamTimeout):
            await self._fail(request.id, "the runtime did not answer in time")
        except UpstreamError:
            await self._fail(request.id, _runtime_failure(began=began))
        except ConnectionClosed:
            pass  # the tunnel is gone: the session's end cancels the rest
        finally:
            if self.streams.get(request.id) is stream:
                del self.streams[request.id]
                self._count()

    async def _relay(self, stream: _Stream, data: bytes) -> None:
        view = memoryview(data)
        while view:
            while stream.credit <= 0:
                stream.credited.clear()
                await stream.credited.wait()
            size = min(stream.credit, protocol.MAX_CHUNK, len(view))
            await self.ws.send(protocol.chunk(stream.open.id, view[:size]))
            stream.credit -= size
            view = view[size:]

    async def _fail(self, stream_id: int, message: str) -> None:
        LOG.warning("tunnel stream %d: %s", stream_id, message)
        with contextlib.suppress(ConnectionClosed):
            await self._send(Signal("error", stream_id, message))


def _runtime_failure(*, began: bool) -> str:
    """One line for the platform: what went wrong, never the runtime's internals."""
    return "the runtime's answer broke off" if began else "the runtime could not be reached"
