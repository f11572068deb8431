"""The agent's tunnel client against a fake (possibly hostile) platform and real runtimes.

The platform is a `websockets` server on loopback that this test scripts frame by frame;
the runtime is the simulator, or a raw HTTP server on loopback when the test needs to
see what reached it (headers, a disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from infer.agent.detect import DetectedRuntime, Detection, Host
from infer.agent.gpu import GpuInfo
from infer.agent.loop import Agent
from infer.agent.platform import RegisteredNode
from infer.agent.register import Registration, RegistrationOptions, build_registration
from infer.agent.tunnel import Backoff, TunnelClient, TunnelState, tunnel_url
from infer.cli.main import main
from infer.simulator import SimulatorConfig, serve_simulator_in_thread
from infer.tunnel import protocol
from infer.tunnel.protocol import Credit, Head, Hello, Open, Signal

NODE = "node-1"
NODE_KEY = "inf_node-key"
CHAT = json.dumps(
    {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()
FAST = Backoff(first=0.05, cap=0.2, reset_after=60.0)


class FakePlatform:
    """Accepts tunnels and hands each connection to the test."""

    def __init__(self) -> None:
        self.arrivals: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.count = 0
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        self.count += 1
        await self.arrivals.put(ws)
        await ws.wait_closed()

    async def next(self) -> ServerConnection:
        return await asyncio.wait_for(self.arrivals.get(), 10)


@pytest.fixture
async def platform() -> AsyncIterator[FakePlatform]:
    fake = FakePlatform()
    async with serve(
        fake.handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol(protocol.SUBPROTOCOL)],
        max_size=protocol.MAX_MESSAGE,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        fake.url = f"http://127.0.0.1:{port}"
        yield fake


@pytest.fixture(scope="module")
def simulator() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(length_range=(3000, 3000))) as url:
        yield url


@contextlib.asynccontextmanager
async def agent(
    platform: FakePlatform, runtime: str, **options: object
) -> AsyncIterator[TunnelClient]:
    client = TunnelClient(
        platform=platform.url,
        node_id=NODE,
        node_key=NODE_KEY,
        runtime_url=runtime,
        backoff=options.pop("backoff", FAST),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    client.start()
    try:
        yield client
    finally:
        # stop() joins the thread, whose close handshake needs this loop: off the loop.
        await asyncio.to_thread(client.stop)


async def greet(
    ws: ServerConnection,
    *,
    window: int = protocol.WINDOW,
    max_streams: int = protocol.MAX_STREAMS,
    max_body: int = protocol.MAX_BODY,
) -> None:
    await ws.send(protocol.encode(Hello(1, NODE, window, max_streams, max_body)))


async def send_open(
    ws: ServerConnection,
    stream: int,
    path: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    length: int | None = None,
) -> None:
    size = len(body) if length is None else length
    fields = headers if headers is not None else {"content-type": "application/json"}
    await ws.send(protocol.encode(Open(stream, method, path, fields, size)))
    for piece in protocol.pieces(body):
        await ws.send(protocol.chunk(stream, piece))


@dataclass
class Outcome:
    head: Head | None = None
    body: bytearray = field(default_factory=bytearray)
    chunks: list[int] = field(default_factory=list)
    last: Signal | None = None


async def collect(
    ws: ServerConnection, streams: set[int], *, credit: bool = True
) -> dict[int, Outcome]:
    """Every frame until each of `streams` has ended or failed; credits what it reads."""
    seen: dict[int, Outcome] = {}
    while any(seen.get(s, Outcome()).last is None for s in streams):
        message = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(message, bytes):
            stream, payload = protocol.unchunk(message)
            outcome = seen.setdefault(stream, Outcome())
            outcome.body += payload
            outcome.chunks.append(len(payload))
            if credit:
                await ws.send(protocol.encode(Credit(stream, len(payload))))
            continue
        frame = protocol.decode(message)
        assert isinstance(frame, Head | Signal)
        outcome = seen.setdefault(frame.id, Outcome())
        if isinstance(frame, Head):
            outcome.head = frame
        else:
            outcome.last = frame
    return seen


async def eventually(check: Callable[[], bool], deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


def ndjson(body: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in body.decode().splitlines() if line]


@contextlib.asynccontextmanager
async def raw_runtime() -> AsyncIterator[RawRuntime]:
    runtime = RawRuntime()
    server = await asyncio.start_server(runtime.handle, "127.0.0.1", 0)
    runtime.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield runtime
        server.close()


class RawRuntime:
    """A loopback HTTP server streaming chunks forever; it records requests and hang-ups."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[bytes] = []
        self.connected = asyncio.Event()
        self.hung_up = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        self.connected.set()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"x-runtime-secret: internal\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        try:
            while True:
                line = b'{"message":{"content":"tick"}}\n'
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
                # The client's hang-up shows as EOF (or a reset) on the reading side.
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), 0.02) == b"":
                        break
        except (ConnectionError, OSError):
            pass
        self.hung_up.set()
        writer.close()


