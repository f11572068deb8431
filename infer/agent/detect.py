"""Probe this machine: which LLM runtimes answer where, their models, the GPU and the host.

Each place is asked in the runtimes' own wire formats, so a server is known by what it
says, not by its port: Ollama (`/api/version`), then the OpenAI-style `/v1/models`,
told apart by its owner field and the server's own routes (vLLM's `/version` and
`max_model_len`, llama.cpp's `/props`, LM Studio's `/api/v0/models`, Exo's
`/healthcheck`). The port only breaks a tie between Exo and a plain OpenAI server.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpcore
import httpx

from infer.agent.gpu import GpuInfo, detect_gpu, total_memory
from infer.errors import BadInput

OLLAMA_URL = "http://127.0.0.1:11434"
EXO_URL = "http://127.0.0.1:52415"
LLAMACPP_URL = "http://127.0.0.1:8080"
VLLM_URL = "http://127.0.0.1:8000"
LMSTUDIO_URL = "http://127.0.0.1:1234"
# The runtimes are on this machine: an answer takes milliseconds, a closed port less.
PROBE_TIMEOUT = httpx.Timeout(3.0, connect=1.0)
MAX_BODY = 4 * 1024 * 1024  # a model list is kilobytes; more is not a runtime talking
PLACE_BUDGET = 10.0  # seconds for all the requests to one place, even if it drips bytes
MAX_SHOWN = 16  # Ollama's context lengths cost a request per model: the first few only

RuntimeName = Literal["ollama", "exo", "openai"]
ServerKind = Literal["ollama", "exo", "llama.cpp", "vllm", "lmstudio", "openai"]
SERVER_NAMES: dict[ServerKind, str] = {
    "ollama": "Ollama",
    "exo": "Exo",
    "llama.cpp": "llama.cpp",
    "vllm": "vLLM",
    "lmstudio": "LM Studio",
    "openai": "an OpenAI-compatible server",
}


@dataclass(frozen=True, slots=True)
class DetectedRuntime:
    """A runtime that answered: how it is registered, which server it is, where, its models."""

    runtime: RuntimeName
    endpoint: str
    version: str | None
    models: tuple[str, ...]
    server: ServerKind | None = None
    context_lengths: tuple[tuple[str, int], ...] = ()

    @property
    def kind(self) -> ServerKind:
        return self.server or self.runtime

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "server": self.kind,
            "endpoint": self.endpoint,
            "version": self.version,
            "models": list(self.models),
            "context_length": dict(self.context_lengths),
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
    """Everything `infer node detect` found, where it looked, and what it skipped and why."""

    runtimes: tuple[DetectedRuntime, ...]
    gpu: GpuInfo
    host: Host
    probed: tuple[str, ...] = field(default=(), compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "runtimes": [r.to_json() for r in self.runtimes],
            "gpu": self.gpu.to_json(),
            "host": self.host.to_json(),
            "notes": list(self.notes),
        }


def base_url(url: str, *, option: str, example: str = OLLAMA_URL) -> str:
    """A runtime's base URL without a trailing slash; only http(s) with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"{option} must be an http(s) URL, such as {example}", param=option)
    return url.strip().rstrip("/")


class Skipped(Exception):
    """A place answered, but too slowly or not in any runtime's format; `str()` says how."""


