"""Detection against real loopback servers speaking each runtime's wire format."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from infer.agent.detect import Detection, Host, detect
from infer.agent.gpu import GpuInfo
from infer.agent.register import RegistrationOptions, build_registration
from infer.errors import BadInput
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

CPU = GpuInfo(vendor="cpu", memory_bytes=1 << 34, cpu_count=8)
HOST = Host("box", "linux", "x86_64", 8, 1 << 34)
QUICK = httpx.Timeout(0.5, connect=0.5)


def answer(body: Any) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return JSONResponse(body)

    return endpoint


def app(routes: dict[str, Any]) -> Starlette:
    return Starlette(routes=[Route(path, answer(body)) for path, body in routes.items()])


LLAMACPP = app(
    {
        "/health": {"status": "ok"},
        "/v1/models": {
            "object": "list",
            "data": [
                {
                    "id": "qwen2.5-7b-instruct-q4_k_m.gguf",
                    "object": "model",
                    "created": 1735142223,
                    "owned_by": "llamacpp",
                    "meta": {"n_vocab": 152064, "n_ctx_train": 32768, "n_params": 7615616512},
                }
            ],
        },
        "/props": {
            "default_generation_settings": {"n_ctx": 8192, "temperature": 0.8},
            "total_slots": 1,
            "build_info": "b4500-1a2b3c4d",
        },
    }
)
VLLM = app(
    {
        "/version": {"version": "0.8.5"},
        "/v1/models": {
            "object": "list",
            "data": [
                {
                    "id": "Qwen/Qwen2.5-7B-Instruct",
                    "object": "model",
                    "created": 1735142223,
                    "owned_by": "vllm",
                    "root": "Qwen/Qwen2.5-7B-Instruct",
                    "parent": None,
                    "max_model_len": 32768,
                    "permission": [],
                }
            ],
        },
    }
)
LMSTUDIO = app(
    {
        "/v1/models": {
            "object": "list",
            "data": [
                {
                    "id": "meta-llama-3.1-8b-instruct",
                    "object": "model",
                    "owned_by": "organization_owner",
                }
            ],
        },
        "/api/v0/models": {
            "object": "list",
            "data": [
                {
                    "id": "meta-llama-3.1-8b-instruct",
                    "object": "model",
                    "type": "llm",
                    "publisher": "lmstudio-community",
                    "arch": "llama",
                    "compatibility_type": "gguf",
                    "quantization": "Q4_K_M",
                    "state": "loaded",
                    "max_context_length": 131072,
                },
                {"id": "text-embedding-nomic", "type": "embeddings", "state": "not-loaded"},
            ],
        },
    }
)


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel does) but never answers a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def look(**urls: str) -> Detection:
    places = {"ollama_url", "exo_url", "llamacpp_url", "vllm_url", "lmstudio_url"}
    everywhere = {place: unused_url() for place in places} | urls
    return detect(gpu=lambda: CPU, host=lambda: HOST, timeout=QUICK, **everywhere)


def test_llamacpp_is_found_with_its_context_and_build() -> None:
    with serve_in_thread(LLAMACPP) as url:
        found = look(llamacpp_url=url)
    [runtime] = found.runtimes
    assert runtime.to_json() == {
        "runtime": "openai",
        "server": "llama.cpp",
        "endpoint": url,
        "version": "b4500-1a2b3c4d",
        "models": ["qwen2.5-7b-instruct-q4_k_m.gguf"],
        "context_length": {"qwen2.5-7b-instruct-q4_k_m.gguf": 8192},
    }
    assert found.notes == ()


def test_vllm_is_found_by_its_wire_format_even_on_llamacpps_port() -> None:
    with serve_in_thread(VLLM) as url:
        found = look(llamacpp_url=url)
    [runtime] = found.runtimes
    assert (runtime.runtime, runtime.kind, runtime.version) == ("openai", "vllm", "0.8.5")
    assert runtime.context_lengths == (("Qwen/Qwen2.5-7B-Instruct", 32768),)


def test_lmstudio_lists_its_models_with_their_context_length() -> None:
    with serve_in_thread(LMSTUDIO) as url:
        [runtime] = look(lmstudio_url=url).runtimes
    assert (runtime.runtime, runtime.kind) == ("openai", "lmstudio")
    assert runtime.models == ("meta-llama-3.1-8b-instruct",)
    assert dict(runtime.context_lengths) == {"meta-llama-3.1-8b-instruct": 131072}


def test_ollama_models_come_with_their_context_length() -> None:
    config = SimulatorConfig(models=("llama3.2:1b", "qwen2.5:7b"))
    with serve_simulator_in_thread(config) as url:
        [runtime] = look(ollama_url=url).runtimes
    assert (runtime.runtime, runtime.version) == ("ollama", "0.12.0")
    assert dict(runtime.context_lengths) == {"llama3.2:1b": 8192, "qwen2.5:7b": 8192}


def test_a_plain_openai_server_is_registered_as_openai_under_its_kind() -> None:
    plain = app({"/v1/models": {"object": "list", "data": [{"id": "m", "object": "model"}]}})
    with serve_in_thread(plain) as url:
        found = look(vllm_url=url)
        registration = build_registration(found, RegistrationOptions())
    assert (registration.runtime, registration.server, registration.name) == (
        "openai",
        "openai",
        "box-openai",
    )
    assert registration.variables()["input"]["runtime"] == "OPENAI"


def test_garbage_and_silence_are_skipped_with_a_note_not_a_traceback() -> None:
    html = Starlette(routes=[Route("/{any:path}", lambda r: PlainTextResponse("<html>it works"))])
    wrong_types = app({"/api/version": {"version": 12}, "/v1/models": {"data": "many"}})
    with (
        serve_in_thread(html) as web,
        serve_in_thread(wrong_types) as weird,
        silent_server() as silent,
        serve_in_thread(VLLM) as vllm,
    ):
        started = time.monotonic()
        found = look(llamacpp_url=web, lmstudio_url=weird, exo_url=silent, vllm_url=vllm)
        took = time.monotonic() - started
    assert [r.kind for r in found.runtimes] == ["vllm"]
    assert sorted(found.notes) == sorted(
        [
            f"{web} answered, but not as Ollama, Exo or an OpenAI-style server",
            f"{weird} answered, but not as Ollama, Exo or an OpenAI-style server",
            f"{silent} did not answer /api/version in time; skipped",
        ]
    )
    assert took < 5  # the places are probed at once; a silent one costs one timeout


def test_two_runtimes_need_a_choice_and_the_choice_picks_by_server() -> None:
    with serve_in_thread(VLLM) as vllm, serve_in_thread(LLAMACPP) as llamacpp:
        found = look(vllm_url=vllm, llamacpp_url=llamacpp)
    with pytest.raises(BadInput, match=r"found .* pick one with --runtime"):
        build_registration(found, RegistrationOptions())
    chosen = build_registration(found, RegistrationOptions.parse(runtime="llama.cpp"))
    assert (chosen.endpoint, chosen.name) == (llamacpp, "box-llamacpp")


def test_a_model_list_of_odd_shapes_or_endless_nesting_is_skipped_not_a_traceback() -> None:
    # owned_by as a list (unhashable) once stopped `infer node detect` with a TypeError;
    # a body of nested brackets, with a RecursionError from the JSON decoder.
    odd_owner = app({"/v1/models": {"data": [{"id": "m", "owned_by": ["vllm"]}]}})
    brackets = Response("[" * 100_000, media_type="application/json")
    deep = Starlette(routes=[Route("/{any:path}", lambda r: brackets)])
    with serve_in_thread(odd_owner) as odd, serve_in_thread(deep) as nested:
        found = look(vllm_url=odd, llamacpp_url=nested)
    assert [(r.kind, r.models) for r in found.runtimes] == [("openai", ("m",))]
    assert found.notes == (f"{nested} answered, but not as Ollama, Exo or an OpenAI-style server",)


@contextlib.contextmanager
def dripping_server() -> Iterator[str]:
    """Answers `200 OK`, then drips a header a byte at a time, each within the read timeout."""
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def drip(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not stop.wait(0.1):
                conn.sendall(b"a")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def test_a_server_dripping_its_headers_costs_one_budget_not_hours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("infer.agent.detect.PLACE_BUDGET", 1.5)
    with dripping_server() as drip, serve_in_thread(VLLM) as vllm:
        started = time.monotonic()
        found = look(ollama_url=drip, vllm_url=vllm)
        took = time.monotonic() - started
    assert [r.kind for r in found.runtimes] == ["vllm"]
    assert found.notes == (f"{drip} did not answer /api/version in time; skipped",)
    assert took < 5  # each byte came within the 0.5 s read timeout; the drip never ends
