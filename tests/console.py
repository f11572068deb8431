"""A served console for tests: a real agent over a simulator runtime, a platform double."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from infer.agent.console.access import Access
from infer.agent.console.logbook import Logbook
from infer.agent.console.run import run_console
from infer.agent.detect import Detection, Host, detect
from infer.agent.errors import PlatformError
from infer.agent.gpu import GpuInfo
from infer.agent.loop import LOG, Agent
from infer.agent.platform import NodeState, RegisteredNode
from infer.agent.register import Registration, RegistrationOptions

CPU = GpuInfo(vendor="cpu", memory_bytes=1 << 34, cpu_count=8)
HOST = Host("box", "linux", "x86_64", 8, 1 << 34)


def unused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@dataclass
class PlatformDouble:
    """Registers, reports and pauses one node in memory; can be told to refuse."""

    registrations: list[Registration] = field(default_factory=list)
    pauses: list[bool] = field(default_factory=list)
    state: NodeState | None = None
    refuse: PlatformError | None = None

    def register_node(self, registration: Registration) -> RegisteredNode:
        if self.refuse is not None:
            raise self.refuse
        self.registrations.append(registration)
        self.state = NodeState(
            id="node-1",
            name=registration.name,
            status="online",
            status_reason=None,
            paused=False,
            last_checked_at=None,
            requests_today=3,
            earnings_today="0.000042",
            last_check=None,
        )
        return RegisteredNode(id="node-1", status="online", status_reason=None)

    def confirm_node(self, node_id: str) -> None:
        self.node(node_id)

    def node(self, node_id: str) -> NodeState:
        if self.refuse is not None:
            raise self.refuse
        assert self.state is not None
        assert self.state.id == node_id
        return self.state

    def set_paused(self, node_id: str, paused: bool) -> NodeState:
        if self.refuse is not None:
            raise self.refuse
        assert self.state is not None
        assert self.state.id == node_id
        self.pauses.append(paused)
        self.state = replace(self.state, paused=paused, status="paused" if paused else "online")
        return self.state


@dataclass
class Served:
    """A console on loopback, its agent, the platform behind it and its address file."""

    access: Access
    agent: Agent
    platform: PlatformDouble
    address_file: Path

    @property
    def base(self) -> str:
        return self.access.url.rstrip("/")

    @contextlib.contextmanager
    def browser(self) -> Iterator[httpx.Client]:
        """A client that entered with the token: it holds the cookie, as a browser would."""
        with httpx.Client(base_url=self.base, timeout=10) as client:
            entered = client.get("/", params={"token": self.access.token})
            assert entered.status_code == 303, entered.text
            yield client

    def tray(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.access.token}"}
        return httpx.Client(base_url=self.base, headers=headers, timeout=10)


def detections(runtime_url: str) -> Detection:
    """Ollama at the URL; every other usual place is a closed port (not this machine's own)."""
    others = {
        name: unused_url() for name in ("exo_url", "llamacpp_url", "vllm_url", "lmstudio_url")
    }
    return detect(ollama_url=runtime_url, gpu=lambda: CPU, host=lambda: HOST, **others)


@contextlib.contextmanager
def serve_console(
    runtime_url: str,
    directory: Path,
    *,
    platform: PlatformDouble | None = None,
    options: RegistrationOptions | None = None,
) -> Iterator[Served]:
    """A console over an agent that has not run a round yet (the operator registers)."""
    double = platform or PlatformDouble()
    agent = Agent(
        detect=lambda: detections(runtime_url),
        platform=double,
        options=options or RegistrationOptions(name="box-ollama", endpoint="https://n.example.com"),
    )
    logbook = Logbook()
    LOG.addHandler(logbook)
    LOG.setLevel(logging.INFO)
    address_file = directory / "console.json"
    try:
        with run_console(
            agent,
            double,
            platform_url="https://platform.example.com",
            port=0,
            logbook=logbook,
            address_file=address_file,
        ) as access:
            yield Served(access, agent, double, address_file)
    finally:
        LOG.removeHandler(logbook)
