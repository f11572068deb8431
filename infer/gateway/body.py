"""The OpenAI chat completion request body: validated, then turned into a ChatRequest."""

from __future__ import annotations

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

from infer.errors import BadInput
from infer.nodes.clients.base import ChatMessage, ChatRequest
from infer.security.text import MAX_MODEL_NAME, MODEL_NAME_CHARACTERS, is_model_name

MAX_MESSAGES = 1024
MAX_STOP = 4
# Passed on to runtimes that understand them (typed below, so that a buyer's bad value is
# this request's 400, never a node's failure); anything else unknown is ignored.
PASSTHROUGH = ("top_k", "min_p", "repeat_penalty", "response_format", "logit_bias")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


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
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None

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
        return ChatRequest(
            model=self.model,
            messages=tuple(ChatMessage(role=m.role, content=m.text()) for m in self.messages),
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            extra=extra,
        )


def _finite(value: object) -> bool:
    """Whether JSON can carry the value: no NaN or Infinity anywhere inside it."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def parse_body(raw: bytes, *, max_tokens_limit: int) -> ChatCompletionBody:
    """Validate the JSON body; a BadInput names the first offending field.

    `max_tokens_limit` bounds the answer, and so the hold: a request may not ask for more.
    """
    try:
        body = ChatCompletionBody.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"]) or None
        if error["type"] == "json_invalid":
            raise BadInput("the request body is not valid JSON") from exc
        if location is None:
            raise BadInput("the request body must be a JSON object") from exc
        if error["type"] == "missing":
            raise BadInput(f"missing required parameter: {location}", param=location) from exc
        message = str(error["msg"]).removeprefix("Value error, ")
        raise BadInput(f"invalid value for {location}: {message}", param=location) from exc
    for param in PASSTHROUGH:
        if not _finite(getattr(body, param)):
            raise BadInput(
                f"invalid value for {param}: NaN and Infinity are not numbers", param=param
            )
    for param in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, param)
        if value is not None and value > max_tokens_limit:
            raise BadInput(
                f"{param} must be at most {max_tokens_limit} on this platform", param=param
            )
    return body
