"""Reading model details out of runtime answers, where whatever is implausible is dropped.

A runtime is not trusted: a detail that is not a short label of plain characters, a
context length out of range, or a capability not in CAPABILITIES is left unknown rather
than stored, and a malformed document says nothing rather than failing the check.
"""

from __future__ import annotations

import re
from typing import Any

from infer.nodes.clients.base import ModelDetails

CAPABILITIES = ("completion", "tools", "vision", "embedding", "thinking")
MAX_CONTEXT_LENGTH = 100_000_000
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def label(value: object, *, max_length: int) -> str | None:
    """A short plain label (a family, a size like "8.0B", a quantization like "Q4_K_M")."""
    if isinstance(value, str) and len(value) <= max_length and _LABEL.fullmatch(value):
        return value
    return None


def context_length(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_CONTEXT_LENGTH:
        return value
    return None


def capabilities(value: object) -> tuple[str, ...]:
    """The known capabilities listed, in CAPABILITIES' order; others are ignored."""
    if not isinstance(value, list):
        return ()
    return tuple(c for c in CAPABILITIES if c in value)


def ollama_show(document: object) -> ModelDetails | None:
    """Details from an Ollama /api/show answer: `details`, `model_info`, `capabilities`."""
    if not isinstance(document, dict):
        return None
    details = _object(document.get("details"))
    info = _object(document.get("model_info"))
    architecture = info.get("general.architecture")
    length = None
    if isinstance(architecture, str) and label(architecture, max_length=64):
        length = context_length(info.get(f"{architecture}.context_length"))
    return ModelDetails(
        context_length=length,
        parameter_size=label(details.get("parameter_size"), max_length=32),
        quantization=label(details.get("quantization_level"), max_length=32),
        family=label(details.get("family"), max_length=64),
        capabilities=capabilities(document.get("capabilities")),
    )


def openai_models(document: object) -> dict[str, ModelDetails]:
    """Context lengths from an OpenAI-style /v1/models list (vLLM's `max_model_len`,
    others' `context_length`); models it says nothing of are left out."""
    data = _object(document).get("data")
    found: dict[str, ModelDetails] = {}
    for item in data if isinstance(data, list) else ():
        entry = _object(item)
        name = entry.get("id")
        length = context_length(entry.get("max_model_len")) or context_length(
            entry.get("context_length")
        )
        if isinstance(name, str) and length is not None:
            found.setdefault(name, ModelDetails(context_length=length))
    return found


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
