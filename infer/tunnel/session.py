"""The platform's end of one agent's tunnel: streams out, answers back, each with its window.

A `Tunnel` is fed the agent's messages by the WebSocket route (`receive_text`,
`receive_bytes`) and sends through one writer task, so that a request never waits on
another's write and a peer that stops reading is noticed (SEND_TIMEOUT) rather than
buffered without end. `request()` returns a `TunnelResponse` that the runtime clients
use exactly as they use a direct node's answer.

What a misbehaving agent can do is kept to its own streams: a second head, body before
a head or beyond the window resets that stream (its reader gets an UpstreamError and
the agent a cancel); a message that breaks the framing closes the tunnel.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping

from infer.errors import UpstreamError
from infer.nodes.connection import wait_until
from infer.nodes.transport import NodeResponse
from infer.tunnel import protocol
from infer.tunnel.protocol import Credit, Head, Open, ProtocolError, Signal

SEND_TIMEOUT = 15.0  # seconds a write to the agent may wait for room before the tunnel ends
# Bytes queued for the agent and not yet written: past this, new requests fail over. An
# agent that reads just fast enough to dodge SEND_TIMEOUT would otherwise have the bodies
# of requests cancelled meanwhile pile up here, since a cancel frees a stream slot at once.
OUTBOX_LIMIT = protocol.MAX_BODY

log = logging.getLogger(__name__)

Outgoing = str | bytes


class _Stream:
    """One exchange: the head when it comes, the answer bytes as they arrive."""

    __slots__ = ("body", "buffered", "ended", "error", "head", "taken", "waiter")

    def __init__(self) -> None:
        self.head: Head | None = None
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0  # bytes received and not yet credited
        self.taken = 0  # bytes read by the caller and not yet credited
        self.ended = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.ended:
            self.error = error
        self.wake()


class Tunnel:
    """One connected agent's WebSocket, seen from the platform."""

    def __init__(
        self,
        node_id: uuid.UUID,
        send: Callable[[Outgoing], Awaitable[None]],
        *,
        window: int = protocol.WINDOW,
        max_streams: int = protocol.MAX_STREAMS,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.node_id = node_id
        self.session = uuid.uuid4()
        self.window = window
        self.max_streams = max_streams
        self._send = send
        self._send_timeout = send_timeout
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.queued_bytes = 0  # in the outbox, not yet taken by the writer
        self.closed = asyncio.Event()
        self.close_code = protocol.CLOSE_GOING_AWAY
        self.close_reason = ""
        self.served = 0

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def hello(self) -> str:
        return protocol.encode(
            protocol.Hello(
                version=protocol.VERSION,
                node=str(self.node_id),
                window=self.window,
                max_streams=self.max_streams,
                max_body=protocol.MAX_BODY,
            )
        )

    async def write_forever(self) -> None:
        """Send what the streams queue, in order; ends the tunnel if the agent stops reading."""
        while not self.closed.is_set():
            message = await self._outbox.get()
            self.queued_bytes -= len(message)
            if self.closed.is_set():
                return
            try:
                async with asyncio.timeout(self._send_timeout):
                    await self._send(message)
            except TimeoutError:
                self.close(protocol.CLOSE_SLOW, "the agent stopped reading the tunnel")
                return

    # The agent's messages (from the route's receive loop; never blocks).

    def receive_text(self, text: str) -> None:
        message = protocol.decode(text)
        match message:
            case Head():
                stream = self._streams.get(message.id)
                if stream is None:
                    return  # answered after we cancelled it
                if stream.head is not None:
                    return self._reset(message.id, "the node sent a second answer head")
                # The receiver's side of the filter: nothing the protocol does not carry.
                kept = protocol.kept_headers(message.headers, protocol.ANSWER_HEADERS)
                stream.head = Head(message.id, message.status, kept)
                stream.wake()
            case Signal(kind="end"):
                stream = self._streams.get(message.id)
                if stream is not None:
                    if stream.head is None:
                        return self._reset(message.id, "the node ended an answer it never began")
                    stream.ended = True
                    stream.wake()
                    del self._streams[message.id]
                    self.served += 1
            case Signal(kind="error"):
                stream = self._streams.pop(message.id, None)
                if stream is not None:
                    stream.fail(UpstreamError(f"the node's agent: {message.message[:200]}"))
            case _:
                raise ProtocolError("the agent sent a message only the platform may send")

    def receive_bytes(self, data: bytes) -> None:
        stream_id, payload = protocol.unchunk(data)
        stream = self._streams.get(stream_id)
        if stream is None or not payload:
            return  # a late chunk of a stream we cancelled
        if stream.head is None:
            return self._reset(stream_id, "the node sent an answer body before its head")
        stream.buffered += len(payload)
        if stream.buffered > self.window:
            return self._reset(stream_id, "the node sent more than the tunnel's window allows")
        stream.body.append(payload)
        stream.wake()

    # The platform's side of a stream.

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        until: float | None,
        url: str,
    ) -> TunnelResponse:
        """Send one request to the node's runtime; return once its answer's head arrived."""
        if self.closed.is_set():
            raise UpstreamError("the node's tunnel is closed")
        if len(self._streams) >= self.max_streams:
            raise UpstreamError("the node's tunnel carries as many requests as it can")
        if not protocol.path_allowed(path) or method not in protocol.METHODS:
            raise UpstreamError("this request cannot be sent through a tunnel")
        if len(body) > protocol.MAX_BODY:
            raise UpstreamError("the request is too large for the node's tunnel")
        if self.queued_bytes + len(body) > OUTBOX_LIMIT:
            raise UpstreamError("the node's tunnel is backed up: its agent is not reading")
        stream_id = self._next_id
        self._next_id += 2
        stream = self._streams[stream_id] = _Stream()
        kept = protocol.kept_headers(headers, protocol.REQUEST_HEADERS)
        opening = Open(stream_id, method, path, kept, len(body))
        self._queue(protocol.encode(opening))
        for piece in protocol.pieces(body):
            self._queue(protocol.chunk(stream_id, piece))
        try:
            while stream.head is None:
                if stream.error is not None:
                    raise stream.error
                waiter = stream.waiter = asyncio.get_running_loop().create_future()
                try:
                    await wait_until(waiter, until)
                finally:
                    stream.waiter = None
        except BaseException:
            self.cancel(stream_id)
            raise
        return TunnelResponse(self, stream_id, stream, url)

    def cancel(self, stream_id: int) -> None:
        """Forget a stream; tell the agent to stop its call if it may still be running."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None and not self.closed.is_set():
            self._queue(protocol.encode(Signal("cancel", stream_id)))

    def credit(self, stream_id: int, stream: _Stream, taken: int) -> None:
        """The reader took `taken` bytes: give the agent room again, a quarter window at a time."""
        stream.buffered -= taken
        stream.taken += taken
        if stream.taken >= self.window // 4 and stream_id in self._streams:
            self._queue(protocol.encode(Credit(stream_id, stream.taken)))
            stream.taken = 0

    def close(self, code: int, reason: str) -> None:
        """End the tunnel: every stream in flight fails with `reason`."""
        if self.closed.is_set():
            return
        self.close_code, self.close_reason = code, reason
        self.closed.set()
        error = UpstreamError(f"the node's tunnel closed: {reason}")
        for stream in self._streams.values():
            stream.fail(error)
        self._streams.clear()
        self._outbox.put_nowait("")  # wakes the writer so that it ends

    def _queue(self, message: Outgoing) -> None:
        self.queued_bytes += len(message)
        self._outbox.put_nowait(message)

    def _reset(self, stream_id: int, reason: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            log.warning("tunnel of node %s: stream reset: %s", self.node_id, reason)
            stream.fail(UpstreamError(reason))
            self.cancel(stream_id)


class TunnelResponse(NodeResponse):
    """A tunnelled node's answer: the same reading interface as a direct node's `Response`."""

    def __init__(self, tunnel: Tunnel, stream_id: int, stream: _Stream, url: str) -> None:
        assert stream.head is not None
        self._tunnel = tunnel
        self._id = stream_id
        self._stream: _Stream | None = stream
        self.url = url
        self.status = stream.head.status
        self.headers: Mapping[str, str] = stream.head.headers

    async def read(self, until: float | None = None) -> bytes:
        """The answer bytes that arrived since the last read (waiting if none); b"" at the end."""
        stream = self._stream
        if stream is None:
            return b""
        while True:
            if stream.body:
                data = b"".join(stream.body) if len(stream.body) > 1 else stream.body[0]
                stream.body.clear()
                self._tunnel.credit(self._id, stream, len(data))
                return data
            if stream.error is not None:
                raise stream.error
            if stream.ended:
                return b""
            waiter = stream.waiter = asyncio.get_running_loop().create_future()
            try:
                await wait_until(waiter, until)
            finally:
                stream.waiter = None

    async def aclose(self) -> None:
        """Stop the runtime's call on the box if its answer was not read to the end."""
        stream, self._stream = self._stream, None
        if stream is not None and not stream.ended:
            self._tunnel.cancel(self._id)
