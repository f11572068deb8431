"""One tunnel's streams on the platform's side: windows, resets, cancels, a peer that stops reading.

The agent here is the test: it reads what the tunnel sends (through its `send`) and feeds
it answers with `receive_text` / `receive_bytes`, as the WebSocket route does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from infer.errors import UpstreamError
from infer.tunnel import protocol
from infer.tunnel.protocol import Credit, Head, Open, Signal
from infer.tunnel.session import Tunnel, TunnelResponse


class Peer:
    """What the agent received, in order."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.stalled = False

    async def send(self, message: str | bytes) -> None:
        if self.stalled:
            await asyncio.Event().wait()  # a peer that never reads: the write never ends
        await self.sent.put(message)

    async def next(self) -> protocol.Message | tuple[int, bytes]:
        message = await asyncio.wait_for(self.sent.get(), 5)
        return protocol.unchunk(message) if isinstance(message, bytes) else protocol.decode(message)


@pytest.fixture
async def tunnel() -> AsyncIterator[tuple[Tunnel, Peer]]:
    peer = Peer()
    tunnel = Tunnel(uuid.uuid4(), peer.send, window=128 << 10, max_streams=4, send_timeout=0.5)
    writer = asyncio.create_task(tunnel.write_forever())
    yield tunnel, peer
    tunnel.close(1000, "test over")
    writer.cancel()


async def opened(
    tunnel: Tunnel, peer: Peer, body: bytes = b""
) -> tuple[asyncio.Task[TunnelResponse], Open]:
    task = asyncio.create_task(
        tunnel.request(
            "POST",
            "/api/chat",
            headers={"content-type": "application/json", "x-secret": "s"},
            body=body,
            until=None,
            url="tunnel://x/api/chat",
        )
    )
    message = await peer.next()
    assert isinstance(message, Open)
    return task, message


async def test_a_request_goes_out_as_an_open_and_its_body_in_chunks(
    tunnel: tuple[Tunnel, Peer],
) -> None:
    channel, peer = tunnel
    body = bytes(range(256)) * 1024  # 256 KiB: four chunks
    task, opening = await opened(channel, peer, body)
    assert (opening.method, opening.path, opening.length) == ("POST", "/api/chat", len(body))
    assert opening.headers == {"content-type": "application/json"}  # nothing else crosses
    received = b""
    while len(received) < len(body):
        stream, payload = await peer.next()  # type: ignore[misc]
        assert stream == opening.id
        assert len(payload) <= protocol.MAX_CHUNK
        received += payload
    assert received == body
    task.cancel()


async def test_an_answer_streams_back_and_the_reader_gives_credit(
    tunnel: tuple[Tunnel, Peer],
) -> None:
    channel, peer = tunnel
    task, opening = await opened(channel, peer)
    channel.receive_text(
        protocol.encode(Head(opening.id, 200, {"content-type": "application/x-ndjson"}))
    )
    answer = await task
    assert (answer.status, answer.headers["content-type"]) == (200, "application/x-ndjson")
    chunk = b"x" * (32 << 10)  # a quarter window
    channel.receive_bytes(protocol.chunk(opening.id, chunk))
    assert await answer.read() == chunk
    assert await peer.next() == Credit(opening.id, len(chunk))
    channel.receive_text(protocol.encode(Signal("end", opening.id)))
    assert await answer.read() == b""
    assert channel.open_streams == 0


async def test_an_agent_that_overruns_the_window_loses_that_stream_only(
    tunnel: tuple[Tunnel, Peer],
) -> None:
    channel, peer = tunnel
    first, one = await opened(channel, peer)
    second, two = await opened(channel, peer)
    for stream in (one, two):
        channel.receive_text(protocol.encode(Head(stream.id, 200, {})))
    greedy, calm = await first, await second
    for _ in range(3):  # 192 KiB unread against a 128 KiB window
        channel.receive_bytes(protocol.chunk(one.id, b"y" * protocol.MAX_CHUNK))
    assert await peer.next() == Signal("cancel", one.id)
    data = await greedy.read()
    assert len(data) == 2 * protocol.MAX_CHUNK  # what came within the window is delivered
    with pytest.raises(UpstreamError, match="window"):
        await greedy.read()
    channel.receive_bytes(protocol.chunk(two.id, b"fine"))
    assert await calm.read() == b"fine"


