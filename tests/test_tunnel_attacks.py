"""The tunnel against a peer that lies: what a hostile agent or platform can and cannot make it do.

The platform's side is a `Tunnel` fed by the test as the WebSocket route would feed it;
the agent's side is the real TunnelClient against test_agent_tunnel.py's scripted platform;
the validation is `protocol.py`'s, shared by both ends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from test_agent_tunnel import FakePlatform, agent, collect, greet, send_open

# The scripted platform and the simulator, as fixtures of this module too.
from test_agent_tunnel import platform as platform
from test_agent_tunnel import simulator as simulator

from infer.errors import UpstreamError
from infer.tunnel import protocol
from infer.tunnel.protocol import Head, Open, ProtocolError, Signal
from infer.tunnel.session import Tunnel


class StalledPeer:
    """An agent that takes the first message and then never reads again."""

    def __init__(self) -> None:
        self.took_one = asyncio.Event()

    async def send(self, message: str | bytes) -> None:
        self.took_one.set()
        await asyncio.Event().wait()


@pytest.fixture
async def stalled() -> AsyncIterator[Tunnel]:
    peer = StalledPeer()
    # A write may wait a minute: the agent "reads", just too slowly to keep up.
    tunnel = Tunnel(uuid.uuid4(), peer.send, max_streams=4, send_timeout=60)
    writer = asyncio.create_task(tunnel.write_forever())
    yield tunnel
    tunnel.close(1000, "test over")
    writer.cancel()


@pytest.mark.parametrize("path", ["/api/chat\n", "/api/tags\n"])
def test_a_path_with_a_trailing_line_break_is_not_allowed(path: str) -> None:
    assert not protocol.path_allowed(path)


def test_a_header_value_with_a_trailing_line_break_breaks_the_protocol() -> None:
    head = '{"t":"head","id":1,"status":200,"headers":{"content-type":"text/plain\\n"}}'
    with pytest.raises(ProtocolError, match="characters HTTP cannot carry"):
        protocol.decode(head)
    opening = (
        '{"t":"open","id":1,"method":"POST","path":"/api/chat",'
        '"headers":{"content-type":"application/json\\n"},"length":0}'
    )
    with pytest.raises(ProtocolError, match="characters HTTP cannot carry"):
        protocol.decode(opening)
    assert protocol.kept_headers({"Accept": "text/plain\n"}, protocol.REQUEST_HEADERS) == {}


async def test_bodies_of_cancelled_streams_cannot_pile_up_for_an_agent_that_does_not_read(
    stalled: Tunnel,
) -> None:
    body = b"{" + b" " * ((1 << 20) - 2) + b"}"  # 1 MiB, as a buyer's chat request may be
    loop = asyncio.get_running_loop()
    refusals: list[str] = []
    for _ in range(protocol.MAX_BODY // len(body) + 8):
        try:
            await stalled.request(
                "POST",
                "/api/chat",
                headers={},
                body=body,
                until=loop.time() + 0.01,  # the buyer's deadline passes: the stream is cancelled
                url="u",
            )
        except TimeoutError:
            continue
        except UpstreamError as exc:
            refusals.append(exc.message)
    # Later requests fail over to other nodes instead of queueing.
    assert refusals
    assert all("backed up" in reason for reason in refusals)
    assert stalled.queued_bytes <= protocol.MAX_BODY + (64 << 10)
    assert stalled.open_streams == 0


async def test_a_request_is_refused_at_once_while_the_tunnel_is_backed_up(stalled: Tunnel) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await stalled.request(
            "POST",
            "/api/chat",
            headers={},
            body=b"x" * protocol.MAX_BODY,
            until=loop.time() + 0.01,
            url="u",
        )
    with pytest.raises(UpstreamError, match="backed up"):
        await stalled.request("GET", "/api/tags", headers={}, body=b"", until=None, url="u")


async def test_only_the_answer_headers_the_protocol_carries_reach_the_platform() -> None:
    sent: asyncio.Queue[str | bytes] = asyncio.Queue()

    async def send(message: str | bytes) -> None:
        await sent.put(message)

    tunnel = Tunnel(uuid.uuid4(), send)
    writer = asyncio.create_task(tunnel.write_forever())
    try:
        task = asyncio.create_task(
            tunnel.request("GET", "/api/tags", headers={}, body=b"", until=None, url="u")
        )
        opening = protocol.decode(str(await asyncio.wait_for(sent.get(), 5)))
        assert isinstance(opening, Open)
        lying = {
            "content-type": "application/json",
            "content-encoding": "gzip",
            "content-length": "999999999",
            "set-cookie": "session=stolen",
        }
        tunnel.receive_text(protocol.encode(Head(opening.id, 200, lying)))
        answer = await asyncio.wait_for(task, 5)
        assert dict(answer.headers) == {"content-type": "application/json"}
    finally:
        tunnel.close(1000, "test over")
        writer.cancel()


async def test_a_platform_cannot_make_the_agent_await_more_body_than_one_request_may_carry(
    platform: FakePlatform, simulator: str
) -> None:
    half = protocol.MAX_BODY // 2
    async with agent(platform, simulator):
        ws = await platform.next()
        await greet(ws)
        for stream in (1, 3, 5):  # declared, never sent: the agent would hold them all
            await send_open(ws, stream, "/api/chat", length=half)
        refused = (await collect(ws, {5}))[5]
        assert refused.last is not None
        assert refused.last.kind == "error"
        assert "awaited" in refused.last.message
        await ws.send(protocol.chunk(1, b"x" * protocol.MAX_CHUNK))  # the first is still open
        await send_open(ws, 7, "/api/tags", method="GET")
        assert (await collect(ws, {7}))[7].last == Signal("end", 7)
