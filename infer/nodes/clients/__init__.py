"""Runtime clients, one module per runtime, and the registry that picks one for a node."""

from __future__ import annotations

from infer.errors import BadInput
from infer.models import Runtime
from infer.nodes.clients.base import Deadlines, RuntimeClient
from infer.nodes.clients.exo import ExoClient
from infer.nodes.clients.ollama import OllamaClient
from infer.nodes.clients.openai import OpenAICompatibleClient
from infer.nodes.transport import NodeHTTP

CLIENTS: dict[Runtime, type[RuntimeClient]] = {
    Runtime.OLLAMA: OllamaClient,
    Runtime.EXO: ExoClient,
    Runtime.OPENAI: OpenAICompatibleClient,
}


def client_for(
    runtime: Runtime | str,
    http: NodeHTTP,
    *,
    base_url: str,
    token: str | None = None,
    deadlines: Deadlines | None = None,
) -> RuntimeClient:
    """The client for a node's runtime; cheap to build, so build one per call or per node."""
    try:
        client_class = CLIENTS[Runtime(runtime)]
    except (ValueError, KeyError):
        raise BadInput(f"unknown runtime {runtime!r}", param="runtime") from None
    return client_class(http, base_url=base_url, token=token, deadlines=deadlines)


__all__ = [
    "CLIENTS",
    "ExoClient",
    "OllamaClient",
    "OpenAICompatibleClient",
    "RuntimeClient",
    "client_for",
]
