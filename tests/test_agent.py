"""The operator agent against real servers on loopback: the simulator and a GraphQL platform."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from graphql import GraphQLError, build_schema, graphql_sync
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infer.agent.detect import Detection, Host, detect
from infer.agent.errors import PlatformError
from infer.agent.gpu import GpuInfo
from infer.agent.loop import Agent, Status, StatusLine
from infer.agent.platform import PlatformClient
from infer.agent.register import RegistrationOptions
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

KEY = "inf_test-key-of-the-operator"
MODELS = ("llama3.2:1b", "qwen2.5:7b")
CPU = GpuInfo(vendor="cpu", memory_bytes=1 << 34, cpu_count=8)
HOST = Host("box", "linux", "x86_64", 8, 1 << 34)

# The part of the platform's schema that the agent relies on (the contract in the brief).
SCHEMA = build_schema(
    """
    scalar JSON
    scalar Money
    enum Runtime { OLLAMA EXO OPENAI }
    enum NodeStatus { PENDING ONLINE DEGRADED OFFLINE DISABLED }
    input ModelPriceInput { model: String!, inputPerMillion: Money!, outputPerMillion: Money! }
    input RegisterNodeInput {
      name: String!, runtime: Runtime!, endpoint: String!, prices: [ModelPriceInput!],
      gpu: JSON, token: String
    }
    type Node { id: ID!, status: NodeStatus!, statusReason: String }
    type Query { node(id: ID!): Node }
    type Mutation { registerNode(input: RegisterNodeInput!): Node! }
    """
)


class Platform:
    """A GraphQL platform that upserts nodes by name, records every request, and can refuse."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.inputs: list[dict[str, Any]] = []
        self.nodes: dict[str, str] = {}
        self.refusals: list[tuple[str, str]] = []  # (code, message), used first-in first-out

    def registerNode(self, info: object, input: dict[str, Any]) -> dict[str, Any]:
        if self.refusals:
            code, message = self.refusals.pop(0)
            raise GraphQLError(message, extensions={"code": code})
        self.inputs.append(input)
        node_id = self.nodes.setdefault(input["name"], str(uuid.uuid4()))
        return {"id": node_id, "status": "PENDING", "statusReason": None}

    def node(self, info: object, id: str) -> dict[str, Any] | None:
        if self.refusals:
            code, message = self.refusals.pop(0)
            raise GraphQLError(message, extensions={"code": code})
        return {"id": id, "status": "ONLINE"} if id in self.nodes.values() else None

    async def graphql(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("authorization") != f"Bearer {KEY}":
            error = {"message": "invalid API key", "extensions": {"code": "UNAUTHENTICATED"}}
            return JSONResponse({"errors": [error]}, status_code=401)
        result = graphql_sync(
            SCHEMA, body["query"], root_value=self, variable_values=body.get("variables")
        )
        return JSONResponse(result.formatted)


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Serves an ASGI app on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def platform() -> Iterator[tuple[Platform, str]]:
    state = Platform()
    app = Starlette(routes=[Route("/graphql", state.graphql, methods=["POST"])])
    with serve(app) as url:
        yield state, url


@pytest.fixture(scope="module")
def ollama() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(models=MODELS)) as url:
        yield url