def test_tunnel_url_follows_the_platform_scheme() -> None:
    assert tunnel_url("https://infer.example.com/", "n 1") == (
        "wss://infer.example.com/api/v1/nodes/n%201/tunnel"
    )
    assert tunnel_url("http://127.0.0.1:8000/graphql", "n1") == (
        "ws://127.0.0.1:8000/api/v1/nodes/n1/tunnel"
    )


def test_backoff_doubles_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(first=1.0, cap=60.0)
    assert [backoff.delay(n, lambda: 1.0) for n in (1, 2, 3, 7, 20)] == [1, 2, 4, 60, 60]
    assert backoff.delay(5, lambda: 0.25) == 4.0


async def test_streamed_chat_arrives_whole_and_chunked(
    platform: FakePlatform, simulator: str
) -> None:
    async with agent(platform, simulator) as client:
        ws = await platform.next()
        assert ws.request is not None
        assert ws.request.path == f"/api/v1/nodes/{NODE}/tunnel"
        assert ws.request.headers["authorization"] == f"Bearer {NODE_KEY}"
        assert ws.subprotocol == protocol.SUBPROTOCOL
        await greet(ws)
        await send_open(ws, 1, "/api/chat", CHAT)
        outcome = (await collect(ws, {1}))[1]
        assert outcome.head is not None
        assert outcome.head.status == 200
        assert outcome.head.headers == {"content-type": "application/x-ndjson"}
        assert outcome.last == Signal("end", 1)
        assert len(outcome.chunks) > 1
        assert max(outcome.chunks) <= protocol.MAX_CHUNK
        lines = ndjson(bytes(outcome.body))
        assert lines[-1]["done"] is True
        assert len(lines) > 1000
        await eventually(lambda: client.state.served == 1)
        assert client.state.state == "connected"


async def test_agent_stops_at_the_window_until_credited(
    platform: FakePlatform, simulator: str
) -> None:
    window = protocol.MAX_CHUNK
    async with agent(platform, simulator):
        ws = await platform.next()
        await greet(ws, window=window)
        await send_open(ws, 1, "/api/chat", CHAT)
        body = bytearray()
        while len(body) < window:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, bytes):
                body += protocol.unchunk(message)[1]
        assert len(body) == window
        # Uncredited, the agent must send nothing more (an absence: a short, bounded wait).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        await ws.send(protocol.encode(Credit(1, 1000)))
        message = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(message, bytes)
        body += protocol.unchunk(message)[1]
        assert len(body) == window + 1000
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        await ws.send(protocol.encode(Credit(1, 1 << 30)))
        rest = (await collect(ws, {1}))[1]
        assert rest.last == Signal("end", 1)
        assert ndjson(bytes(body + rest.body))[-1]["done"] is True


async def test_cancel_hangs_up_on_the_runtime_and_others_carry_on(
    platform: FakePlatform, simulator: str
) -> None:
    async with raw_runtime() as runtime, agent(platform, runtime.url, runtime_token="rt-1"):
        ws = await platform.next()
        await greet(ws)
        await send_open(
            ws,
            1,
            "/api/chat",
            CHAT,
            headers={
                "content-type": "application/json",
                "authorization": "Bearer stolen",
                "host": "evil.example",
            },
        )
        await asyncio.wait_for(runtime.connected.wait(), 10)
        first = await asyncio.wait_for(ws.recv(), 10)
        head = protocol.decode(first) if isinstance(first, str) else None
        assert head == Head(1, 200, {"content-type": "application/x-ndjson"})
        await ws.send(protocol.encode(Signal("cancel", 1)))
        # Read what was in flight, as a platform does: an unread queue would stall the close.
        draining = asyncio.create_task(drain(ws))
        await asyncio.wait_for(runtime.hung_up.wait(), 10)
        request = runtime.requests[0].decode().lower()
        assert "authorization: bearer rt-1" in request
        assert "stolen" not in request
        assert "evil" not in request
        assert request.startswith("post /api/chat http/1.1")
    await draining


