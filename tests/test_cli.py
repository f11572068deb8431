"""The `infer` command as a user runs it: a process, configured by its environment."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import SIGN_UP, GraphQLClient

from infer.config import Settings


def _env(settings: Settings, cwd: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "INFER_DATABASE_URL": settings.database_url,
        "INFER_SECRETS_FILE": str(cwd / "secrets.json"),
        # The test's own namespace: under the default one, sign-up limits per address
        # carried over from earlier runs on this Redis refused the sign-up below.
        "INFER_REDIS_PREFIX": settings.redis_prefix,
    }


def _infer(settings: Settings, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _python(settings, "-m", "infer.cli", *args, cwd=cwd)


def _python(settings: Settings, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=_env(settings, cwd),
        cwd=cwd,
        timeout=60,
        check=False,
    )


async def test_credits_grant_shows_in_me_balance(
    settings: Settings, graphql: GraphQLClient, tmp_path: Path
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": "correct horse battery staple"})
    # On a worker thread: the app runs on this event loop, and a background task of it
    # caught inside a write transaction would hold SQLite's lock until the loop ran again.
    done = await asyncio.to_thread(
        _infer, settings, "credits", "grant", "Ann@Example.com", "12.50", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "balance is now 12.50 USD" in done.stdout
    body = await graphql("{ me { balance } }")
    assert body["data"]["me"]["balance"] == "12.50"  # type: ignore[index]


async def test_credits_grant_refuses_bad_amounts_and_unknown_accounts(
    settings: Settings, tmp_path: Path
) -> None:
    for amount, fragment in (
        ("-5", "positive"),
        ("abc", "not an amount"),
        ("0.0000001", "6 decimal"),
    ):
        done = _infer(settings, "credits", "grant", "ann@example.com", amount, cwd=tmp_path)
        assert done.returncode != 0
        assert fragment in done.stderr
        assert "Traceback" not in done.stderr
    missing = _infer(settings, "credits", "grant", "nobody@example.com", "5", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "infer: no account with the email 'nobody@example.com'"


async def test_migrate_is_idempotent_and_keeps_secrets_in_a_private_file(
    settings: Settings, tmp_path: Path
) -> None:
    for _ in range(2):
        done = _infer(settings, "migrate", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    secrets = tmp_path / "secrets.json"
    assert secrets.exists()
    assert secrets.stat().st_mode & 0o777 == 0o600


def test_production_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "INFER_ENV": "production",
        "INFER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
    }
    done = subprocess.run(
        [sys.executable, "-m", "infer.cli", "migrate"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "INFER_SECRET_KEY must be set in production" in done.stderr
    assert not (tmp_path / "x.db").exists()


def test_a_bad_setting_stops_the_command_with_one_line_naming_it(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "INFER_LOG_LEVEL": "loud"}
    done = subprocess.run(
        [sys.executable, "-m", "infer.cli", "serve"],
        capture_output=True,
        text=True,
        env=env | {"INFER_SECRETS_FILE": str(tmp_path / "secrets.json")},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("infer: configuration error: INFER_LOG_LEVEL: Input should be")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "infer.db").exists()


def test_an_unreachable_database_is_one_line_without_its_password(
    settings: Settings, tmp_path: Path
) -> None:
    port = _free_port()  # nothing listens there
    url = f"postgresql://infer:hunter2-secret@127.0.0.1:{port}/infer"
    done = _infer(settings.model_copy(update={"database_url": url}), "migrate", cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"infer: cannot use the database postgresql+asyncpg://infer:***@127.0.0.1:{port}/infer: "
    )
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_several_workers_need_redis(settings: Settings, tmp_path: Path) -> None:
    done = _infer(
        settings.model_copy(update={"redis_url": None}), "serve", "--workers", "2", cwd=tmp_path
    )
    assert done.returncode == 1
    assert "--workers above 1 needs INFER_REDIS_URL" in done.stderr


def test_several_workers_serve_one_port(settings: Settings, tmp_path: Path) -> None:
    if settings.redis_url is None:
        pytest.skip("several workers share their state through Redis (the PostgreSQL variant)")
    port = _free_port()
    env = _env(settings, tmp_path) | {"INFER_REDIS_URL": settings.redis_url}
    server = subprocess.Popen(
        [sys.executable, "-m", "infer.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "not serving after 60 s"
            time.sleep(0.2)
        query = {"query": SIGN_UP, "variables": {"e": "ann@example.com", "p": "a long pass phrase"}}
        answers = [httpx.post(f"{url}/graphql", json=query, timeout=10).json() for _ in range(2)]
        # One account whichever worker took each request: the second sign-up is refused.
        assert "errors" not in answers[0], answers[0]
        assert answers[0]["data"]["signUp"]["id"]
        assert answers[1]["errors"][0]["extensions"]["code"] == "CONFLICT"
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        commands = [Path(f"/proc/{child}/cmdline").read_bytes() for child in children]
        assert sum(b"spawn_main" in command for command in commands) == 2  # the two workers
    finally:
        server.terminate()
        server.wait(timeout=30)


FROZEN_AFTER_STARTUP = """
import asyncio, gc, sys
from infer.app import create_app
from infer.config import load_settings

async def main(freeze: bool) -> None:
    app = create_app(load_settings(), freeze_heap=freeze)
    async with app.router.lifespan_context(app):
        print(gc.get_freeze_count())

asyncio.run(main(sys.argv[1] == "serve"))
"""


@pytest.mark.parametrize("role", ["serve", "embedded"])
def test_a_serving_process_exempts_its_startup_heap_from_collection(
    settings: Settings, tmp_path: Path, role: str
) -> None:
    # A full collection walking the ~170k start-up objects stalled every request in
    # flight for 70-95 ms (docs/performance.md); `infer serve` freezes them once started.
    assert _infer(settings, "migrate", cwd=tmp_path).returncode == 0
    done = _python(settings, "-c", FROZEN_AFTER_STARTUP, role, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    frozen = int(done.stdout)
    if role == "serve":
        assert frozen > 50_000  # the modules, the schema, the ORM's metadata
    else:
        assert frozen == 0  # an app embedded in another program leaves its heap alone
