"""What a node's model can do, as routing reads it, and what a request needs of it.

A model's capabilities come from, first, what its operator declared; else what the
runtime said (Ollama's /api/show `capabilities`); else nothing is known and the model is
taken to do plain text completion only. An Ollama model that completes text can also
answer in JSON (`json_object`) and to a schema (`json_schema`): Ollama's `format` does
that for any model. `logprobs` is never assumed: only a declaration gives it. A model
that completes text on Ollama or an OpenAI-compatible server also takes legacy text
completions (`text_completion`: /api/generate, /v1/completions); Exo has none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infer.models import Runtime

# The names routing knows, in the order errors and documents list them.
CAPABILITIES = (
    "completion",
    "tools",
    "vision",
    "json_object",
    "json_schema",
    "logprobs",
    "embedding",
    "text_completion",
)
# What an operator may declare: the others follow from these.
DECLARABLE = CAPABILITIES[:-1]
COMPLETION = frozenset({"completion"})
EMBEDDING = frozenset({"embedding"})
_OLLAMA_FORMATS = frozenset({"json_object", "json_schema"})
_TEXT = frozenset({"text_completion"})
_TEXT_RUNTIMES = frozenset({Runtime.OLLAMA, Runtime.OPENAI})


@dataclass(frozen=True)
class Shortfall:
    """Why no node can serve a request, as OpenAI's error names it: the param and why."""

    param: str
    feature: str


# The request parameter a buyer changes when no node has a capability, and its words.
_SHORTFALLS = {
    "completion": Shortfall("model", "text or chat completions"),
    "embedding": Shortfall("model", "embeddings"),
    "tools": Shortfall("tools", "tools"),
    "vision": Shortfall("messages", "images (vision)"),
    "json_object": Shortfall("response_format", "response_format json_object"),
    "json_schema": Shortfall("response_format", "response_format json_schema"),
    "logprobs": Shortfall("logprobs", "logprobs"),
    "text_completion": Shortfall("model", "legacy text completions"),
}


def parse(text: str | None) -> frozenset[str]:
    """A stored comma-separated list as a set of known names (others are dropped)."""
    if not text:
        return frozenset()
    return frozenset(name for name in text.split(",") if name in _SHORTFALLS)


def effective(runtime: Runtime, *, detected: str | None, declared: str | None) -> frozenset[str]:
    """What routing assumes the model can do (see the module's docstring)."""
    found = parse(detected) if declared is None else parse(declared)
    if not found and declared is None:
        found = COMPLETION
    if "completion" in found:
        if runtime == Runtime.OLLAMA:
            found |= _OLLAMA_FORMATS
        if runtime in _TEXT_RUNTIMES:
            found |= _TEXT
    return found


def check_declared(names: Iterable[str]) -> str:
    """Declared names as stored (in CAPABILITIES' order); ValueError for a name not in
    DECLARABLE or none at all."""
    wanted = set(names)
    for name in sorted(wanted):
        if name not in DECLARABLE:
            raise ValueError(f"unknown capability {name!r}; known: {', '.join(DECLARABLE)}")
    if not wanted:
        raise ValueError("declare at least one capability (null clears the declaration)")
    return ",".join(name for name in DECLARABLE if name in wanted)


def shortfall(needs: frozenset[str], offered: Iterable[frozenset[str]]) -> Shortfall | None:
    """The first need no single candidate offers alongside the others (None: some can)."""
    offers = list(offered)
    for name in CAPABILITIES:
        if name in needs and not any(name in offer for offer in offers):
            return _SHORTFALLS[name]
    if not offers or any(needs <= offer for offer in offers):
        return None
    # Each need is offered somewhere, but never all of them by one node: name those
    # that not every node offers.
    everywhere = frozenset.intersection(*offers)
    apart = [name for name in CAPABILITIES if name in needs - everywhere]
    together = " and ".join(_SHORTFALLS[name].feature for name in apart)
    return Shortfall(_SHORTFALLS[apart[0]].param, f"{together} together")


def chat_needs(request_needs: frozenset[str]) -> frozenset[str]:
    """A chat request needs a model that completes text, plus whatever it asked for."""
    return COMPLETION | request_needs if request_needs else COMPLETION
