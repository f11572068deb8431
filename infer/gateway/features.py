"""Tools, structured output and images in a chat request: their checks and neutral forms.

Only a request that uses one of them pays for these checks; a plain text chat skips them.
Remote image URLs are refused: the gateway never fetches an address a buyer supplies.
"""

from __future__ import annotations

import binascii
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from infer.errors import BadInput
from infer.nodes.clients.base import Image, ResponseFormat, Tool

if TYPE_CHECKING:
    from infer.gateway.body import ImageURL, Message, NamedToolChoice, ResponseFormatIn, ToolIn

MAX_TOOLS = 128
MAX_TOOLS_BYTES = 256 << 10  # all tool definitions' JSON together
MAX_SCHEMA_BYTES = 64 << 10  # a response_format's schema
MAX_IMAGE_BYTES = 10 << 20  # one image, decoded
MAX_IMAGES_BYTES = 20 << 20  # every image of a request, decoded
# The room images need in a request body: their base64 text (4/3 of their bytes) and framing.
IMAGES_BODY_BYTES = MAX_IMAGES_BYTES * 4 // 3 + (64 << 10)

# Each format's first bytes, to check that the data is the image it claims to be.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
FORMATS = ", ".join(_MAGIC)


def tools(given: Sequence[ToolIn]) -> tuple[Tool, ...]:
    return tuple(
        Tool(
            name=t.function.name,
            description=t.function.description,
            parameters=t.function.parameters,
            strict=t.function.strict,
        )
        for t in given
    )


def response_format(given: ResponseFormatIn | None) -> ResponseFormat | None:
    if given is None or given.type == "text":
        return None
    if given.type == "json_object":
        return ResponseFormat(type="json_object")
    spec = given.json_schema
    assert spec is not None  # check_response_format made sure
    return ResponseFormat(
        type="json_schema", schema=spec.schema_, name=spec.name, strict=spec.strict
    )


def decoded_image(given: ImageURL) -> Image:
    """The Image of a data URL that `check_messages` accepted."""
    header, _, data = given.url.partition(",")
    media_type = header.removeprefix("data:").partition(";")[0].lower()
    return Image(media_type=media_type, data=data, detail=given.detail)


def _image(given: ImageURL, param: str) -> int:
    """Check one image part; return its decoded size."""
    url = given.url
    scheme = url[:8].lower()
    if scheme.startswith(("http://", "https://")):
        raise BadInput(
            "image URLs are not fetched: send the image inline as a data URL "
            "(data:image/png;base64,...)",
            param=param,
        )
    header, comma, data = url.partition(",")
    media_type, _, encoding = header.lower().removeprefix("data:").partition(";")
    if not header.lower().startswith("data:") or not comma or encoding != "base64":
        raise BadInput(
            "an image must be a base64 data URL (data:image/png;base64,...)", param=param
        )
    if media_type not in _MAGIC:
        raise BadInput(f"an image must be one of {FORMATS}, not {media_type!r}", param=param)
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise BadInput(f"an image may be at most {MAX_IMAGE_BYTES >> 20} MiB", param=param)
    try:
        decoded = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as exc:
        raise BadInput("the image's data is not valid base64", param=param) from exc
    if not decoded.startswith(_MAGIC[media_type]) or (
        media_type == "image/webp" and decoded[8:12] != b"WEBP"
    ):
        raise BadInput(f"the image's data is not {media_type}", param=param)
    return len(decoded)


