"""A new operator enrols a box with `infer node join` against a served platform, then checks it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, SIGN_UP
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import col

from infer.app import create_app
from infer.config import Settings
from infer.models import EnrollmentCode
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

CREATE_CODE = "mutation { createEnrollmentCode { code expiresAt command } }"
CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def infer(*args: str, config: Path, runtime: str) -> subprocess.CompletedProcess[str]:
    """`infer node …` on a box whose only runtime is `runtime` (other ports: nothing there)."""
    probes = ["--ollama-url", runtime, "--exo-url", unused_url(), "--llamacpp-url", unused_url()]
    probes += ["--vllm-url", unused_url(), "--lmstudio-url", unused_url()]
    with_probes = args[0] in ("join", "register", "doctor")
    home = next(folder for folder in config.parents if folder.exists())
    return subprocess.run(
        [sys.executable, "-m", "infer.cli", "node", *args, *(probes if with_probes else [])],
        capture_output=True,
        text=True,
        cwd=home,
        timeout=60,
        check=False,
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "INFER_NODE_CONFIG": str(config),
        },
    )


def new_code(http: httpx.Client) -> tuple[str, list[str]]:
    """A code from the platform and its `infer node join` line, split as a shell would."""
    issued = http.post("/graphql", json={"query": CREATE_CODE}).json()["data"][
        "createEnrollmentCode"
    ]
    command = shlex.split(issued["command"])
    assert command[:3] == ["infer", "node", "join"]
    assert issued["code"] in command
    return issued["code"], command[2:]


def expire_codes(settings: Settings) -> None:
    async def expire() -> None:
        engine = create_async_engine(settings.database_url)
        async with engine.begin() as connection:
            past = datetime(2000, 1, 1, tzinfo=UTC)
            unused = col(EnrollmentCode.used_at).is_(None)
            await connection.execute(update(EnrollmentCode).where(unused).values(expires_at=past))
        await engine.dispose()

    asyncio.run(expire())


def until(check: Any, *, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_join_enrols_a_box_whose_key_can_only_run_nodes(settings: Settings, tmp_path: Path) -> None:
    fast = settings.model_copy(update={"health_interval": 0.5})
    box, other_box = tmp_path / "box" / "infer" / "node.json", tmp_path / "other" / "node.json"
    box.parent.parent.mkdir()
    other_box.parent.mkdir()
    config = SimulatorConfig(models=("llama3.2:1b",))
    with (
        serve_simulator_in_thread(config) as runtime,
        serve_in_thread(create_app(fast), lifespan="on") as platform,
        httpx.Client(base_url=platform) as http,
    ):
        http.post(
            "/graphql", json={"query": SIGN_UP, "variables": {"e": "op@example.com", "p": PASSWORD}}
        )
        _, join = new_code(http)
        extra = ["--endpoint", runtime, "--default-price", "0.10/0.20"]
        joined = infer(*join, *extra, config=box, runtime=runtime)
        assert joined.returncode == 0, joined.stderr
        assert f"the node key is in {box}" in joined.stdout
        assert stat.S_IMODE(box.stat().st_mode) == 0o600
        assert stat.S_IMODE(box.parent.stat().st_mode) == 0o700
        stored = json.loads(box.read_text())
        assert stored["api_key"] not in joined.stdout + joined.stderr

        reused = infer(*join, *extra, config=other_box, runtime=runtime)
        _, fresh = new_code(http)
        expire_codes(fast)
        expired = infer(*fresh, *extra, config=other_box, runtime=runtime)
        unknown = infer(
            *join[:-1], "AAAA-BBBB-CCCC-DDDD", *extra, config=other_box, runtime=runtime
        )

        node_key = {"Authorization": f"Bearer {stored['api_key']}"}
        spend = http.post("/api/v1/chat/completions", json=CHAT, headers=node_key)
        make_key = http.post(
            "/graphql",
            json={"query": 'mutation { createApiKey(name: "more") { secret } }'},
            headers=node_key,
        )
        online = until(lambda: infer("status", config=box, runtime=runtime).returncode == 0)
        status = infer("status", "--json", config=box, runtime=runtime)
        doctor = infer("doctor", config=box, runtime=runtime)

    # The platform is gone too now: its runtime is stopped, then the platform itself.
    assert online
    assert status.returncode == 0, status.stdout + status.stderr
    [node] = json.loads(status.stdout)["nodes"]
    assert (node["id"], node["status"], node["paused"]) == (stored["node_ids"][0], "online", False)
    assert doctor.returncode == 0, doctor.stdout
    assert "✓ key: stored in" in doctor.stdout
    assert "✓ health of" in doctor.stdout
    for refused, why in ((reused, "used"), (expired, "expired"), (unknown, "unknown")):
        assert refused.returncode == 1
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith("infer: the platform refused: ")
        assert why in line
        assert line.endswith("(BAD_USER_INPUT)")
    assert not other_box.exists()  # nothing half-done
    assert spend.status_code == 403
    assert spend.json()["error"]["code"] == "insufficient_scope"
    assert make_key.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_status_and_doctor_fail_once_the_runtime_stops(settings: Settings, tmp_path: Path) -> None:
    fast = settings.model_copy(update={"health_interval": 0.5})
    box = tmp_path / "node.json"
    with (
        serve_in_thread(create_app(fast), lifespan="on") as platform,
        httpx.Client(base_url=platform) as http,
    ):
        http.post(
            "/graphql", json={"query": SIGN_UP, "variables": {"e": "op@example.com", "p": PASSWORD}}
        )
        _, join = new_code(http)
        with serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b",))) as runtime:
            joined = infer(*join, "--endpoint", runtime, config=box, runtime=runtime)
            assert joined.returncode == 0, joined.stderr
            again = infer("register", config=box, runtime=runtime)  # the stored key and options
            assert again.returncode == 0, again.stderr
            assert f"at {runtime} (id {json.loads(box.read_text())['node_ids'][0]})" in again.stdout
        # The runtime is stopped: the platform's next checks fail.
        down = until(lambda: infer("status", config=box, runtime=runtime).returncode == 4)
        status = infer("status", config=box, runtime=runtime)
        doctor = infer("doctor", config=box, runtime=runtime)
    assert down
    assert status.returncode == 4
    assert ": offline" in status.stdout
    assert doctor.returncode == 1
    assert "✗ runtime: no runtime answered" in doctor.stdout
    assert "✗ health of" in doctor.stdout


def test_without_a_stored_key_status_says_how_to_join(tmp_path: Path) -> None:
    done = infer("status", config=tmp_path / "node.json", runtime=unused_url())
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"infer: no --platform and no node configuration at {tmp_path / 'node.json'}: run the "
        "`infer node join --platform URL --code CODE` line the dashboard shows"
    )


def test_a_stored_key_others_can_read_is_refused(tmp_path: Path) -> None:
    box = tmp_path / "node.json"
    box.write_text(json.dumps({"platform": "https://p.example", "api_key": "inf_x"}))
    box.chmod(0o644)
    done = infer("status", config=box, runtime=unused_url())
    assert done.returncode == 1
    assert "other users can read it (mode 0644); run: chmod 600" in done.stderr
    doctor = infer("doctor", config=box, runtime=unused_url())
    assert doctor.returncode == 1
    assert "✗ key:" in doctor.stdout


def test_service_install_dry_run_prints_the_unit_and_writes_nothing(tmp_path: Path) -> None:
    box = tmp_path / "node.json"
    done = infer("service", "install", "--dry-run", config=box, runtime=unused_url())
    assert done.returncode == 0, done.stderr
    if sys.platform == "darwin":
        assert "<key>ProgramArguments</key>" in done.stdout
    else:
        assert done.stdout.startswith(f"# {tmp_path}/.config/systemd/user/infer-node.service\n")
        assert f'Environment="INFER_NODE_CONFIG={box}"' in done.stdout
    assert "node agent" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    written = infer("service", "install", config=box, runtime=unused_url())
    assert written.returncode == 0, written.stderr
    assert "systemctl --user daemon-reload" in written.stdout or sys.platform == "darwin"


def test_doctor_reads_a_platforms_date_without_a_zone_as_utc(tmp_path: Path) -> None:
    """RFC 5322's `-0000` (and a date with no zone) are UTC, not a traceback of the skew check."""

    class Platform(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps(
                {"errors": [{"message": "bad key", "extensions": {"code": "UNAUTHENTICATED"}}]}
            ).encode()
            self.send_response_only(200)
            self.send_header("Date", datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S -0000"))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    box = tmp_path / "node.json"
    with ThreadingHTTPServer(("127.0.0.1", 0), Platform) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        platform = f"http://127.0.0.1:{server.server_address[1]}"
        box.write_text(json.dumps({"platform": platform, "api_key": "inf_" + "x" * 40}))
        box.chmod(0o600)
        doctor = infer("doctor", config=box, runtime=unused_url())
        server.shutdown()
    assert "Traceback" not in doctor.stderr, doctor.stderr
    assert doctor.returncode == 1
    assert "✗ key valid: refused (bad key (UNAUTHENTICATED))" in doctor.stdout
    [clock] = [line for line in doctor.stdout.splitlines() if "clock:" in line]
    assert clock.startswith("✓ clock: "), clock  # within the skew allowed: read as UTC


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_box_that_cannot_keep_the_key_does_not_spend_the_code(
    settings: Settings, tmp_path: Path
) -> None:
    # /proc/self admits no new folder, not even for root: the key would be kept nowhere.
    unwritable = Path("/proc/self/infer/node.json")
    box = tmp_path / "infer" / "node.json"
    with (
        serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b",))) as runtime,
        serve_in_thread(create_app(settings), lifespan="on") as platform,
        httpx.Client(base_url=platform) as http,
    ):
        http.post(
            "/graphql", json={"query": SIGN_UP, "variables": {"e": "op@example.com", "p": PASSWORD}}
        )
        _, join = new_code(http)
        extra = ["--endpoint", runtime, "--default-price", "0.10/0.20"]
        refused = infer(*join, *extra, config=unwritable, runtime=runtime)
        joined = infer(*join, *extra, config=box, runtime=runtime)
        keys = http.post("/graphql", json={"query": "{ me { apiKeys { name } } }"}).json()
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"infer: cannot write {unwritable}: No such file or directory"
    assert joined.returncode == 0, joined.stderr
    assert len(keys["data"]["me"]["apiKeys"]) == 1  # one code, one key


def test_a_platform_answering_endless_brackets_or_megabytes_is_one_line(tmp_path: Path) -> None:
    answers = {"/nested": b"[" * 100_000, "/huge": b'{"data": "' + b"x" * (5 << 20) + b'"}'}

    class Platform(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = answers[self.path.removesuffix("/graphql")]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the agent may stop reading half-way
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    box = tmp_path / "node.json"
    done = {}
    with ThreadingHTTPServer(("127.0.0.1", 0), Platform) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for path in answers:
            platform = f"http://127.0.0.1:{server.server_address[1]}{path}"
            box.write_text(json.dumps({"platform": platform, "api_key": "inf_" + "x" * 40}))
            box.chmod(0o600)
            done[path] = infer("status", config=box, runtime=unused_url())
        server.shutdown()
    for path, why in (("/nested", "is not a GraphQL response"), ("/huge", "is too large")):
        assert done[path].returncode != 0
        [line] = done[path].stderr.strip().splitlines()
        assert why in line, line