@dataclass
class _Place:
    """One base URL being probed; remembers whether anything there spoke HTTP."""

    http: httpx.Client
    base: str
    answered: bool = False
    refused: bool = False
    deadline: float = field(default_factory=lambda: time.monotonic() + PLACE_BUDGET)

    def get(self, path: str) -> Any:
        return self._json("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._json("POST", path, body)

    def _json(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """The JSON of a 2xx answer; None for anything else (refused, 404, not JSON, huge)."""
        late = Skipped(f"{self.base} did not answer {path} in time; skipped")
        if time.monotonic() > self.deadline:
            raise late
        _probing.deadline = self.deadline
        try:
            with self.http.stream(method, f"{self.base}{path}", json=body) as response:
                self.answered = True
                if not response.is_success:
                    return None
                raw = bytearray()
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_BODY:
                        return None
                    if time.monotonic() > self.deadline:
                        raise late
        except httpx.TimeoutException as exc:
            raise late from exc
        except httpx.ConnectError:
            self.refused = not self.answered
            return None
        except httpx.HTTPError:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[…
            return None


_probing = threading.local()  # the deadline of the place this thread is probing


def _within_budget(timeout: float | None) -> float | None:
    """A socket operation's timeout, cut to what is left of its place's budget."""
    deadline: float | None = getattr(_probing, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the place's time is up")
    return left if timeout is None else min(timeout, left)


class _BudgetStream(httpcore.NetworkStream):
    """A socket whose every read and write ends by the place's deadline: a server that
    drips its headers a byte at a time cannot hold a probe for hours (h11 reads 16 KiB
    of headers, each byte within the read timeout)."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _within_budget(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _within_budget(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, _within_budget(timeout))
        return _BudgetStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _BudgetBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, _within_budget(timeout), local_address, socket_options
        )
        return _BudgetStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(path, _within_budget(timeout), socket_options)
        return _BudgetStream(stream)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _ProbeTransport(httpx.HTTPTransport):
    """httpx's transport over sockets that keep to the probing place's budget."""

    def __init__(self) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(network_backend=_BudgetBackend())


def _ids(listing: object) -> list[dict[str, Any]] | None:
    """The objects of an OpenAI-style list `{"data": [{"id": …}, …]}`; None if it is not one."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    return [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]


def _names(items: Sequence[object], key: str) -> tuple[str, ...]:
    """The distinct, sorted, non-empty string values of `key` in a list of objects."""
    names = {
        item[key] for item in items if isinstance(item, dict) and isinstance(item.get(key), str)
    }
    return tuple(sorted(name for name in names if name.strip()))


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _contexts(pairs: Sequence[tuple[object, object]]) -> tuple[tuple[str, int], ...]:
    found = {str(n): c for n, c in ((n, _positive(c)) for n, c in pairs) if c is not None}
    return tuple(sorted(found.items()))


def _version(value: object) -> str | None:
    return value.strip()[:100] if isinstance(value, str) and value.strip() else None


def _ollama(place: _Place, version: str) -> DetectedRuntime:
    tags = place.get("/api/tags")
    items = tags.get("models") if isinstance(tags, dict) else None
    models = _names(items, "name") if isinstance(items, list) else ()
    contexts: list[tuple[object, object]] = []
    for model in models[:MAX_SHOWN]:
        shown = place.post("/api/show", {"model": model})
        info = shown.get("model_info") if isinstance(shown, dict) else None
        if isinstance(info, dict):
            lengths = [v for k, v in info.items() if str(k).endswith(".context_length")]
            contexts.extend((model, length) for length in lengths[:1])
    return DetectedRuntime("ollama", place.base, version, models, "ollama", _contexts(contexts))


def _openai(place: _Place, items: list[dict[str, Any]], hint: ServerKind) -> DetectedRuntime:
    """Which OpenAI-style server sent this model list, with context lengths where it says."""
    models = _names(items, "id")
    owners = {owner for item in items if isinstance(owner := item.get("owned_by"), str)}
    if "vllm" in owners or any("max_model_len" in item for item in items):
        version = place.get("/version")
        contexts = _contexts([(item["id"], item.get("max_model_len")) for item in items])
        found = version.get("version") if isinstance(version, dict) else None
        return DetectedRuntime("openai", place.base, _version(found), models, "vllm", contexts)
    if "exo" in owners:
        return DetectedRuntime("exo", place.base, None, models, "exo")
    if "llamacpp" in owners:
        return _llamacpp(place, items, models)
    studio = _ids(place.get("/api/v0/models"))
    if studio is not None and any("max_context_length" in item for item in studio):
        contexts = _contexts([(item["id"], item.get("max_context_length")) for item in studio])
        return DetectedRuntime("openai", place.base, None, models, "lmstudio", contexts)
    if _llamacpp_props(place.get("/props")) is not None:
        return _llamacpp(place, items, models)
    if hint == "exo":  # an Exo too old to name itself as the owner
        return DetectedRuntime("exo", place.base, None, models, "exo")
    return DetectedRuntime("openai", place.base, None, models, "openai")


def _llamacpp_props(props: object) -> dict[str, Any] | None:
    """llama.cpp's /props: `default_generation_settings` (older) or `n_ctx` at the top."""
    if isinstance(props, dict) and (
        isinstance(props.get("default_generation_settings"), dict) or "n_ctx" in props
    ):
        return props
    return None


def _llamacpp(
    place: _Place, items: list[dict[str, Any]], models: tuple[str, ...]
) -> DetectedRuntime:
    props = _llamacpp_props(place.get("/props")) or {}
    settings = props.get("default_generation_settings")
    n_ctx = _positive(settings.get("n_ctx")) if isinstance(settings, dict) else None
    n_ctx = n_ctx or _positive(props.get("n_ctx"))
    pairs: list[tuple[object, object]] = []
    for item in items:
        meta = item.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        # The context the server runs with, else the one the model was trained for.
        pairs.append((item["id"], n_ctx or _positive(meta.get("n_ctx")) or meta.get("n_ctx_train")))
    version = _version(props.get("build_info"))
    return DetectedRuntime("openai", place.base, version, models, "llama.cpp", _contexts(pairs))


def identify(http: httpx.Client, base: str, hint: ServerKind) -> DetectedRuntime | None:
    """The runtime answering at `base`; None if nothing listens; Skipped if it is no runtime."""
    place = _Place(http, base)
    version = place.get("/api/version")
    if place.refused:
        return None
    if isinstance(version, dict) and _version(version.get("version")):
        return _ollama(place, str(_version(version["version"])))
    items = _ids(place.get("/v1/models"))
    if items is not None:
        return _openai(place, items, hint)
    exo = _ids(place.get("/models"))
    if exo is not None:
        return DetectedRuntime("exo", base, None, _names(exo, "id"), "exo")
    health = place.get("/health")
    props = _llamacpp_props(place.get("/props"))
    if props is not None or (isinstance(health, dict) and health.get("status") == "ok"):
        return _llamacpp(place, [], ())  # llama.cpp still loading its model, or no /v1
    if hint == "exo" and place.get("/healthcheck") is not None:
        return DetectedRuntime("exo", base, None, (), "exo")
    if place.answered:
        raise Skipped(f"{base} answered, but not as Ollama, Exo or an OpenAI-style server")
    return None


def default_places(
    *,
    ollama_url: str = OLLAMA_URL,
    exo_url: str = EXO_URL,
    llamacpp_url: str = LLAMACPP_URL,
    vllm_url: str = VLLM_URL,
    lmstudio_url: str = LMSTUDIO_URL,
) -> tuple[tuple[ServerKind, str], ...]:
    """Where to look, each with the runtime usually found there (checked by --*-url options)."""
    return (
        ("ollama", base_url(ollama_url, option="--ollama-url")),
        ("exo", base_url(exo_url, option="--exo-url")),
        ("llama.cpp", base_url(llamacpp_url, option="--llamacpp-url")),
        ("vllm", base_url(vllm_url, option="--vllm-url")),
        ("lmstudio", base_url(lmstudio_url, option="--lmstudio-url")),
    )


def detect(
    *,
    ollama_url: str = OLLAMA_URL,
    exo_url: str = EXO_URL,
    llamacpp_url: str = LLAMACPP_URL,
    vllm_url: str = VLLM_URL,
    lmstudio_url: str = LMSTUDIO_URL,
    gpu: Callable[[], GpuInfo] = detect_gpu,
    host: Callable[[], Host] = Host.current,
    timeout: httpx.Timeout = PROBE_TIMEOUT,
) -> Detection:
    """Probes every place at once, the GPU and the host; never fails for a missing runtime."""
    places = default_places(
        ollama_url=ollama_url,
        exo_url=exo_url,
        llamacpp_url=llamacpp_url,
        vllm_url=vllm_url,
        lmstudio_url=lmstudio_url,
    )
    unique = list(dict((url, hint) for hint, url in places).items())

    def probe(place: tuple[str, ServerKind]) -> DetectedRuntime | str | None:
        try:
            return identify(http, *place)
        except Skipped as exc:
            return str(exc)

    # Loopback probes: ignore HTTP(S)_PROXY, which would send them elsewhere.
    with (
        httpx.Client(
            timeout=timeout, transport=_ProbeTransport(), trust_env=False, follow_redirects=False
        ) as http,
        ThreadPoolExecutor(max_workers=len(unique)) as pool,
    ):
        results = list(pool.map(probe, unique))
    return Detection(
        runtimes=tuple(r for r in results if isinstance(r, DetectedRuntime)),
        gpu=gpu(),
        host=host(),
        probed=tuple(url for url, _ in unique),
        notes=tuple(r for r in results if isinstance(r, str)),
    )
