"""The doctor's checks against canned platform answers: what passes, fails and only warns."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx

from infer.agent.detect import DetectedRuntime, Detection, Host
from infer.agent.doctor import Check, Setup, examine, passed
from infer.agent.gpu import GpuDevice, GpuInfo
from infer.agent.platform import PlatformClient

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
HOST = Host("box", "linux", "x86_64", 8, 1 << 34)
CPU = GpuInfo(vendor="cpu", memory_bytes=1 << 34, cpu_count=8)
NVIDIA = GpuInfo(vendor="nvidia", devices=(GpuDevice("RTX 4090", 1 << 34, "550.54"),))
OLLAMA = DetectedRuntime("ollama", "http://127.0.0.1:11434", "0.12.0", ("llama3.2:1b",))
SETUP = Setup(config_path=Path("/h/node.json"), key_source="/h/node.json", node_ids=("7",))
NODE = {
    "id": "7",
    "name": "box-ollama",
    "status": "ONLINE",
    "paused": False,
    "servedToday": {"requests": 0, "earnings": "0"},
    "healthChecks": [{"checkedAt": NOW.isoformat(), "ok": True, "latencyMs": 3, "error": None}],
}


def platform(*, skew: timedelta = timedelta(0), node: dict[str, Any] = NODE) -> PlatformClient:
    def handle(request: httpx.Request) -> httpx.Response:
        query = json.loads(request.content)["query"]
        if "balance" in query:
            body: dict[str, Any] = {
                "errors": [{"message": "needs ACCOUNT", "extensions": {"code": "FORBIDDEN"}}]
            }
        elif "node(id" in query:
            body = {"data": {"node": node}}
        else:
            body = {"data": {"me": {"id": "1", "nodes": [{"id": "7"}]}}}
        date = format_datetime(NOW - skew, usegmt=True)
        return httpx.Response(200, json=body, headers={"Date": date})

    return PlatformClient("https://p.example", "inf_k", transport=httpx.MockTransport(handle))


def run(gpu: GpuInfo = NVIDIA, **answers: Any) -> list[Check]:
    detection = Detection(runtimes=(OLLAMA,), gpu=gpu, host=HOST)
    return examine(
        SETUP,
        detect=lambda: detection,
        runtime=None,
        client=lambda: platform(**answers),
        now=lambda: NOW,
    )


def outcomes(checks: list[Check]) -> dict[str, str]:
    return {check.name: check.outcome for check in checks}


def test_a_healthy_node_passes_every_check() -> None:
    checks = run()
    assert passed(checks)
    assert outcomes(checks) == {
        "key": "pass",
        "runtime": "pass",
        "gpu": "pass",
        "platform": "pass",
        "key valid": "pass",
        "clock": "pass",
        "health of box-ollama": "pass",
    }


def test_a_cpu_box_only_warns() -> None:
    checks = run(gpu=CPU)
    assert passed(checks)
    [gpu] = [check for check in checks if check.name == "gpu"]
    assert gpu.outcome == "warn"
    assert "the CPU serves (8 cores, 16 GiB)" in gpu.render()


def test_a_clock_off_by_more_than_30_seconds_fails_with_a_fix() -> None:
    assert passed(run(skew=timedelta(seconds=29)))
    checks = run(skew=timedelta(seconds=45))
    assert not passed(checks)
    [clock] = [check for check in checks if check.name == "clock"]
    assert clock.render().startswith("✗ clock: 45 s ahead of the platform's clock\n    fix: ")


def test_a_failed_health_check_fails_and_says_where_to_look() -> None:
    failing = NODE | {
        "status": "OFFLINE",
        "healthChecks": [
            {"checkedAt": NOW.isoformat(), "ok": False, "error": "connection refused"}
        ],
    }
    checks = run(node=failing)
    assert not passed(checks)
    assert checks[-1].render() == (
        "✗ health of box-ollama: the platform's last check failed: connection refused\n"
        "    fix: the platform must reach the endpoint you registered: check --endpoint, "
        "the firewall and port forwarding"
    )


def test_a_tunnelled_node_without_its_tunnel_is_told_to_run_the_agent() -> None:
    failing = NODE | {
        "status": "OFFLINE",
        "healthChecks": [
            {
                "checkedAt": NOW.isoformat(),
                "ok": False,
                "error": "the node's tunnel is not connected",
            }
        ],
    }
    [*_, health] = run(node=failing)
    assert health.render().endswith(
        "    fix: keep `infer node agent --tunnel` running here: it holds the node's tunnel "
        "(its status line says whether it is connected)"
    )


def test_no_key_and_no_platform_fail_without_asking_anyone() -> None:
    detection = Detection(runtimes=(), gpu=CPU, host=HOST, probed=("http://127.0.0.1:11434",))
    setup = Setup(config_path=Path("/h/node.json"), key_source=None)
    checks = examine(setup, detect=lambda: detection, runtime=None, client=None)
    assert outcomes(checks) == {"key": "fail", "runtime": "fail", "gpu": "warn", "platform": "fail"}