async def drain(ws: ServerConnection) -> None:
    async for _ in ws:
        pass


async def test_hostile_opens_are_refused_and_reach_nothing(
    platform: FakePlatform, simulator: str
) -> None:
    async with raw_runtime() as other, agent(platform, simulator):
        host = other.url.removeprefix("http://")
        ws = await platform.next()
        await greet(ws)
        hostile = [
            f"http://{host}/api/tags",
            f"//{host}/x",
            "/../x",
            "/api/tags?x",
            f"@{host}",
            "/api/./tags",
            "/api/%2e%2e/x",
        ]
        for number, path in enumerate(hostile):
            await send_open(ws, 2 * number + 1, path, method="GET", headers={})
        deleting = 2 * len(hostile) + 1
        await send_open(ws, deleting, "/api/tags", method="DELETE", headers={})
        ids = {2 * n + 1 for n in range(len(hostile))} | {deleting}
        seen = await collect(ws, ids)
        for stream in ids:
            assert seen[stream].head is None
            assert seen[stream].last is not None
            assert seen[stream].last.kind == "error"
        assert "path refused" in str(seen[1].last)
        assert "DELETE" in str(seen[deleting].last)
        # The tunnel still serves, and the other server never heard from the agent.
        await send_open(ws, 101, "/api/tags", method="GET", headers={})
        assert (await collect(ws, {101}))[101].last == Signal("end", 101)
        assert other.requests == []


async def test_opens_beyond_max_streams_are_refused_and_the_first_served(
    platform: FakePlatform, simulator: str
) -> None:
    async with agent(platform, simulator):
        ws = await platform.next()
        await greet(ws, max_streams=2)
        # Streams 1 and 3 stay open: their bodies come only after the flood.
        await send_open(ws, 1, "/api/chat", length=len(CHAT))
        await send_open(ws, 3, "/api/chat", length=len(CHAT))
        flood = set(range(5, 45, 2))
        for stream in sorted(flood):
            await send_open(ws, stream, "/api/chat", CHAT)
        refused = await collect(ws, flood)
        assert {refused[s].last for s in flood} == {
            Signal("error", s, "too many streams") for s in flood
        }
        for stream in (1, 3):
            await ws.send(protocol.chunk(stream, CHAT))
        served = await collect(ws, {1, 3})
        assert served[1].last == Signal("end", 1)
        assert served[3].last == Signal("end", 3)


async def test_a_platform_cannot_raise_the_agents_own_stream_limit(
    platform: FakePlatform, simulator: str
) -> None:
    async with agent(platform, simulator):
        ws = await platform.next()
        await greet(ws, max_streams=1 << 16)
        # Bodies never come: every stream stays open, and the agent's own limit holds.
        opened = [2 * n + 1 for n in range(protocol.MAX_STREAMS + 8)]
        for stream in opened:
            await send_open(ws, stream, "/api/chat", length=len(CHAT))
        beyond = set(opened[protocol.MAX_STREAMS :])
        refused = await collect(ws, beyond)
        assert {refused[s].last for s in beyond} == {
            Signal("error", s, "too many streams") for s in beyond
        }


async def test_a_reused_stream_id_is_refused_and_body_for_it_ignored(
    platform: FakePlatform, simulator: str
) -> None:
    async with agent(platform, simulator):
        ws = await platform.next()
        await greet(ws)
        await send_open(ws, 1, "/api/chat", length=len(CHAT))
        await send_open(ws, 1, "/api/chat", length=len(CHAT))
        refused = (await collect(ws, {1}))[1]
        assert refused.last is not None
        assert refused.last.kind == "error"
        assert "reused" in refused.last.message
        await ws.send(protocol.chunk(1, CHAT))  # for a stream the agent forgot: ignored
        await send_open(ws, 3, "/api/chat", CHAT)
        assert (await collect(ws, {3}))[3].last == Signal("end", 3)


