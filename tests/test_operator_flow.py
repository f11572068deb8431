"""An operator registers a local runtime with `infer node register` against a real platform."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import CREATE_KEY, PASSWORD, SIGN_UP

from infer.app import create_app
from infer.config import Settings
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

ME_NODES = "{ me { nodes { id name status models { name available inputPerMillion } } } }"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infer.cli", "node", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
        env={"PATH": os.environ["PATH"]},
    )


def test_detect_then_register_twice_gives_one_online_node(
    settings: Settings, tmp_path: Path
) -> None:
    config = SimulatorConfig(models=("llama3.2:1b", "qwen2.5:0.5b"))
    with (
        serve_simulator_in_thread(config) as runtime,
        serve_in_thread(create_app(settings), lifespan="on") as platform,
        httpx.Client(base_url=platform) as http,
    ):
        http.post(
            "/graphql", json={"query": SIGN_UP, "variables": {"e": "op@example.com", "p": PASSWORD}}
        )
        key = http.post("/graphql", json={"query": CREATE_KEY, "variables": {"n": "agent"}}).json()[
            "data"
        ]["createApiKey"]["secret"]
        detected = _cli(
            "detect", "--ollama-url", runtime, "--exo-url", "http://127.0.0.1:9", cwd=tmp_path
        )
        assert detected.returncode == 0, detected.stderr
        assert "llama3.2:1b" in detected.stdout
        for _ in range(2):
            done = _cli(
                "register",
                "--ollama-url",
                runtime,
                "--exo-url",
                "http://127.0.0.1:9",
                "--platform",
                platform,
                "--api-key",
                key,
                "--endpoint",
                runtime,
                "--name",
                "desk",
                "--default-price",
                "0.10/0.20",
                cwd=tmp_path,
            )
            assert done.returncode == 0, done.stderr
        nodes = http.post(
            "/graphql", json={"query": ME_NODES}, headers={"Authorization": f"Bearer {key}"}
        ).json()["data"]["me"]["nodes"]
        wrong = _cli(
            "register",
            "--ollama-url",
            runtime,
            "--platform",
            platform,
            "--api-key",
            "inf_nope",
            "--endpoint",
            runtime,
            cwd=tmp_path,
        )
    assert len(nodes) == 1
    assert nodes[0]["status"] == "ONLINE"
    assert {m["name"]: m["inputPerMillion"] for m in nodes[0]["models"]} == {
        "llama3.2:1b": "0.10",
        "qwen2.5:0.5b": "0.10",
    }
    assert wrong.returncode == 1
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert not (tmp_path / ".infer").exists()
