"""The servers under test and their surroundings: subprocesses, database, Redis, environment."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from infer.db import upgrade_database

from .errors import BenchError
from .market import MODEL

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A server subprocess in its own session (Ctrl+C reaches only us; we stop it).

    It runs in the run's temporary directory: `python -m` puts the working directory
    first on sys.path, so started from a checkout it would import that checkout's
    `infer`, whatever the interpreter has installed (a `--platform-command` variant too).
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                env=env,
                cwd=logs,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.name} was not ready within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def services(
    env: dict[str, str], workdir: Path, platform_command: list[str], serve: list[str]
) -> Iterator[tuple[Service, Service, str, str]]:
    """The simulator and the platform, ready: (simulator, platform, their two URLs)."""
    python = [sys.executable, "-m", "infer.cli"]
    sim_port, platform_port = free_port(), free_port()
    started: list[Service] = []
    try:
        simulator = Service(
            "simulator",
            [*python, "node", "simulate", "--port", str(sim_port), "--model", MODEL],
            env,
            workdir,
        )
        started.append(simulator)
        platform = Service(
            "platform", [*platform_command, *serve, "--port", str(platform_port)], env, workdir
        )
        started.append(platform)
        sim_url, platform_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{platform_port}"
        simulator.wait_ready(sim_url + "/api/version")
        platform.wait_ready(platform_url + "/healthz")
        yield simulator, platform, sim_url, platform_url
    finally:
        for service in reversed(started):
            service.stop()


def platform_env(database_url: str, redis: bool, workdir: Path) -> dict[str, str]:
    """The platform's environment: fresh secrets, this database, limits out of the way."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    env = {name: value for name, value in os.environ.items() if not name.startswith("INFER_")}
    return env | {
        "INFER_DATABASE_URL": database_url,
        "INFER_REDIS_URL": REDIS_URL if redis else "",
        "INFER_REDIS_PREFIX": f"infer-bench-{uuid.uuid4().hex[:12]}",
        "INFER_SECRET_KEY": secrets.token_urlsafe(32),
        "INFER_LOOKUP_KEY": secrets.token_urlsafe(32),
        "INFER_ENCRYPTION_KEYS": f"1:{key}",
        "INFER_SECRETS_FILE": str(workdir / "secrets.json"),
        "INFER_ALLOW_PRIVATE_ENDPOINTS": "true",
        "INFER_KEY_REQUESTS_PER_MINUTE": str(10**9),
        "INFER_KEY_TOKENS_PER_MINUTE": str(10**12),
        "INFER_LOG_LEVEL": "warning",  # no access log line per request
    }


def fresh_database(*, sqlite: bool, workdir: Path, name: str = "infer_bench") -> str:
    """A new, migrated database (PostgreSQL's named `name`); its SQLAlchemy URL."""
    if sqlite:
        url = f"sqlite+aiosqlite:///{workdir / 'infer_bench.db'}"
        upgrade_database(url)
        return url
    import asyncpg

    async def recreate() -> None:
        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await connection.execute(f"CREATE DATABASE {name}")
        finally:
            await connection.close()

    asyncio.run(recreate())
    url = PG_URL.format(name=name)
    upgrade_database(url)
    return url


def forget_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    with contextlib.suppress(redis.RedisError):
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    client.close()