async def test_a_body_over_max_body_is_refused(platform: FakePlatform, simulator: str) -> None:
    async with agent(platform, simulator):
        ws = await platform.next()
        await greet(ws, max_body=16)
        await send_open(ws, 1, "/api/chat", CHAT)
        refused = (await collect(ws, {1}))[1]
        assert refused.last is not None
        assert refused.last.kind == "error"
        assert "body" in refused.last.message


@pytest.mark.parametrize(
    "malformed", ["not json", '{"t":"open","id":0}', b"\x00\x01", '{"t":"head","id":1}']
)
async def test_a_malformed_message_closes_the_tunnel_with_1002(
    platform: FakePlatform, simulator: str, malformed: str | bytes
) -> None:
    async with agent(platform, simulator) as client:
        ws = await platform.next()
        await greet(ws)
        await ws.send(malformed)
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == protocol.CLOSE_PROTOCOL
        # A broken platform is not a refusal: the agent comes back.
        again = await platform.next()
        await greet(again)
        await eventually(lambda: client.state.state == "connected")


async def test_the_agent_reconnects_after_the_platform_drops_it(
    platform: FakePlatform, simulator: str
) -> None:
    async with agent(platform, simulator) as client:
        ws = await platform.next()
        await greet(ws)
        await eventually(lambda: client.state.state == "connected")
        await ws.close(protocol.CLOSE_GOING_AWAY, "restarting")
        again = await platform.next()
        assert client.state.state == "connecting"
        await greet(again)
        await eventually(lambda: client.state.state == "connected")
        await send_open(again, 1, "/api/tags", method="GET", headers={})
        assert (await collect(again, {1}))[1].last == Signal("end", 1)


async def test_a_4401_close_stops_the_agent_for_good(
    platform: FakePlatform, simulator: str
) -> None:
    async with agent(platform, simulator) as client:
        ws = await platform.next()
        await ws.close(protocol.CLOSE_UNAUTHORIZED, "key revoked")
        assert client._thread is not None
        await asyncio.to_thread(client._thread.join, 10)
        state = client.state
        assert state.state == "refused"
        assert state.reason is not None
        assert "key revoked" in state.reason
        assert platform.count == 1


async def test_a_platform_that_never_answers_is_retried_with_backoff(simulator: str) -> None:
    client = TunnelClient(
        platform="http://127.0.0.1:9",  # discard: nothing listens
        node_id=NODE,
        node_key=NODE_KEY,
        runtime_url=simulator,
        backoff=FAST,
    )
    client.start()
    try:
        await eventually(lambda: client.state.attempt >= 3)
        assert client.state.state == "connecting"
        assert client.state.reason is not None
    finally:
        await asyncio.to_thread(client.stop)
    assert client.state.state == "stopped"


def test_state_describes_itself_in_one_line() -> None:
    connected = TunnelState("connected", streams=2, served=7)
    assert connected.describe() == "tunnel connected"
    assert connected.describe(counts=True) == "tunnel connected (2 open, 7 served)"
    waiting = TunnelState("connecting", 3, 4.2, "closed with 1001")
    assert waiting.describe() == "tunnel connecting (attempt 3): closed with 1001"
    assert "attempt 3, next try in 4 s" in waiting.describe(counts=True)
    assert TunnelState("refused", reason="key revoked").describe() == "tunnel refused: key revoked"


@pytest.mark.parametrize("command", ["agent", "join", "register"])
def test_tunnel_with_an_endpoint_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["node", command, "--platform", "http://127.0.0.1:9", "--tunnel"]
    args += ["--endpoint", "https://node.example.com", "--config", str(tmp_path / "node.json")]
    args += ["--code", "ABCD"] if command == "join" else ["--api-key", "inf_key"]
    assert main(args) == 1
    assert "--tunnel and --endpoint exclude each other" in capsys.readouterr().err


def test_a_tunnel_registration_sends_no_endpoint(simulator: str) -> None:
    detection = Detection(
        runtimes=(DetectedRuntime("ollama", simulator, "0.5", ("llama3.2:1b",)),),
        gpu=GpuInfo(vendor="cpu", memory_bytes=1 << 34, cpu_count=8),
        host=Host("box", "linux", "x86_64", 8, 1 << 34),
    )
    tunnelled = build_registration(detection, RegistrationOptions(tunnel=True))
    node = tunnelled.variables()["input"]
    assert node["tunnel"] is True
    assert "endpoint" not in node
    assert tunnelled.endpoint == simulator  # kept on the box: what the tunnel calls
    direct = build_registration(detection, RegistrationOptions()).variables()["input"]
    assert direct["endpoint"] == simulator
    assert "tunnel" not in direct


