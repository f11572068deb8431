"""The one small interface every runtime client speaks, and the values it trades in."""

from __future__ import annotations

import abc
import contextlib
import json
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


# What a request may need of a model beyond plain text chat (see ChatRequest.needs).
NEEDS = frozenset({"tools", "vision", "json_schema", "json_object", "logprobs"})
NO_NEEDS: frozenset[str] = frozenset()
# Prompt tokens of one image: vision encoders take a few hundred (LLaVA 576) to 16,384
# (Qwen2.5-VL at its default largest size); the bound keeps the hold above any of them.
IMAGE_TOKENS_BOUND = 16384
IMAGE_TOKENS_TYPICAL = 1024


@dataclass(frozen=True)
class Image:
    """An image from a data URL, checked: its media type and its base64 text."""

    media_type: str
    data: str
    detail: str | None = None

    @property
    def url(self) -> str:
        return f"data:{self.media_type};base64,{self.data}"


@dataclass(frozen=True)
class ToolCall:
    """A function call an assistant made: its id, the function, the arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    """One message; `parts` keeps text and images in order when the message has images."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    parts: tuple[str | Image, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @property
    def images(self) -> tuple[Image, ...]:
        return tuple(part for part in self.parts if isinstance(part, Image))


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is a JSON schema object."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(frozen=True)
class ResponseFormat:
    """OpenAI's response_format: json_object, or json_schema with its schema."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


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
    tools: tuple[Tool, ...] = ()
    # "none", "auto" or "required"; `forced_tool` names the function it must call.
    tool_choice: str | None = None
    forced_tool: str | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # Other OpenAI fields the runtime may understand, passed through where it does.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def needs(self) -> frozenset[str]:
        """What a node's model must offer to serve this request (a subset of NEEDS)."""
        vision = any(m.parts for m in self.messages) and any(m.images for m in self.messages)
        if not (self.tools or self.response_format or self.logprobs or vision):
            return NO_NEEDS  # plain text chat: the common case, kept cheap
        needs: set[str] = set()
        if self.tools:
            needs.add("tools")
        if self.response_format is not None:
            needs.add(self.response_format.type)
        if self.logprobs:
            needs.add("logprobs")
        if vision:
            needs.add("vision")
        return frozenset(needs)

    def prompt_texts(self) -> list[str]:
        """Everything the model reads as text: contents, tool calls and tool definitions.

        Images are not text; `images` counts them for the prompt's bounds.
        """
        texts = [m.content for m in self.messages]
        for message in self.messages:
            if message.tool_calls:
                texts += (call.name + call.arguments for call in message.tool_calls)
        texts += (tool_text(tool) for tool in self.tools)
        if self.response_format is not None and self.response_format.schema is not None:
            texts.append(json.dumps(self.response_format.schema))
        return texts

    @property
    def images(self) -> int:
        return sum(len(m.images) for m in self.messages if m.parts)

    def image_tokens(self) -> tuple[int, int]:
        """The prompt tokens the images may take at most, and typically."""
        images = self.images
        return images * IMAGE_TOKENS_BOUND, images * IMAGE_TOKENS_TYPICAL


def tool_text(tool: Tool) -> str:
    """A tool's definition as the model reads it (about: chat templates render the JSON)."""
    return json.dumps(
        {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    )


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


class ToolCallDelta(NamedTuple):
    """A piece of a tool call: the first for an index has its id and name, later ones
    only more of the arguments' JSON text (OpenAI's streaming shape)."""

    position: int  # OpenAI's `index` (a tuple's own `index` is a method)
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class ChatChunk(NamedTuple):
    """One piece of a streamed answer: text, and at the end a finish reason and usage.

    `usage` is the runtime's own figure when it reports one (None when it does not);
    the gateway clamps and falls back as documented. A named tuple, as one is made per
    token: a frozen dataclass costs several times more to build.
    """

    content: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    # OpenAI's logprobs `content` entries for this piece, as the runtime sent them.
    logprobs: tuple[Any, ...] | None = None


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