@pytest.mark.parametrize("wrong", ["second head", "body first", "end first"])
async def test_a_stream_out_of_order_is_reset_and_the_tunnel_lives(
    tunnel: tuple[Tunnel, Peer], wrong: str
) -> None:
    channel, peer = tunnel
    task, opening = await opened(channel, peer)
    if wrong == "second head":
        channel.receive_text(protocol.encode(Head(opening.id, 200, {})))
        answer = await task
        channel.receive_text(protocol.encode(Head(opening.id, 500, {})))
        with pytest.raises(UpstreamError, match="second answer head"):
            await answer.read()
    else:
        if wrong == "body first":
            channel.receive_bytes(protocol.chunk(opening.id, b"early"))
        else:
            channel.receive_text(protocol.encode(Signal("end", opening.id)))
        with pytest.raises(UpstreamError):
            await task
    assert await peer.next() == Signal("cancel", opening.id)
    assert not channel.closed.is_set()


async def test_a_reader_who_leaves_early_cancels_the_call_on_the_box(
    tunnel: tuple[Tunnel, Peer],
) -> None:
    channel, peer = tunnel
    task, opening = await opened(channel, peer)
    channel.receive_text(protocol.encode(Head(opening.id, 200, {})))
    async with await task as answer:
        channel.receive_bytes(protocol.chunk(opening.id, b"some"))
        assert await answer.read() == b"some"
    assert await peer.next() == Signal("cancel", opening.id)
    channel.receive_bytes(protocol.chunk(opening.id, b"late"))  # late chunks are dropped
    assert channel.open_streams == 0


async def test_a_deadline_before_the_head_cancels_the_stream(tunnel: tuple[Tunnel, Peer]) -> None:
    channel, peer = tunnel
    until = asyncio.get_running_loop().time() + 0.1
    task = asyncio.create_task(
        channel.request("GET", "/api/tags", headers={}, body=b"", until=until, url="u")
    )
    opening = await peer.next()
    assert isinstance(opening, Open)
    with pytest.raises(TimeoutError):
        await task
    assert await peer.next() == Signal("cancel", opening.id)


async def test_requests_beyond_the_stream_limit_fail_before_anything_is_sent(
    tunnel: tuple[Tunnel, Peer],
) -> None:
    channel, peer = tunnel
    tasks = [(await opened(channel, peer))[0] for _ in range(channel.max_streams)]
    with pytest.raises(UpstreamError, match="as many requests as it can"):
        await channel.request("GET", "/api/tags", headers={}, body=b"", until=None, url="u")
    assert peer.sent.empty()
    for task in tasks:
        task.cancel()


@pytest.mark.parametrize(
    "path", ["//evil/x", "/../etc", "/api/tags?x=1", "http://evil/", "/a/./b", "/@evil"]
)
async def test_the_platform_never_sends_a_path_that_could_leave_the_runtime(
    tunnel: tuple[Tunnel, Peer], path: str
) -> None:
    channel, peer = tunnel
    with pytest.raises(UpstreamError, match="cannot be sent through a tunnel"):
        await channel.request("GET", path, headers={}, body=b"", until=None, url="u")
    assert peer.sent.empty()


async def test_a_peer_that_stops_reading_ends_the_tunnel_and_fails_its_streams(
    tunnel: tuple[Tunnel, Peer],
) -> None:
    channel, peer = tunnel
    peer.stalled = True
    task = asyncio.create_task(
        channel.request("GET", "/api/tags", headers={}, body=b"", until=None, url="u")
    )
    await asyncio.wait_for(channel.closed.wait(), 5)
    assert channel.close_code == protocol.CLOSE_SLOW
    with pytest.raises(UpstreamError, match="stopped reading"):
        await task


async def test_a_message_only_the_platform_may_send_breaks_the_protocol(
    tunnel: tuple[Tunnel, Peer],
) -> None:
    channel, _ = tunnel
    with pytest.raises(protocol.ProtocolError):
        channel.receive_text(protocol.encode(Open(1, "GET", "/", {}, 0)))
    with pytest.raises(protocol.ProtocolError):
        channel.receive_bytes(b"\x00\x00\x00\x00body")  # stream 0
