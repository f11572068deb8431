"""`infer node agent` serves its console: the link, the file the tray reads, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from console import unused_url

from infer.simulator import SimulatorConfig, serve_simulator_in_thread


@pytest.fixture(scope="module")
def runtime() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig()) as url:
        yield url


def start_agent(runtime: str, config: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFER_", "DISPLAY"))}
    env |= {"INFER_NODE_CONFIG": str(config), "WAYLAND_DISPLAY": ""}
    args = [
        "node", "agent", "--platform", unused_url(), "--api-key", "inf_key",
        "--ollama-url", runtime, "--exo-url", unused_url(), "--llamacpp-url", unused_url(),
        "--vllm-url", unused_url(), "--lmstudio-url", unused_url(), "--console-port", "0", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "infer.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=config.parent.parent,
    )


def wait_for(path: Path, process: subprocess.Popen[str]) -> dict[str, str]:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the agent wrote no console file"
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "service-stop"])
def test_the_agent_serves_its_console_and_removes_its_link_when_stopped(
    runtime: str, tmp_path: Path, stop: signal.Signals
) -> None:
    config = tmp_path / "infer" / "node.json"
    process = start_agent(runtime, config, "--tray")
    try:
        link = wait_for(config.parent / "console.json", process)
        assert link["url"].startswith("http://127.0.0.1:")
        headers = {"Authorization": f"Bearer {link['token']}"}
        status = httpx.get(link["url"] + "api/status", headers=headers, timeout=10).json()
        assert status["state"] == "unknown"
        assert httpx.get(link["url"], timeout=10).status_code == 403
        process.send_signal(stop)  # SIGTERM: how systemd and launchd stop a service
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert f"console at {link['url']} (its link is in {config.parent / 'console.json'})" in stderr
    assert link["token"] not in stderr  # not a terminal: a service log keeps no token
    assert "no tray icon: no desktop (DISPLAY is unset); the agent runs without it" in stderr
    assert "Traceback" not in stderr
    assert not (config.parent / "console.json").exists()


def test_a_console_port_in_use_is_a_clear_error(runtime: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        process = start_agent(runtime, tmp_path / "node.json", "--console-port", port)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith(f"infer: cannot serve the console on 127.0.0.1:{port}")
    )


def test_tray_and_no_console_do_not_go_together(runtime: str, tmp_path: Path) -> None:
    process = start_agent(runtime, tmp_path / "node.json", "--tray", "--no-console")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "--tray shows the console's status" in stderr


def test_the_tray_command_says_why_it_cannot_show(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFER_", "DISPLAY"))}
    env |= {"WAYLAND_DISPLAY": ""}
    args = [sys.executable, "-m", "infer.cli", "node", "tray", "--config", str(tmp_path / "n.json")]
    no_desktop = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert no_desktop.returncode == 1
    assert no_desktop.stderr == "infer: no tray icon: no desktop (DISPLAY is unset)\n"
    env["PYSTRAY_BACKEND"] = "dummy"
    no_agent = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert no_agent.returncode == 1
    assert no_agent.stderr.startswith("infer: no agent console found")
