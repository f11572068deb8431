"""The OpenAI chat completion request body: validated, then turned into a ChatRequest."""

from __future__ import annotations

import asyncio
import functools
import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from infer.errors import BadInput, PayloadTooLarge
from infer.gateway import features
from infer.nodes.clients.base import ChatMessage, ChatRequest, Image, ToolCall
from infer.security.text import MAX_MODEL_NAME, MODEL_NAME_CHARACTERS, is_model_name

MAX_MESSAGES = 1024
MAX_STOP = 4
# Passed on to runtimes that understand them (typed below, so that a buyer's bad value is
# this request's 400, never a node's failure); anything else unknown is ignored.
PASSTHROUGH = ("top_k", "min_p", "repeat_penalty", "logit_bias")
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
ToolName = Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: Annotated[str, Field(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(BaseModel):
    """A text part or an image part (checked, with its size, by `features.image`)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "image_url"]
    text: Text | None = None
    image_url: ImageURL | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: ToolName
    arguments: Text


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Annotated[Text, Field(min_length=1, max_length=256)]
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text | list[ContentPart] | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=features.MAX_TOOLS)] | None = None
    tool_call_id: Annotated[Text, Field(min_length=1, max_length=256)] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: ToolName
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: ToolName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: ToolName
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    """The fields of OpenAI's request that INFER honours; unknown extras are ignored."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1, max_length=200)]
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    user: Text | None = None
    provider: dict[str, Any] | None = None
    top_k: Annotated[int, Field(ge=-1, le=1_000_000)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    tools: Annotated[list[ToolIn], Field(max_length=features.MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatIn | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not is_model_name(value):
            raise ValueError(
                f"a model name is 1 to {MAX_MODEL_NAME} characters: {MODEL_NAME_CHARACTERS}"
            )
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and any(not s for s in value):
            raise ValueError("stop sequences must not be empty")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_chat_request(self, *, max_tokens: int) -> ChatRequest:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        extra = {k: getattr(self, k) for k in PASSTHROUGH if getattr(self, k) is not None}
        plain = self.tools is None and self.response_format is None
        if plain and not self.logprobs and all(_plain(m) for m in self.messages):
            # The common case, kept as cheap as it was before tools and images.
            messages = tuple(ChatMessage(role=m.role, content=m.text()) for m in self.messages)
            return ChatRequest(
                model=self.model,
                messages=messages,
                max_tokens=max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                stop=stop,
                seed=self.seed,
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
                extra=extra,
            )
        choice = self.tool_choice
        return ChatRequest(
            model=self.model,
            messages=tuple(_message(m) for m in self.messages),
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            tools=features.tools(self.tools or []),
            tool_choice="required" if isinstance(choice, NamedToolChoice) else choice,
            forced_tool=choice.function.name if isinstance(choice, NamedToolChoice) else None,
            parallel_tool_calls=self.parallel_tool_calls,
            response_format=features.response_format(self.response_format),
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs if self.logprobs else None,
            extra=extra,
        )


def _plain(message: Message) -> bool:
    return (
        not isinstance(message.content, list)
        and message.tool_calls is None
        and message.tool_call_id is None
    )


def _message(message: Message) -> ChatMessage:
    parts: tuple[str | Image, ...] = ()
    if isinstance(message.content, list) and any(p.type == "image_url" for p in message.content):
        parts = tuple(
            features.decoded_image(p.image_url) if p.image_url is not None else (p.text or "")
            for p in message.content
        )
    calls = tuple(
        ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in message.tool_calls or ()
    )
    return ChatMessage(
        role=message.role,
        content=message.text(),
        parts=parts,
        tool_calls=calls,
        tool_call_id=message.tool_call_id,
    )


def _finite(value: object) -> bool:
    """Whether JSON can carry the value to every runtime: no NaN or Infinity anywhere inside
    it, and no integer beyond 64 bits (orjson, which measures tools and schemas, refuses those).
    """
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, BaseModel):  # tools and response_format: their fields, schemas in them
        return all(_finite(v) for v in value.__dict__.values())
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _first(errors: list[ErrorDetails]) -> ErrorDetails:
    """The first error; where a value matched no member of a union (a content string or
    a list of parts), the deepest of that value's errors, which names the bad part."""
    first = errors[0]
    loc = first["loc"]
    union = next((i for i, p in enumerate(loc) if isinstance(p, str) and "[" in p), None)
    if union is None:
        return first
    same = [e for e in errors if e["loc"][:union] == loc[:union]]
    return max(same, key=lambda e: len(e["loc"]))


def _location(loc: tuple[int | str, ...]) -> str | None:
    """A field's path as `messages.0.content`; a union's member names are left out."""
    kept = (str(p) for p in loc if isinstance(p, int) or not any(c in p for c in "[("))
    return ".".join(kept) or None


# A body this large may carry tool schemas to check or images to decode: tens to hundreds
# of milliseconds of work, done on a worker thread so that the event loop (every other
# request) does not wait for it.
OFF_LOOP_BYTES = 16 << 10


async def parse_large_body(
    raw: bytes, *, max_tokens_limit: int, max_text_bytes: int | None = None
) -> ChatCompletionBody:
    """`parse_body`, on a worker thread when the body is large."""
    parse = functools.partial(
        parse_body, raw, max_tokens_limit=max_tokens_limit, max_text_bytes=max_text_bytes
    )
    return parse() if len(raw) < OFF_LOOP_BYTES else await asyncio.to_thread(parse)


def parse_body(
    raw: bytes, *, max_tokens_limit: int, max_text_bytes: int | None = None
) -> ChatCompletionBody:
    """Validate the JSON body; a BadInput names the first offending field.

    `max_tokens_limit` bounds the answer, and so the hold: a request may not ask for more.
    `max_text_bytes` bounds the body with its images' data left out (images have their
    own caps), so that a body allowed to be larger for images is not larger text.
    """
    try:
        body = ChatCompletionBody.model_validate_json(raw)
    except ValidationError as exc:
        error = _first(exc.errors())
        location = _location(error["loc"])
        if error["type"] == "json_invalid":
            raise BadInput("the request body is not valid JSON") from exc
        if location is None:
            raise BadInput("the request body must be a JSON object") from exc
        if error["type"] == "missing":
            raise BadInput(f"missing required parameter: {location}", param=location) from exc
        message = str(error["msg"]).removeprefix("Value error, ")
        raise BadInput(f"invalid value for {location}: {message}", param=location) from exc
    for param in (*PASSTHROUGH, "tools", "response_format"):
        if not _finite(getattr(body, param)):
            raise BadInput(
                f"invalid value for {param}: NaN, Infinity and integers beyond 64 bits"
                " cannot be sent on",
                param=param,
            )
    for param in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, param)
        if value is not None and value > max_tokens_limit:
            raise BadInput(
                f"{param} must be at most {max_tokens_limit} on this platform", param=param
            )
    image_chars = features.check_messages(body.messages)
    if max_text_bytes is not None and len(raw) - image_chars > max_text_bytes:
        raise PayloadTooLarge(
            f"the request body, its images aside, is larger than {max_text_bytes} bytes"
        )
    if body.tools is not None:
        features.check_tools(body.tools, body.tool_choice)
    elif isinstance(body.tool_choice, NamedToolChoice) or body.tool_choice == "required":
        raise BadInput("tool_choice requires tools", param="tool_choice")
    if body.response_format is not None:
        features.check_response_format(body.response_format)
    return body
