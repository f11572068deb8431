"""Probe this machine: Ollama and Exo, their models, the GPU and the host."""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from infer.agent.gpu import GpuInfo, detect_gpu, total_memory
from infer.errors import BadInput

OLLAMA_URL = "http://127.0.0.1:11434"
EXO_URL = "http://127.0.0.1:52415"
# The runtimes are on this machine: an answer takes milliseconds, a closed port less.
PROBE_TIMEOUT = httpx.Timeout(3.0, connect=1.0)

RuntimeName = Literal["ollama", "exo"]


@dataclass(frozen=True, slots=True)
class DetectedRuntime:
    """A runtime that answered: where, which version (if it says), and its models."""

    runtime: RuntimeName
    endpoint: str
    version: str | None
    models: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "endpoint": self.endpoint,
            "version": self.version,
            "models": list(self.models),
        }


@dataclass(frozen=True, slots=True)
class Host:
    """The machine itself."""

    hostname: str
    os: str
    arch: str
    cpu_count: int | None
    memory_bytes: int | None

    @classmethod
    def current(cls) -> Host:
        return cls(
            hostname=socket.gethostname(),
            os=platform.system().lower(),
            arch=platform.machine(),
            cpu_count=os.cpu_count(),
            memory_bytes=total_memory(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "os": self.os,
            "arch": self.arch,
            "cpu_count": self.cpu_count,
            "memory_bytes": self.memory_bytes,
        }


@dataclass(frozen=True, slots=True)
class Detection:
    """Everything `infer node detect` found, and where it looked."""

    runtimes: tuple[DetectedRuntime, ...]
    gpu: GpuInfo
    host: Host
    probed: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "runtimes": [r.to_json() for r in self.runtimes],
            "gpu": self.gpu.to_json(),
            "host": self.host.to_json(),
        }


def base_url(url: str, *, option: str, example: str = OLLAMA_URL) -> str:
    """A runtime's base URL without a trailing slash; only http(s) with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"{option} must be an http(s) URL, such as {example}", param=option)
    return url.strip().rstrip("/")


def _get_json(http: httpx.Client, url: str) -> Any:
    """The JSON body of a 2xx answer; None for anything else (refused, 404, not JSON)."""
    try:
        response = http.get(url)
    except httpx.HTTPError:
        return None
    if not response.is_success:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _names(items: object, key: str) -> tuple[str, ...]:
    """The distinct, sorted string values of `key` in a list of objects."""
    if not isinstance(items, list):
        return ()
    names = {
        item[key] for item in items if isinstance(item, dict) and isinstance(item.get(key), str)
    }
    return tuple(sorted(name for name in names if name))


def probe_ollama(http: httpx.Client, base: str) -> DetectedRuntime | None:
    """Ollama: GET /api/version {"version"}, then GET /api/tags {"models": [{"name"}]}."""
    version = _get_json(http, f"{base}/api/version")
    if not isinstance(version, dict) or not isinstance(version.get("version"), str):
        return None
    tags = _get_json(http, f"{base}/api/tags")
    models = _names(tags.get("models"), "name") if isinstance(tags, dict) else ()
    return DetectedRuntime("ollama", base, version["version"], models)


def probe_exo(http: httpx.Client, base: str) -> DetectedRuntime | None:
    """Exo: GET /v1/models (or /models) {"data": [{"id"}]}; else GET /healthcheck."""
    for path in ("/v1/models", "/models"):
        listing = _get_json(http, f"{base}{path}")
        if isinstance(listing, dict) and isinstance(listing.get("data"), list):
            return DetectedRuntime("exo", base, None, _names(listing["data"], "id"))
    if _get_json(http, f"{base}/healthcheck") is not None:
        return DetectedRuntime("exo", base, None, ())
    return None


def detect(
    *,
    ollama_url: str = OLLAMA_URL,
    exo_url: str = EXO_URL,
    gpu: Callable[[], GpuInfo] = detect_gpu,
    host: Callable[[], Host] = Host.current,
) -> Detection:
    """Probes both runtimes, the GPU and the host; never fails for a missing runtime."""
    ollama = base_url(ollama_url, option="--ollama-url")
    exo = base_url(exo_url, option="--exo-url")
    # Loopback probes: ignore HTTP(S)_PROXY, which would send them elsewhere.
    with httpx.Client(timeout=PROBE_TIMEOUT, trust_env=False, follow_redirects=False) as http:
        found = (probe_ollama(http, ollama), probe_exo(http, exo))
    runtimes = tuple(runtime for runtime in found if runtime is not None)
    return Detection(runtimes=runtimes, gpu=gpu(), host=host(), probed=(ollama, exo))