async def test_the_agent_opens_the_tunnel_once_registered_and_closes_it(
    platform: FakePlatform, simulator: str
) -> None:
    registration_detection = Detection(
        runtimes=(DetectedRuntime("ollama", simulator, "0.5", ("llama3.2:1b",)),),
        gpu=GpuInfo(vendor="cpu", memory_bytes=1 << 34, cpu_count=8),
        host=Host("box", "linux", "x86_64", 8, 1 << 34),
    )
    opened: list[tuple[str, str]] = []

    def open_tunnel(node_id: str, runtime_url: str) -> TunnelClient:
        opened.append((node_id, runtime_url))
        return TunnelClient(
            platform=platform.url, node_id=node_id, node_key=NODE_KEY, runtime_url=runtime_url
        )

    class Registrar:
        def register_node(self, registration: Registration) -> RegisteredNode:
            assert registration.variables()["input"]["tunnel"] is True
            return RegisteredNode(id=NODE, status="online", status_reason=None)

        def confirm_node(self, node_id: str) -> None:
            pass

    looped = Agent(
        detect=lambda: registration_detection,
        platform=Registrar(),
        options=RegistrationOptions(tunnel=True),
        open_tunnel=open_tunnel,
    )
    first = await asyncio.to_thread(looped.step)
    assert first.state == "online"
    assert first.detail.endswith("· tunnel connecting (attempt 1)")
    ws = await platform.next()
    await greet(ws)
    assert looped.tunnel is not None
    await eventually(lambda: looped.tunnel is not None and "connected" in looped.tunnel.describe())
    second = await asyncio.to_thread(looped.step)
    assert second.detail.endswith("· tunnel connected")
    assert opened == [(NODE, simulator)]  # one tunnel across rounds
    await asyncio.to_thread(looped.close)
    await asyncio.wait_for(ws.wait_closed(), 10)
    assert looped.tunnel is None


@contextlib.asynccontextmanager
async def scripted_runtime(answer: bytes, *, then_hang: bool = False) -> AsyncIterator[str]:
    """A loopback runtime that sends `answer` raw, then closes (or hangs while the test runs)."""
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if then_hang:
            await done.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        done.set()
        server.close()


def free_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


BROKEN = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncontent-length: 1000\r\n\r\n"
    b'{"message":'
)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unreachable", "the runtime could not be reached"),
        ("broken", "the runtime's answer broke off"),
        ("silent", "the runtime did not answer in time"),
    ],
)
async def test_a_runtime_failure_is_one_line_on_its_stream(
    platform: FakePlatform, case: str, message: str
) -> None:
    from infer.agent.tunnel import RuntimeDeadlines

    quick = RuntimeDeadlines(connect=2.0, answer=0.5)
    async with contextlib.AsyncExitStack() as stack:
        if case == "unreachable":
            runtime = free_url()
        else:
            runtime = await stack.enter_async_context(
                scripted_runtime(BROKEN if case == "broken" else b"", then_hang=case == "silent")
            )
        await stack.enter_async_context(agent(platform, runtime, runtime_deadlines=quick))
        ws = await platform.next()
        await greet(ws)
        await send_open(ws, 1, "/api/chat", CHAT)
        outcome = (await collect(ws, {1}))[1]
    assert outcome.last == Signal("error", 1, message)
    assert (outcome.head is not None) == (case == "broken")


def test_the_status_line_leaves_the_tunnels_state_to_the_tunnel() -> None:
    from infer.agent.gpu import GpuInfo
    from infer.agent.loop import describe
    from infer.agent.platform import RegisteredNode
    from infer.agent.register import Registration

    registration = Registration(
        name="box",
        runtime="ollama",
        endpoint="http://127.0.0.1:11434",
        models=("llama3.2:1b",),
        prices=(),
        gpu=GpuInfo(vendor="cpu", memory_bytes=1 << 34, cpu_count=8),
        tunnel=True,
    )
    stale = RegisteredNode("n", "offline", "the node's tunnel is not connected")
    broken = RegisteredNode("n", "offline", "cannot connect to the node")
    assert describe(registration, stale) == "llama3.2:1b"
    assert describe(registration, broken) == "llama3.2:1b  (offline: cannot connect to the node)"