def check_messages(messages: Sequence[Message]) -> int:
    """Check content parts, images, tool calls and tool results; return the characters
    the images' data takes in the body.

    A tool message must answer a call an earlier assistant message made.
    """
    called: set[str] = set()
    image_bytes = image_chars = 0
    for i, message in enumerate(messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                param = f"messages.{i}.content.{j}"
                if part.type == "text" and part.text is None:
                    raise BadInput("a text part needs its text", param=f"{param}.text")
                if part.type != "image_url":
                    continue
                if part.image_url is None:
                    raise BadInput("an image part needs image_url", param=f"{param}.image_url")
                if message.role != "user":
                    raise BadInput("only user messages may hold images", param=param)
                image_bytes += _image(part.image_url, f"{param}.image_url")
                image_chars += len(part.image_url.url)
                if image_bytes > MAX_IMAGES_BYTES:
                    raise BadInput(
                        f"a request's images may be at most {MAX_IMAGES_BYTES >> 20} MiB in all",
                        param=f"{param}.image_url",
                    )
        if message.tool_calls is not None:
            if message.role != "assistant":
                raise BadInput(
                    "only assistant messages carry tool_calls", param=f"messages.{i}.tool_calls"
                )
            for j, call in enumerate(message.tool_calls):
                if not _is_object_text(call.function.arguments):
                    raise BadInput(
                        "a tool call's arguments must be a JSON object (as text)",
                        param=f"messages.{i}.tool_calls.{j}.function.arguments",
                    )
                called.add(call.id)
        if message.role == "tool":
            if message.tool_call_id is None:
                raise BadInput(
                    "a tool message needs the tool_call_id it answers",
                    param=f"messages.{i}.tool_call_id",
                )
            if message.tool_call_id not in called:
                raise BadInput(
                    "a tool message must answer a tool call of an earlier assistant message",
                    param=f"messages.{i}.tool_call_id",
                )
    return image_chars


def _is_object_text(text: str) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def check_tools(given: Sequence[ToolIn], choice: str | NamedToolChoice | None) -> None:
    """Names unique, parameters a JSON schema of an object, everything within its size."""
    names: set[str] = set()
    size = 0
    for j, tool in enumerate(given):
        function = tool.function
        if function.name in names:
            raise BadInput(
                f"two tools are named {function.name!r}", param=f"tools.{j}.function.name"
            )
        names.add(function.name)
        size += len(function.name) + len((function.description or "").encode())
        if function.parameters is not None:
            param = f"tools.{j}.function.parameters"
            size += len(orjson.dumps(function.parameters))
            if function.parameters.get("type", "object") != "object":
                raise BadInput("a function's parameters must describe an object", param=param)
            check_schema(function.parameters, param=param)
        if size > MAX_TOOLS_BYTES:
            raise BadInput(f"tools may be at most {MAX_TOOLS_BYTES >> 10} KiB", param="tools")
    if not isinstance(choice, str | None) and choice.function.name not in names:
        raise BadInput(
            f"tool_choice names {choice.function.name!r}, which is not among the tools",
            param="tool_choice",
        )


def check_response_format(given: ResponseFormatIn) -> None:
    if given.type != "json_schema":
        return
    if given.json_schema is None or given.json_schema.schema_ is None:
        raise BadInput(
            "a json_schema response_format needs json_schema.schema", param="response_format"
        )
    schema = given.json_schema.schema_
    if len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise BadInput(
            f"a response schema may be at most {MAX_SCHEMA_BYTES >> 10} KiB",
            param="response_format",
        )
    check_schema(schema, param="response_format")


def check_schema(schema: dict[str, Any], *, param: str) -> None:
    """A BadInput unless `schema` is a valid JSON schema (draft 2020-12).

    Checking costs about 3 µs per byte of schema (a quarter of a second for 64 KiB), and
    an agent sends the same tools with every turn of a conversation: the verdict is kept
    by the schema's digest, so a schema is checked once per process, not per request.
    """
    digest = hashlib.blake2b(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).digest()
    problem = _CHECKED.get(digest)
    if problem is None:
        problem = _schema_problem(schema)
        _CHECKED.put(digest, problem)
    if problem:
        raise BadInput(problem, param=param)


def _schema_problem(schema: dict[str, Any]) -> str:
    """What is wrong with the schema; empty when it is valid."""
    # Imported here: only requests with tools or a response schema need it.
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the top"
        return f"not a valid JSON schema at {where}: {exc.message}"
    return ""


class _Verdicts:
    """The last `size` schemas' verdicts by digest (thread-safe: large bodies are parsed on
    worker threads)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._verdicts: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> str | None:
        with self._lock:
            verdict = self._verdicts.get(digest)
            if verdict is not None:
                self._verdicts.move_to_end(digest)
            return verdict

    def put(self, digest: bytes, verdict: str) -> None:
        with self._lock:
            self._verdicts[digest] = verdict
            if len(self._verdicts) > self._size:
                self._verdicts.popitem(last=False)


_CHECKED = _Verdicts(4096)  # digests and short messages: well under a megabyte
