"""`join` in order: nothing spent before the runtime is known, the key kept before it is used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from infer.agent import credentials
from infer.agent.detect import DetectedRuntime, Detection, Host
from infer.agent.errors import AlreadyJoined, NoRuntime, RegistrationAfterJoinFailed
from infer.agent.gpu import GpuInfo
from infer.agent.join import join
from infer.agent.platform import PlatformClient
from infer.agent.register import RegistrationOptions

HOST = Host("box", "linux", "x86_64", 8, 1 << 34)
CPU = GpuInfo(vendor="cpu", memory_bytes=1 << 34, cpu_count=8)
OLLAMA = DetectedRuntime("ollama", "http://127.0.0.1:11434", "0.12.0", ("llama3.2:1b",))
REDEEMED = {
    "data": {
        "redeemEnrollmentCode": {
            "secret": "inf_node_secret",
            "apiKey": {"id": "k1", "name": "node: box-ollama", "scopes": ["NODES"]},
        }
    }
}


class Platform:
    """Canned answers; records each operation and the key it came with."""

    def __init__(self, register: dict[str, Any]) -> None:
        self.register = register
        self.calls: list[tuple[str, str | None]] = []

    def client(self, key: str | None) -> PlatformClient:
        def handle(request: httpx.Request) -> httpx.Response:
            query = json.loads(request.content)["query"]
            operation = "redeem" if "redeemEnrollmentCode" in query else "register"
            self.calls.append((operation, request.headers.get("authorization")))
            return httpx.Response(200, json=REDEEMED if operation == "redeem" else self.register)

        return PlatformClient("https://p.example", key, transport=httpx.MockTransport(handle))


def joining(platform: Platform, path: Path, *runtimes: DetectedRuntime, force: bool = False) -> Any:
    return join(
        platform="https://p.example/",
        code="ABCD-EFGH",
        options=RegistrationOptions(endpoint="https://gpu.example.net"),
        path=path,
        detect=lambda: Detection(runtimes=runtimes, gpu=CPU, host=HOST),
        client=platform.client,
        force=force,
    )


def test_join_stores_the_key_then_registers_with_it(tmp_path: Path) -> None:
    platform = Platform({"data": {"registerNode": {"id": "n1", "status": "ONLINE"}}})
    joined = joining(platform, tmp_path / "node.json", OLLAMA)
    assert platform.calls == [("redeem", None), ("register", "Bearer inf_node_secret")]
    assert credentials.load(tmp_path / "node.json") == joined.stored
    assert joined.stored.platform == "https://p.example"
    assert (joined.stored.node_ids, joined.stored.endpoint) == (("n1",), "https://gpu.example.net")


def test_no_runtime_spends_no_code(tmp_path: Path) -> None:
    platform = Platform({})
    with pytest.raises(NoRuntime):
        joining(platform, tmp_path / "node.json")
    assert platform.calls == []
    assert not (tmp_path / "node.json").exists()


def test_a_refused_registration_keeps_the_key_and_says_how_to_retry(tmp_path: Path) -> None:
    refusal = {"message": "endpoint is not allowed", "extensions": {"code": "BAD_USER_INPUT"}}
    platform = Platform({"data": None, "errors": [refusal]})
    with pytest.raises(RegistrationAfterJoinFailed) as failed:
        joining(platform, tmp_path / "node.json", OLLAMA)
    assert "run `infer node register` (no new code needed)" in failed.value.message
    stored = credentials.load(tmp_path / "node.json")
    assert stored is not None
    assert (stored.api_key, stored.node_ids) == ("inf_node_secret", ())


def test_a_box_that_joined_already_needs_force(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    credentials.save(path, credentials.NodeCredentials(platform="https://p.example", api_key="k"))
    platform = Platform({"data": {"registerNode": {"id": "n2", "status": "ONLINE"}}})
    with pytest.raises(AlreadyJoined, match="pass --force"):
        joining(platform, path, OLLAMA)
    assert platform.calls == []
    assert joining(platform, path, OLLAMA, force=True).stored.node_ids == ("n2",)
