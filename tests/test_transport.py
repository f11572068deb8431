"""NodeHTTP against real loopback servers that answer with raw HTTP/1.1 bytes, byte for byte."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from infer.errors import UpstreamError
from infer.nodes.clients.base import Deadlines
from infer.nodes.connection import READ_BUFFER_BYTES
from infer.nodes.http import create_http_client
from infer.nodes.transport import NodeHTTP

ONE_READ = 256 << 10  # the most asyncio's socket transport hands a protocol at once
SLACK = 1.0  # seconds a deadline may be overshot on a busy machine


class Peer:
    """The server's side of one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.requests: list[bytes] = []

    async def request(self) -> bytes:
        """The next request, head and body; b"" once the client has closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        body = await self.reader.readexactly(int(length[1])) if length else b""
        self.requests.append(head + body)
        return head + body

    async def send(self, data: bytes, piece: int = 1 << 16) -> None:
        for start in range(0, len(data), piece):
            self.writer.write(data[start : start + piece])
            await self.writer.drain()
            await asyncio.sleep(0)  # let the client see each piece on its own

    def reset(self) -> None:
        """Abort the connection with a TCP reset instead of an orderly close."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.close()

    async def until_closed(self) -> None:
        """Wait until the client closes the connection, discarding whatever it sends."""
        while await self.reader.read(1 << 16):
            pass


Script = Callable[[Peer], Awaitable[None]]


@dataclass
class Node:
    """A loopback server running `script` on each connection; the connection closes after it."""

    script: Script
    port: int = 0
    peers: list[Peer] = field(default_factory=list)
    handlers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/x"

    @property
    def connections(self) -> int:
        return len(self.peers)

    @property
    def requests(self) -> list[bytes]:
        return [request for peer in self.peers for request in peer.requests]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.append(task)
        self.peers.append(Peer(reader, writer))
        try:
            await self.script(self.peers[-1])
        except ConnectionError:
            pass  # the client went away mid-answer
        finally:
            writer.close()

    async def all_closed(self, within: float = 2.0) -> bool:
        """Whether every connection the server accepted was closed by the client in time."""
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=within)
        return all(task.done() for task in self.handlers)