def infer(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infer.cli", *args],
        capture_output=True,
        text=True,
        env=environment(cwd),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def environment(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {k: v for k, v in env.items() if not k.startswith("INFER_")} | {
        "INFER_SECRETS_FILE": str(cwd / "secrets.json")
    }


def register(platform_url: str, ollama_url: str, *extra: str) -> list[str]:
    return [
        "node", "register", "--platform", platform_url, "--api-key", KEY,
        "--ollama-url", ollama_url, "--exo-url", unused_url(), *extra,
    ]  # fmt: skip


def test_detect_prints_the_runtime_and_its_models_as_json(ollama: str, tmp_path: Path) -> None:
    done = infer("node", "detect", "--ollama-url", ollama, "--exo-url", unused_url(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["runtimes"] == [
        {
            "runtime": "ollama",
            "server": "ollama",
            "endpoint": ollama,
            "version": "0.12.0",
            "models": list(MODELS),
            "context_length": dict.fromkeys(MODELS, 8192),
        }
    ]
    assert found["gpu"]["vendor"] in {"nvidia", "amd", "apple", "cpu"}
    assert set(found["host"]) == {"hostname", "os", "arch", "cpu_count", "memory_bytes"}
    assert done.stderr == ""


def test_detect_finds_exo_by_its_model_list_or_else_its_healthcheck() -> None:
    async def models(request: Request) -> Response:
        data = [{"id": "llama-3.2-1b", "object": "model", "owned_by": "exo", "ready": True}]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    exo = Starlette(routes=[Route("/v1/models", models), Route("/healthcheck", health)])
    old_exo = Starlette(routes=[Route("/healthcheck", health)])
    with serve(exo) as url, serve(old_exo) as old_url:
        found = detect(
            ollama_url=unused_url(), exo_url=url + "/", gpu=lambda: CPU, host=lambda: HOST
        )
        old = detect(ollama_url=unused_url(), exo_url=old_url, gpu=lambda: CPU, host=lambda: HOST)
    assert [(r.runtime, r.endpoint, r.models) for r in found.runtimes] == [
        ("exo", url, ("llama-3.2-1b",))
    ]
    assert [(r.runtime, r.models) for r in old.runtimes] == [("exo", ())]


def test_detect_with_nothing_running_finds_no_runtime() -> None:
    found = detect(
        ollama_url=unused_url(), exo_url=unused_url(), gpu=lambda: CPU, host=lambda: HOST
    )
    assert found.runtimes == ()
    assert found.to_json()["gpu"]["cpu_count"] == 8


def test_register_sends_the_key_endpoint_gpu_and_priced_models(
    platform: tuple[Platform, str], ollama: str, tmp_path: Path
) -> None:
    state, url = platform
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    args = register(url, ollama, "--endpoint", "https://node.example.com/")
    args[args.index("--api-key") : args.index("--api-key") + 2] = ["--api-key-file", str(key_file)]
    args += ["--price", "qwen2.5:7b=0.5/1.25", "--default-price", "0.10/0.20"]
    done = infer(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [sent] = state.inputs
    assert state.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert sent["name"].endswith("-ollama")
    assert sent["runtime"] == "OLLAMA"
    assert sent["endpoint"] == "https://node.example.com"
    assert sent["gpu"]["vendor"] in {"nvidia", "amd", "apple", "cpu"}
    assert sent["prices"] == [
        {"model": "llama3.2:1b", "inputPerMillion": "0.10", "outputPerMillion": "0.20"},
        {"model": "qwen2.5:7b", "inputPerMillion": "0.50", "outputPerMillion": "1.25"},
    ]
    assert "models: llama3.2:1b, qwen2.5:7b" in done.stdout


def test_registering_again_updates_the_same_node(
    platform: tuple[Platform, str], ollama: str, tmp_path: Path
) -> None:
    state, url = platform
    runs = [infer(*register(url, ollama), cwd=tmp_path) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr
    assert len({sent["name"] for sent in state.inputs}) == 1
    assert len(state.inputs) == 2
    assert len(state.nodes) == 1
    node_id = next(iter(state.nodes.values()))
    assert all(f"(id {node_id}): pending" in run.stdout for run in runs)
    assert "prices" not in state.inputs[0]  # without prices, the platform keeps its own
    assert "without --endpoint" in runs[0].stderr


def test_a_refused_registration_is_one_line_and_exit_status_1(
    platform: tuple[Platform, str], ollama: str, tmp_path: Path
) -> None:
    state, url = platform
    state.refusals.append(("BAD_USER_INPUT", "endpoint resolves to a private\naddress"))
    done = infer(*register(url, ollama, "--endpoint", "https://x.example"), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "infer: the platform refused: endpoint resolves to a private address (BAD_USER_INPUT)"
    )
    assert "Traceback" not in done.stderr
    args = register(url, ollama, "--endpoint", "https://x.example")
    args[args.index(KEY)] = "inf_wrong"
    wrong = infer(*args, cwd=tmp_path)
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "infer: the platform refused: invalid API key (UNAUTHENTICATED)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--platform": "ftp://platform.example"}, "infer: --platform must be an http(s) URL"),
        ({"--platform": "UNUSED"}, "infer: cannot reach the platform at http://127.0.0.1:"),
        ({"--endpoint": "node.example.com"}, "infer: --endpoint must be an http(s) URL"),
        ({"--price": "llama3.2:1b=cheap"}, "infer: --price takes IN/OUT"),
        ({"--runtime": "tgi"}, "infer: --runtime is ollama, exo, llama.cpp, vllm, lmstudio or"),
        ({"--ollama-url": "UNUSED"}, "infer: no runtime answered (looked at http://127.0.0.1:"),
    ],
)
def test_bad_options_and_failures_are_one_line_errors(
    change: dict[str, str], message: str, ollama: str, tmp_path: Path
) -> None:
    args = [*register(unused_url(), ollama), "--endpoint", "https://n.example", "--price", "a=1/2"]
    for option, value in change.items():
        value = unused_url() if value == "UNUSED" else value
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    done = infer(*args, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


class Detections:
    """Detection from a sequence of simulator URLs, one per round."""

    def __init__(self, *urls: str) -> None:
        self.urls = list(urls)

    def __call__(self) -> Detection:
        url = self.urls.pop(0) if len(self.urls) > 1 else self.urls[0]
        return detect(ollama_url=url, exo_url=unused_url(), gpu=lambda: CPU, host=lambda: HOST)


def agent(url: str, detections: Detections, out: io.StringIO) -> tuple[Agent, StatusLine]:
    client = PlatformClient(url, KEY)
    options = RegistrationOptions(endpoint="https://node.example.com")

    def clock() -> datetime:
        return datetime(2025, 1, 1, 12, 3, 4)

    return Agent(detect=detections, platform=client, options=options, clock=clock), StatusLine(out)


def test_the_agent_registers_again_only_when_something_changed(
    platform: tuple[Platform, str], ollama: str
) -> None:
    state, url = platform
    out = io.StringIO()
    with serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b",))) as smaller:
        runner, line = agent(url, Detections(smaller, smaller, ollama), out)
        runner.run(line, interval=0, iterations=2)
        assert len(state.inputs) == 1
        assert runner.registrations == 1
        runner.run(line, interval=0, iterations=1)
    assert len(state.inputs) == 2
    assert len(state.nodes) == 1
    assert out.getvalue().splitlines() == [
        "● online  llama3.2:1b  · last sync 12:03:04",
        "● online  llama3.2:1b, qwen2.5:7b  · last sync 12:03:04",
    ]


def test_the_agent_rides_out_a_busy_platform_and_a_stopped_runtime(
    platform: tuple[Platform, str], ollama: str
) -> None:
    state, url = platform
    state.refusals.append(("RATE_LIMITED", "slow down"))
    out = io.StringIO()
    runner, line = agent(url, Detections(ollama, ollama, unused_url()), out)
    runner.run(line, interval=0, iterations=3)
    assert len(state.requests) == 2
    assert runner.registrations == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == "✕ error  the platform refused: slow down (RATE_LIMITED)"
    assert lines[1].startswith("● online  llama3.2:1b, qwen2.5:7b")
    assert lines[2].startswith("○ offline  Ollama did not answer")


def test_the_agent_stops_on_a_refused_key(platform: tuple[Platform, str], ollama: str) -> None:
    state, url = platform
    state.refusals.append(("UNAUTHENTICATED", "this key was revoked"))
    runner, line = agent(url, Detections(ollama), io.StringIO())
    with pytest.raises(PlatformError, match="revoked"):
        runner.run(line, interval=0, iterations=2)


def test_the_agent_stops_within_a_round_once_its_key_is_revoked(
    platform: tuple[Platform, str], ollama: str
) -> None:
    state, url = platform
    runner, line = agent(url, Detections(ollama), io.StringIO())
    runner.run(line, interval=0, iterations=2)  # registered, then confirmed
    assert runner.registrations == 1
    state.refusals.append(("UNAUTHENTICATED", "this key was revoked"))
    with pytest.raises(PlatformError, match="revoked"):
        runner.run(line, interval=0, iterations=1)  # nothing to register: it asks all the same


def test_the_live_line_is_rewritten_in_place_and_fits_the_terminal() -> None:
    out = io.StringIO()
    line = StatusLine(out, live=True, width=lambda: 50)
    line.show(Status("online", "llama3.2:1b", datetime(2025, 1, 1, 9, 5, 7)))
    line.show(Status("online", "llama3.2:1b, " * 10, None))
    line.close()
    first, second = out.getvalue().split("\r")[1:]
    assert first == "\x1b[2K\x1b[32m●\x1b[0m online  llama3.2:1b  · last sync 09:05:07"
    assert second == "\x1b[2K" + ("● online  " + "llama3.2:1b, " * 10)[:49] + "\n"


def test_agent_command_exits_cleanly_on_ctrl_c(
    platform: tuple[Platform, str], ollama: str, tmp_path: Path
) -> None:
    state, url = platform
    args = ["node", "agent", *register(url, ollama)[2:], "--interval", "0.2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "infer.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(tmp_path),
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the agent printed no status"
        assert process.stdout.readline().startswith("● online  llama3.2:1b, qwen2.5:7b")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()
    assert len(state.inputs) == 1
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")
