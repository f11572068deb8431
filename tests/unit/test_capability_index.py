"""Capabilities and context lengths in routing: what is assumed, and the filtered index."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from infer.errors import BadInput, NotFound
from infer.models import Runtime
from infer.routing import Candidate, MemoryRouterState, NodeCatalog, Router
from infer.routing.capabilities import COMPLETION, EMBEDDING, chat_needs, effective
from infer.routing.index import ModelIndex
from infer.routing.sample import SMALL

TOOLS = frozenset({"completion", "tools"})
TEXT = frozenset({"text_completion"})


def node(i: int, **changes: object) -> Candidate:
    candidate = Candidate(
        node_id=uuid.UUID(int=i + 1),
        operator_id=uuid.UUID(int=i + 1),
        name=f"n{i}",
        runtime=Runtime.OLLAMA,
        endpoint=f"http://n{i}.example:11434",
        token_ciphertext=None,
        token_key_version=None,
        model="m",
        input_price_per_million=1,
        output_price_per_million=2,
        capacity=4,
        health_latency_ms=100.0,
    )
    return replace(candidate, **changes)  # type: ignore[arg-type]


class _Catalog(NodeCatalog):
    def __init__(self, candidates: list[Candidate]) -> None:
        self._index = ModelIndex(candidates)

    async def index(self, model: str) -> ModelIndex | None:
        return self._index if model == "m" else None


def test_an_ollama_model_that_completes_can_answer_in_json() -> None:
    found = effective(Runtime.OLLAMA, detected="completion,tools", declared=None)
    assert found == {"completion", "tools", "json_object", "json_schema", "text_completion"}


def test_a_model_nothing_is_known_of_is_taken_to_complete_text_only() -> None:
    assert effective(Runtime.OPENAI, detected=None, declared=None) == COMPLETION | TEXT
    assert effective(Runtime.EXO, detected=None, declared=None) == COMPLETION


def test_a_declaration_wins_over_what_the_runtime_said() -> None:
    found = effective(Runtime.OPENAI, detected="completion", declared="completion,logprobs")
    assert found == {"completion", "logprobs", "text_completion"}
    assert effective(Runtime.OLLAMA, detected="completion", declared="embedding") == EMBEDDING


def test_an_embedding_model_does_not_chat() -> None:
    assert effective(Runtime.OLLAMA, detected="embedding", declared=None) == EMBEDDING


def test_the_index_itself_serves_when_every_node_can() -> None:
    index = ModelIndex([node(i, capabilities=TOOLS) for i in range(3)])
    assert index.able(chat_needs(frozenset({"tools"})), 100) is index


def test_only_nodes_with_every_need_and_room_for_the_tokens_are_kept() -> None:
    nodes = [
        node(0, capabilities=TOOLS, context_length=4096),
        node(1, capabilities=TOOLS, context_length=32768),
        node(2, capabilities=COMPLETION, context_length=None),
        node(3, capabilities=TOOLS, context_length=None),
    ]
    index = ModelIndex(nodes)
    assert [c.name for c in index.able(TOOLS, 5000).candidates] == ["n1", "n3"]
    assert [c.name for c in index.able(COMPLETION, 40000).candidates] == ["n2", "n3"]
    # Made once per catalog load: the same need and length class give the same sub-index.
    assert index.able(TOOLS, 5000) is index.able(TOOLS, 30000)


async def test_a_large_market_samples_only_capable_nodes() -> None:
    nodes = [node(i, capabilities=TOOLS if i % 10 == 0 else COMPLETION) for i in range(10 * SMALL)]
    router = Router(_Catalog(nodes), MemoryRouterState())
    for _ in range(20):
        attempts = await router.plan("m", needs=TOOLS)
        assert attempts
        assert all("tools" in c.capabilities for c in attempts)


async def test_no_node_with_tools_is_a_400_naming_tools() -> None:
    router = Router(_Catalog([node(0), node(1)]), MemoryRouterState())
    with pytest.raises(BadInput) as raised:
        await router.plan("m", needs=TOOLS)
    assert raised.value.param == "tools"
    assert raised.value.message == "no node serving 'm' supports tools"


async def test_needs_offered_only_apart_are_named_together() -> None:
    vision = frozenset({"completion", "vision"})
    router = Router(
        _Catalog([node(0, capabilities=TOOLS), node(1, capabilities=vision)]), MemoryRouterState()
    )
    with pytest.raises(BadInput) as raised:
        await router.plan("m", needs=TOOLS | vision)
    assert raised.value.param == "tools"
    assert "tools and images (vision) together" in raised.value.message


@pytest.mark.parametrize(
    ("prompt", "output", "param"), [(5000, 10, "messages"), (1000, 4000, "max_tokens")]
)
async def test_a_request_longer_than_every_context_names_what_to_shorten(
    prompt: int, output: int, param: str
) -> None:
    router = Router(_Catalog([node(0, context_length=4096)]), MemoryRouterState())
    with pytest.raises(BadInput) as raised:
        await router.plan("m", expected_prompt_tokens=prompt, expected_output_tokens=output)
    assert raised.value.param == param
    assert "4096 tokens" in raised.value.message


async def test_an_unknown_model_is_still_a_404() -> None:
    router = Router(_Catalog([node(0)]), MemoryRouterState())
    with pytest.raises(NotFound):
        await router.plan("other", needs=EMBEDDING)
