"""The one small interface every runtime client speaks, and the values it trades in."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from infer.models import Runtime
from infer.nodes.transport import NodeHTTP


@dataclass(frozen=True)
class ModelInfo:
    """A model a runtime offers; `loaded` when it is in memory now (Ollama's /api/ps)."""

    name: str
    loaded: bool = False


@dataclass(frozen=True)
class Probe:
    """What one health check learned: the runtime answers, and with which models."""

    latency_ms: float
    models: tuple[ModelInfo, ...]
    version: str | None = None


@dataclass(frozen=True)
class ModelDetails:
    """What a runtime says of one model, already checked (unknown or implausible is None)."""

    context_length: int | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    family: str | None = None
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """An OpenAI chat completion request, already validated, in the runtime-neutral form."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # Other OpenAI fields the runtime may understand, passed through where it does.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


class ChatChunk(NamedTuple):
    """One piece of a streamed answer: text, and at the end a finish reason and usage.

    `usage` is the runtime's own figure when it reports one (None when it does not);
    the gateway clamps and falls back as documented. A named tuple, as one is made per
    token: a frozen dataclass costs several times more to build.
    """

    content: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class Deadlines:
    """Seconds allowed to connect, to the first byte, between bytes, and in all."""

    connect: float = 5.0
    first_byte: float = 30.0
    idle: float = 30.0
    total: float = 600.0
    health: float = 5.0


class RuntimeClient(abc.ABC):
    """Talks to one node's runtime through the platform's guarded HTTP client."""

    runtime: Runtime

    def __init__(
        self,
        http: NodeHTTP,
        *,
        base_url: str,
        token: str | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.deadlines = deadlines or Deadlines()

    @abc.abstractmethod
    async def probe(self) -> Probe:
        """Check health and list models; raises UpstreamError (or a subclass) on failure."""

    async def describe(self, names: tuple[str, ...]) -> dict[str, ModelDetails]:
        """What the runtime says of these models (those it says nothing of are left out).

        Bounded like a health check; raises UpstreamError on failure. A runtime without
        such an API says nothing.
        """
        return {}

    @abc.abstractmethod
    def stream_batches(self, request: ChatRequest) -> AsyncGenerator[list[ChatChunk], None]:
        """Stream the answer in the groups of chunks that arrived together (never empty).

        The last chunk carries finish_reason (and usage if known). Raises UpstreamTimeout
        before the first chunk if the first-byte deadline passes, UpstreamError for any
        other failure (after the chunks that came before it); closing the iterator
        cancels the upstream. A relay that handles a group at once (one write to its
        own client) does less work per token the more tokens arrive together.
        """

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Stream the answer chunk by chunk (see `stream_batches`)."""
        async with contextlib.aclosing(self.stream_batches(request)) as batches:
            async for batch in batches:
                for chunk in batch:
                    yield chunk