Serve = Callable[[Script], Awaitable[Node]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[tuple[asyncio.Server, Node]] = []

    async def start(script: Script) -> Node:
        node = Node(script)
        server = await asyncio.start_server(node.handle, "127.0.0.1", 0)
        node.port = server.sockets[0].getsockname()[1]
        started.append((server, node))
        return node

    yield start
    for server, node in started:
        server.close()
        for task in node.handlers:
            task.cancel()
        await asyncio.gather(*node.handlers, return_exceptions=True)


@pytest.fixture
async def http() -> AsyncIterator[NodeHTTP]:
    async with create_http_client(allow_private=True, deadlines=Deadlines(connect=2)) as client:
        yield client


def reply(body: bytes = b"ok", *, head: str = "") -> bytes:
    """A 200 answer framed by Content-Length; `head` adds header lines (each ending in CRLF)."""
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def answering(answer: bytes, *, piece: int = 1 << 16) -> Script:
    async def script(peer: Peer) -> None:
        while await peer.request():
            await peer.send(answer, piece)

    return script


def soon(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def get(http: NodeHTTP, url: str) -> tuple[int, bytes]:
    """GET `url` and read the whole body."""
    body = b""
    async with await http.request("GET", url, until=soon()) as response:
        while chunk := await response.read(soon()):
            body += chunk
    return response.status, body


# --- Keep-alive -----------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(serve: Serve, http: NodeHTTP) -> None:
    node = await serve(answering(reply(b"hello")))
    assert await get(http, node.url) == (200, b"hello")
    assert await get(http, node.url) == (200, b"hello")
    assert node.connections == 1


async def test_a_connection_the_node_closed_while_idle_is_not_reused(
    serve: Serve, http: NodeHTTP
) -> None:
    async def answer_once(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply())

    node = await serve(answer_once)
    assert await get(http, node.url) == (200, b"ok")
    await node.all_closed()
    await asyncio.sleep(0.05)  # time for the client to see the end of the connection
    assert await get(http, node.url) == (200, b"ok")
    assert node.connections == 2


async def test_a_request_the_node_dropped_unanswered_is_sent_again_on_a_new_connection(
    serve: Serve, http: NodeHTTP
) -> None:
    async def answer_once_then_drop(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply())
        await peer.request()  # the node had timed the idle connection out: no answer

    node = await serve(answer_once_then_drop)
    assert await get(http, node.url) == (200, b"ok")
    assert await get(http, node.url) == (200, b"ok")
    assert node.connections == 2
    assert len(node.requests) == 3


async def test_a_request_the_node_began_to_answer_is_not_sent_again(
    serve: Serve, http: NodeHTTP
) -> None:
    async def answer_then_break_off(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply())
        await peer.request()
        await peer.send(b"HTTP/1.1 2")

    node = await serve(answer_then_break_off)
    await get(http, node.url)
    with pytest.raises(UpstreamError, match="broke off"):
        await get(http, node.url)
    assert len(node.requests) == 2


async def test_an_answer_with_connection_close_is_not_pooled(serve: Serve, http: NodeHTTP) -> None:
    node = await serve(answering(reply(head="Connection: close\r\n")))  # yet keeps it open
    assert await get(http, node.url) == (200, b"ok")
    assert await get(http, node.url) == (200, b"ok")
    assert node.connections == 2
    assert await node.all_closed()


async def test_aclose_closes_idle_connections(serve: Serve, http: NodeHTTP) -> None:
    node = await serve(answering(reply()))
    await get(http, node.url)
    await http.aclose()
    assert await node.all_closed()


# --- Framing --------------------------------------------------------------------------------


async def test_a_body_framed_by_the_connection_close_is_read_to_the_end(
    serve: Serve, http: NodeHTTP
) -> None:
    body = bytes(range(256)) * 1200

    async def send_until_close(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body, 10_000)

    node = await serve(send_until_close)
    assert await get(http, node.url) == (200, body)
    assert await get(http, node.url) == (200, body)
    assert node.connections == 2


async def test_a_body_framed_by_the_connection_close_that_ends_in_a_reset_is_an_error(
    serve: Serve, http: NodeHTTP
) -> None:
    async def reset_mid_body(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\nthe start")
        await asyncio.sleep(0.05)
        peer.reset()

    node = await serve(reset_mid_body)
    with pytest.raises(UpstreamError, match="broke off"):
        await get(http, node.url)


@pytest.mark.parametrize(
    "after",
    [b"junk", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"],
    ids=["junk", "a second answer"],
)
async def test_bytes_after_the_answer_are_not_part_of_it(
    serve: Serve, http: NodeHTTP, after: bytes
) -> None:
    node = await serve(answering(reply(b"ok") + after))  # in one piece, with the answer
    assert await get(http, node.url) == (200, b"ok")
    assert await get(http, node.url) == (200, b"ok")
    assert node.connections == 2  # the first one was spoiled


async def test_a_chunked_body_is_read_whole_and_its_connection_reused(
    serve: Serve, http: NodeHTTP
) -> None:
    chunks = b"5\r\nHello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    node = await serve(answering(answer, piece=3))
    assert await get(http, node.url) == (200, b"Hello, world")
    assert await get(http, node.url) == (200, b"Hello, world")
    assert node.connections == 1


async def test_an_interim_answer_is_skipped(serve: Serve, http: NodeHTTP) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
    node = await serve(answering(early + reply(b"final")))
    async with await http.request("GET", node.url, until=soon()) as response:
        assert response.status == 200
        assert "link" not in response.headers
        assert await response.read(soon()) == b"final"


async def test_headers_over_64_kib_are_refused(serve: Serve, http: NodeHTTP) -> None:
    padding = "".join(f"X-Pad-{i}: {'p' * 1000}\r\n" for i in range(70))
    node = await serve(answering(reply(head=padding)))
    with pytest.raises(UpstreamError, match="headers are too large"):
        await get(http, node.url)


async def test_a_line_break_in_a_header_value_is_refused_before_anything_is_sent(
    serve: Serve, http: NodeHTTP
) -> None:
    node = await serve(answering(reply()))
    with pytest.raises(UpstreamError, match="line break"):
        await http.request("GET", node.url, headers={"X-Token": "a\r\nX-Evil: 1"}, until=soon())
    assert node.connections == 0


# --- Deadlines and early closes ------------------------------------------------------------


async def test_a_deadline_already_passed_times_out_at_once(serve: Serve, http: NodeHTTP) -> None:
    node = await serve(answering(reply()))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await http.request("GET", node.url, until=started - 1)
    assert loop.time() - started < SLACK
    assert await node.all_closed()


async def test_a_silent_node_times_out_and_its_connection_is_closed(
    serve: Serve, http: NodeHTTP
) -> None:
    async def never_answer(peer: Peer) -> None:
        await peer.request()
        await peer.until_closed()

    node = await serve(never_answer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await http.request("GET", node.url, until=started + 0.2)
    assert 0.2 <= loop.time() - started < 0.2 + SLACK
    assert await node.all_closed(within=0.5)


async def test_closing_a_response_before_its_end_closes_the_connection(
    serve: Serve, http: NodeHTTP
) -> None:
    async def start_a_long_body(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst")
        await peer.until_closed()

    node = await serve(start_a_long_body)
    response = await http.request("GET", node.url, until=soon())
    assert await response.read(soon()) == b"first"
    await response.aclose()
    assert await node.all_closed(within=0.5)


async def test_a_slow_reader_holds_at_most_the_read_buffer(serve: Serve, http: NodeHTTP) -> None:
    size = 8 << 20

    async def send_a_large_body(peer: Peer) -> None:
        await peer.request()
        await peer.send(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        await peer.send(b"x" * size, piece=1 << 20)

    node = await serve(send_a_large_body)
    reads: list[int] = []
    async with await http.request("GET", node.url, until=soon()) as response:
        while chunk := await response.read(soon()):
            reads.append(len(chunk))
            await asyncio.sleep(0.01)
    assert sum(reads) == size
    assert max(reads) <= READ_BUFFER_BYTES + ONE_READ
