"""The Ollama simulator, served on loopback and called over real HTTP."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from infer.simulator import SimulatorConfig, count_prompt_tokens, serve_simulator_in_thread

CONTENTS = ["You are terse.", "Why is the sky blue?"]
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": CONTENTS[0]},
    {"role": "user", "content": CONTENTS[1]},
]
CHAT = {"model": "llama3.2:1b", "messages": MESSAGES}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    config = SimulatorConfig(models=("llama3.2:1b", "qwen2.5"))
    with serve_simulator_in_thread(config) as base_url:
        yield base_url


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client


@pytest.fixture
def sdk(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="ollama", max_retries=0) as client:
        yield client


def ndjson(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


def chat(http: httpx.Client, **options: Any) -> dict[str, Any]:
    response = http.post("/api/chat", json=CHAT | {"stream": False, "options": options})
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def test_health_endpoints_answer_like_ollama(http: httpx.Client) -> None:
    assert http.get("/").text == "Ollama is running"
    assert http.head("/").status_code == 200
    assert http.get("/api/version").json()["version"].count(".") == 2


def test_tags_list_models_with_default_tag_and_details(http: httpx.Client) -> None:
    models = http.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["llama3.2:1b", "qwen2.5:latest"]
    assert models[0]["model"] == "llama3.2:1b"
    assert len(models[0]["digest"]) == 64
    assert models[0]["size"] > 0
    assert models[0]["details"]["format"] == "gguf"
    assert models[0]["details"]["family"] == "llama"
    assert models[0]["details"]["parameter_size"] == "1B"


def test_ps_lists_a_model_once_used(http: httpx.Client) -> None:
    chat(http, seed=1)
    loaded = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
    assert loaded["llama3.2:1b"]["expires_at"].endswith("Z")
    assert loaded["llama3.2:1b"]["size_vram"] > 0


def test_show_describes_a_model(http: httpx.Client) -> None:
    assert http.post("/api/show", json={"model": "qwen2.5"}).json()["details"]["family"] == "qwen"


def test_show_of_an_unknown_model_is_404(http: httpx.Client) -> None:
    missing = http.post("/api/show", json={"model": "nope"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'nope' not found"}


def test_chat_streams_ndjson_and_counts_the_pieces(http: httpx.Client) -> None:
    *pieces, final = ndjson(http, "/api/chat", CHAT)
    assert {(p["done"], p["message"]["role"]) for p in pieces} == {(False, "assistant")}
    assert all(p["message"]["content"] for p in pieces)
    assert 16 <= len(pieces) <= 64
    assert final["message"] == {"role": "assistant", "content": ""}
    assert (final["done"], final["done_reason"]) == (True, "stop")
    assert final["eval_count"] == len(pieces)
    assert final["prompt_eval_count"] == count_prompt_tokens(CONTENTS)
    assert final["created_at"].endswith("Z")
    durations = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
    assert all(isinstance(final[key], int) for key in durations)
    assert all(final[key] > 0 for key in durations)


def test_non_streamed_chat_matches_the_stream_for_the_same_seed(http: httpx.Client) -> None:
    *pieces, final = ndjson(http, "/api/chat", CHAT | {"options": {"seed": 42}})
    whole = chat(http, seed=42)
    assert whole["message"]["content"] == "".join(p["message"]["content"] for p in pieces)
    assert whole["eval_count"] == final["eval_count"]
    assert whole["done"] is True


def test_num_predict_limits_tokens_and_reports_length(http: httpx.Client) -> None:
    lines = ndjson(http, "/api/chat", CHAT | {"options": {"num_predict": 5}})
    assert len(lines) == 6
    assert (lines[-1]["eval_count"], lines[-1]["done_reason"]) == (5, "length")


def test_seed_makes_output_deterministic(http: httpx.Client) -> None:
    first, again, other = chat(http, seed=7), chat(http, seed=7), chat(http, seed=8)
    assert first["message"]["content"] == again["message"]["content"]
    assert first["message"]["content"] != other["message"]["content"]


def test_unknown_model_is_404_with_ollamas_message(http: httpx.Client) -> None:
    response = http.post("/api/chat", json=CHAT | {"model": "mystery:7b"})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'mystery:7b' not found"}


def test_missing_model_is_400(http: httpx.Client) -> None:
    response = http.post("/api/chat", json={"messages": MESSAGES})
    assert response.status_code == 400
    assert response.json() == {"error": "model is required"}


def test_empty_messages_load_the_model(http: httpx.Client) -> None:
    body = http.post("/api/chat", json=CHAT | {"messages": []}).json()
    assert (body["done"], body["done_reason"]) == (True, "load")


def test_generate_streams_response_pieces(http: httpx.Client) -> None:
    *pieces, final = ndjson(http, "/api/generate", {"model": "qwen2.5", "prompt": "Hello there"})
    assert all(p["response"] for p in pieces)
    assert final["eval_count"] == len(pieces)
    assert final["prompt_eval_count"] == count_prompt_tokens(["Hello there"])


def test_openai_models_list_the_served_models(sdk: openai.OpenAI) -> None:
    models = sdk.models.list().data
    assert [m.id for m in models] == ["llama3.2:1b", "qwen2.5:latest"]
    assert {m.owned_by for m in models} == {"library"}


def test_openai_stream_with_usage_counts_content_chunks(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="llama3.2:1b",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {(c.object, c.id.startswith("chatcmpl-")) for c in chunks} == {
        ("chat.completion.chunk", True)
    }
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes == [None] * (len(finishes) - 1) + ["stop"]
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert usage.completion_tokens == len(content)
    assert usage.prompt_tokens == count_prompt_tokens(CONTENTS)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_and_ollama_agree_for_the_same_seed(http: httpx.Client, sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model="llama3.2:1b", messages=MESSAGES, seed=11)
    native = chat(http, seed=11)
    assert completion.choices[0].message.content == native["message"]["content"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == native["prompt_eval_count"]
    assert completion.usage.completion_tokens == native["eval_count"]


def test_openai_max_tokens_ends_with_length(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model="llama3.2:1b", messages=MESSAGES, max_tokens=7)
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7


def test_openai_max_completion_tokens_wins_over_max_tokens(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="llama3.2:1b", messages=MESSAGES, max_completion_tokens=3, max_tokens=50
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_openai_unknown_model_is_404_in_openai_form(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="nope", messages=MESSAGES)
    assert caught.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }


def test_openai_sse_framing_ends_with_done(http: httpx.Client) -> None:
    body = CHAT | {"stream": True, "max_tokens": 4}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = response.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert len(events[:-2]) == 5  # four tokens, then the finish chunk
    assert all(event.startswith("data: {") for event in events[:-2])


def test_tokens_per_second_paces_the_stream() -> None:
    config = SimulatorConfig(tokens_per_second=50, ttft_ms=200)
    body = CHAT | {"options": {"num_predict": 11}}
    with serve_simulator_in_thread(config) as url, httpx.Client(base_url=url) as http:
        began = time.perf_counter()
        with http.stream("POST", "/api/chat", json=body) as response:
            lines = response.iter_lines()
            next(lines)
            first = time.perf_counter() - began
            rest = [line for line in lines if line]
        total = time.perf_counter() - began
    assert len(rest) == 11  # ten more pieces, then the final object
    assert first >= 0.5 * 0.2
    assert total >= 0.5 * (0.2 + 10 / 50)


def test_error_rate_one_answers_500_on_both_apis() -> None:
    with (
        serve_simulator_in_thread(SimulatorConfig(error_rate=1)) as url,
        httpx.Client(base_url=url) as http,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as sdk,
    ):
        response = http.post("/api/chat", json=CHAT)
        assert response.status_code == 500
        assert "error" in response.json()
        assert http.get("/api/tags").status_code == 200
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(model="llama3.2:1b", messages=MESSAGES)


def test_hang_never_answers_chat_but_answers_health() -> None:
    with (
        serve_simulator_in_thread(SimulatorConfig(hang=True)) as url,
        httpx.Client(base_url=url, timeout=0.5) as http,
    ):
        with pytest.raises(httpx.ReadTimeout):
            http.post("/api/chat", json=CHAT)
        assert http.get("/api/version").status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=CHAT)


def read_lines(http: httpx.Client, path: str, body: dict[str, Any], into: list[str]) -> None:
    with http.stream("POST", path, json=body) as response:
        into.extend(line for line in response.iter_lines() if line)


def test_drop_breaks_the_stream_after_n_tokens() -> None:
    received: list[str] = []
    with (
        serve_simulator_in_thread(SimulatorConfig(drop_after_tokens=3)) as url,
        httpx.Client(base_url=url) as http,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            read_lines(http, "/api/chat", CHAT, received)
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/api/chat", json=CHAT | {"stream": False})
        with pytest.raises(httpx.RemoteProtocolError):
            read_lines(http, "/v1/chat/completions", CHAT | {"stream": True}, [])
    assert len(received) == 3
    assert not any(json.loads(line)["done"] for line in received)


def test_an_answer_shorter_than_the_drop_point_completes() -> None:
    body = CHAT | {"stream": False, "options": {"num_predict": 3}}
    with serve_simulator_in_thread(SimulatorConfig(drop_after_tokens=3)) as url:
        response = httpx.post(f"{url}/api/chat", json=body)
    assert response.json()["eval_count"] == 3


def test_served_on_a_given_port_and_closed_after() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with serve_simulator_in_thread(port=port) as url:
        assert url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/api/version").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/api/version")


def test_unknown_paths_and_methods_answer_like_ollamas_router(http: httpx.Client) -> None:
    assert http.get("/api/nothing").text == "404 page not found"
    assert http.get("/api/chat").status_code == 405


def test_prompt_tokens_count_words_punctuation_and_messages() -> None:
    assert count_prompt_tokens(["Why is the sky blue?"]) == 4 + 5 + 1
    assert count_prompt_tokens(["", "a, b"]) == 4 + 4 + 3


@pytest.mark.parametrize(
    "bad",
    [
        {"models": ()},
        {"error_rate": 1.5},
        {"tokens_per_second": -1},
        {"drop_after_tokens": -1},
        {"length_range": (5, 2)},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(**bad)
