"""`infer node doctor`: each thing a node needs, checked, with a fix for what fails.

Required: the key (stored privately, or given), a runtime that answers, the platform
reachable, the key accepted with the right to manage nodes, a clock within 30 s of the
platform's, and the platform's last health check of each node passed. Warnings (they do
not fail the doctor): no GPU (a CPU box is fine), a key that can also spend, a paused node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from infer.agent.detect import Detection, ServerKind
from infer.agent.errors import PlatformError
from infer.agent.gpu import GpuInfo
from infer.agent.platform import PlatformClient
from infer.agent.register import choose_runtime
from infer.agent.status import read_nodes
from infer.errors import InferError

MAX_SKEW_SECONDS = 30.0
JOIN_AGAIN = "create an enrolment code in the dashboard and run `infer node join --force …`"
_MARKS = {"pass": "✓", "fail": "✗", "warn": "!"}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's answer; `fix` says what to do when it did not pass."""

    name: str
    outcome: Literal["pass", "fail", "warn"]
    detail: str
    fix: str | None = None

    def render(self) -> str:
        line = f"{_MARKS[self.outcome]} {self.name}: {self.detail}"
        return line + (f"\n    fix: {self.fix}" if self.fix and self.outcome != "pass" else "")


@dataclass(frozen=True, slots=True)
class Setup:
    """What the doctor was given: where the key came from (or why there is none)."""

    config_path: Path
    key_source: str | None  # "--api-key", "INFER_API_KEY", the file's path; None: no key
    config_problem: str | None = None  # the stored file exists but cannot be used
    platform: str | None = None
    node_ids: tuple[str, ...] = ()


def _configuration(setup: Setup) -> Check:
    if setup.config_problem is not None:
        return Check("key", "fail", setup.config_problem, JOIN_AGAIN)
    if setup.key_source is None:
        return Check(
            "key",
            "fail",
            f"no --api-key, no INFER_API_KEY and no node configuration at {setup.config_path}",
            "run the `infer node join --platform URL --code CODE` line the dashboard shows",
        )
    if setup.key_source == str(setup.config_path):
        return Check("key", "pass", f"stored in {setup.config_path}, readable by you only")
    return Check("key", "pass", f"from {setup.key_source}")


def _runtime(
    detect: Callable[[], Detection], wanted: ServerKind | None
) -> tuple[Check, GpuInfo | None]:
    try:
        detection = detect()
        runtime = choose_runtime(detection, wanted)
    except InferError as exc:
        fix = "start the runtime (such as `ollama serve`), or point at it with --ollama-url, …"
        return Check("runtime", "fail", exc.message, fix), None
    count = len(runtime.models)
    detail = f"{runtime.kind} at {runtime.endpoint}, {count} model{'s' * (count != 1)}"
    return Check("runtime", "pass", detail), detection.gpu


def _gpu(gpu: GpuInfo | None) -> Check:
    if gpu is None:
        return Check("gpu", "warn", "not checked: no runtime answered")
    if gpu.vendor == "cpu" or not gpu.devices:
        memory = f", {gpu.memory_bytes / 2**30:.0f} GiB" if gpu.memory_bytes else ""
        return Check(
            "gpu",
            "warn",
            f"no GPU driver answered (nvidia-smi, rocm-smi, system_profiler): the CPU serves "
            f"({gpu.cpu_count or '?'} cores{memory})",
            "if the machine has a GPU, install its driver tools; a CPU box is fine otherwise",
        )
    device = gpu.devices[0]
    driver = f", driver {device.driver}" if device.driver else ""
    more = f" (+{len(gpu.devices) - 1} more)" if len(gpu.devices) > 1 else ""
    return Check("gpu", "pass", f"{device.name}{driver}{more}")


def _skew(client: PlatformClient, now: Callable[[], datetime]) -> Check:
    if client.server_date is None:
        return Check("clock", "warn", "the platform sent no Date header; skew not checked")
    skew = (now() - client.server_date).total_seconds()
    detail = f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the platform's clock"
    if abs(skew) > MAX_SKEW_SECONDS:
        fix = "turn on time sync (`timedatectl set-ntp true`; on macOS: Date & Time settings)"
        return Check("clock", "fail", detail, fix)
    return Check("clock", "pass", detail)


def _platform(client: PlatformClient, setup: Setup, now: Callable[[], datetime]) -> list[Check]:
    where = client.url.removesuffix("/graphql")
    try:
        can_spend = client.check_key()
    except PlatformError as exc:
        if exc.platform_code is None:
            return [
                Check("platform", "fail", exc.message, "check the URL, the network and proxy"),
                Check("key valid", "fail", "not checked: the platform did not answer"),
            ]
        reached = Check("platform", "pass", f"{where} answers")
        if exc.platform_code == "FORBIDDEN":
            detail = "the key may not manage nodes (it lacks the NODES scope)"
        else:
            detail = f"refused ({exc.message.removeprefix('the platform refused: ')})"
        return [reached, Check("key valid", "fail", detail, JOIN_AGAIN), _skew(client, now)]
    checks = [Check("platform", "pass", f"{where} answers"), Check("key valid", "pass", "accepted")]
    if can_spend:
        fix = "use the node key `infer node join` stores: it can manage nodes and nothing else"
        checks.append(Check("key scope", "warn", "this key can also spend your balance", fix))
    checks.append(_skew(client, now))
    return checks + _health(client, setup)


def _health(client: PlatformClient, setup: Setup) -> list[Check]:
    try:
        report = read_nodes(client, setup.node_ids)
    except PlatformError as exc:
        return [Check("health", "fail", exc.message)]
    checks = [
        Check("health", "fail", f"node {i} is unknown to the platform", "run `infer node register`")
        for i in report.missing
    ]
    if not report.nodes and not report.missing:
        checks.append(Check("health", "fail", "no node registered", "run `infer node register`"))
    for node in report.nodes:
        name = f"health of {node.name}"
        check = node.last_check
        if check is None or check.checked_at is None:
            fix = "wait for the platform's next check (each minute by default)"
            checks.append(Check(name, "fail", "the platform has not checked it yet", fix))
        elif check.ok:
            when = f"{check.checked_at:%H:%M:%S %Z}"
            checks.append(Check(name, "pass", f"the platform's last check ({when}) passed"))
        else:
            if "tunnel" in (check.error or ""):
                fix = "keep `infer node agent --tunnel` running here: it holds the node's "
                fix += "tunnel (its status line says whether it is connected)"
            else:
                fix = "the platform must reach the endpoint you registered: check --endpoint, "
                fix += "the firewall and port forwarding"
            detail = f"the platform's last check failed: {check.error or 'no reason given'}"
            checks.append(Check(name, "fail", detail, fix))
        if node.paused:
            checks.append(Check(name, "warn", "paused: it gets no new requests", "resume it"))
    return checks


def examine(
    setup: Setup,
    *,
    detect: Callable[[], Detection],
    runtime: ServerKind | None,
    client: Callable[[], PlatformClient] | None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Check]:
    """Every check, in the order an operator would fix them."""
    checks = [_configuration(setup)]
    found, gpu = _runtime(detect, runtime)
    checks += [found, _gpu(gpu)]
    if client is None:
        detail = "no platform: pass --platform, or run `infer node join`"
        return [*checks, Check("platform", "fail", detail)]
    with client() as platform:
        checks += _platform(platform, setup, now)
    return checks


def passed(checks: Sequence[Check]) -> bool:
    """True when no required check failed (warnings do not count)."""
    return all(check.outcome != "fail" for check in checks)
