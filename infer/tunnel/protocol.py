"""The tunnel's frames: HTTP exchanges multiplexed over one WebSocket, both sides' rules.

The agent opens a WebSocket to `/api/v1/nodes/{node_id}/tunnel` (subprotocol
`infer-tunnel.1`, `Authorization: Bearer <node key>`). The platform then sends the
requests it wants the node's runtime to answer; each exchange is a stream with an id
the platform picks (odd, increasing, never reused on one tunnel).

Text messages are JSON objects with a type `t`:

    platform → agent   hello  {v, node, window, max_streams, max_body}
                       open   {id, method, path, headers, length}   then `length` body bytes
                       cancel {id}                                   the buyer left: stop
                       credit {id, bytes}                            room for more of the answer
    agent → platform   head   {id, status, headers}                 the runtime answered
                       end    {id}                                   the answer is complete
                       error  {id, message}                          the call failed or was refused

Binary messages carry body bytes: a 4-byte big-endian stream id, then the payload
(at most MAX_CHUNK bytes): the request body towards the agent, the answer back.

Flow control is per stream: the agent may have at most `window` bytes of an answer
sent and not yet credited; the platform credits what its reader has taken. A slow
buyer therefore holds back only its own stream, never the WebSocket the others share.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Literal

SUBPROTOCOL = "infer-tunnel.1"
VERSION = 1
MAX_CHUNK = 64 << 10  # payload bytes in one binary message
MAX_TEXT = 64 << 10  # bytes of one JSON message
MAX_MESSAGE = MAX_CHUNK + 4  # the WebSocket's message size limit on both sides
WINDOW = 256 << 10  # answer bytes in flight per stream
MAX_STREAMS = 128  # streams open at once on one tunnel
MAX_BODY = 32 << 20  # request body bytes of one stream
MAX_HEADERS = 16
METHODS = frozenset({"GET", "POST"})
# Paths the runtime APIs use: no scheme, host, query, `..`, `//`, `@` or escapes, so a
# path joined to the runtime's base URL cannot leave that origin. These patterns are used
# with fullmatch: `$` alone would let a trailing line break through.
PATH = re.compile(r"(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)+|/")
MAX_PATH = 256
HEADER_NAME = re.compile(r"[a-z0-9-]{1,64}")
HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,1024}")
# Headers that cross the tunnel; everything else is dropped by the sender and the receiver.
REQUEST_HEADERS = frozenset({"content-type", "accept"})
ANSWER_HEADERS = frozenset({"content-type"})

# WebSocket close codes (4000-4999 are the application's): why a tunnel ended.
CLOSE_UNAUTHORIZED = 4401  # no key, unknown or revoked key: the agent stops retrying
CLOSE_FORBIDDEN = 4403  # the key may not (scope), or the node is not the key's operator's
CLOSE_NOT_FOUND = 4404  # no such node, or it is not registered for a tunnel
CLOSE_REPLACED = 4409  # a newer tunnel for the same node took over
CLOSE_PROTOCOL = 1002  # a malformed or out-of-order message
CLOSE_TOO_BIG = 1009
CLOSE_GOING_AWAY = 1001  # the platform process is stopping: reconnect
CLOSE_TOO_MANY = 4429  # the node's tunnel reconnected too often: the agent backs off
CLOSE_SLOW = 4408  # the peer did not read what was sent to it in time
PERMANENT_CLOSES = frozenset({CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_NOT_FOUND})

_ID = struct.Struct(">I")


class ProtocolError(Exception):
    """A message that breaks the protocol; the tunnel is closed with `code` and this text.

    With `stream` set, the message was a well-formed `open` this version refuses (a
    method not in METHODS): the receiver may refuse that stream alone and carry on.
    """

    def __init__(
        self, message: str, code: int = CLOSE_PROTOCOL, *, stream: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.stream = stream


@dataclass(frozen=True, slots=True)
class Open:
    id: int
    method: str
    path: str
    headers: dict[str, str]
    length: int


@dataclass(frozen=True, slots=True)
class Head:
    id: int
    status: int
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Credit:
    id: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Signal:
    """`end`, `cancel` or `error` (with a message) for one stream."""

    kind: Literal["end", "cancel", "error"]
    id: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    node: str
    window: int
    max_streams: int
    max_body: int


Message = Open | Head | Credit | Signal | Hello


def encode(message: Message) -> str:
    """The JSON text of a control message."""
    fields: dict[str, Any]
    match message:
        case Open():
            fields = {
                "t": "open",
                "id": message.id,
                "method": message.method,
                "path": message.path,
                "headers": message.headers,
                "length": message.length,
            }
        case Head():
            fields = {"t": "head", "id": message.id, "status": message.status}
            fields["headers"] = message.headers
        case Credit():
            fields = {"t": "credit", "id": message.id, "bytes": message.bytes}
        case Signal():
            fields = {"t": message.kind, "id": message.id}
            if message.kind == "error":
                fields["message"] = message.message
        case Hello():
            fields = {
                "t": "hello",
                "v": message.version,
                "node": message.node,
                "window": message.window,
                "max_streams": message.max_streams,
                "max_body": message.max_body,
            }
    return json.dumps(fields, separators=(",", ":"))


def decode(text: str) -> Message:
    """One control message; ProtocolError when it is not one this version knows."""
    if len(text) > MAX_TEXT:
        raise ProtocolError("a control message is too large", CLOSE_TOO_BIG)
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("a control message is not JSON") from exc
    if not isinstance(fields, dict):
        raise ProtocolError("a control message is not a JSON object")
    kind = fields.get("t")
    if kind == "hello":
        return Hello(
            version=_int(fields, "v", 1, 1 << 16),
            node=_str(fields, "node", 64),
            window=_int(fields, "window", MAX_CHUNK, 1 << 30),
            max_streams=_int(fields, "max_streams", 1, 1 << 16),
            max_body=_int(fields, "max_body", 0, 1 << 31),
        )
    stream = _int(fields, "id", 1, (1 << 32) - 1)
    match kind:
        case "open":
            method = _str(fields, "method", 8)
            if method not in METHODS:
                raise ProtocolError(f"method {method[:8]!r} is not allowed", stream=stream)
            return Open(
                id=stream,
                method=method,
                path=_str(fields, "path", MAX_PATH),
                headers=_headers(fields.get("headers")),
                length=_int(fields, "length", 0, MAX_BODY),
            )
        case "head":
            status = _int(fields, "status", 100, 599)
            return Head(id=stream, status=status, headers=_headers(fields.get("headers")))
        case "credit":
            return Credit(id=stream, bytes=_int(fields, "bytes", 1, 1 << 30))
        case "end" | "cancel":
            return Signal(kind, stream)
        case "error":
            return Signal("error", stream, _str(fields, "message", 500))
    raise ProtocolError("a control message has an unknown type")


def path_allowed(path: str) -> bool:
    """Whether `path` stays on the runtime's origin (see PATH) and is not `.`-only."""
    if len(path) > MAX_PATH or not PATH.fullmatch(path):
        return False
    return all(segment not in (".", "..") for segment in path.split("/"))


def chunk(stream: int, payload: bytes | memoryview) -> bytes:
    """A binary message: the stream id, then at most MAX_CHUNK bytes of body."""
    return _ID.pack(stream) + bytes(payload)


def unchunk(data: bytes) -> tuple[int, bytes]:
    """The stream id and payload of a binary message; ProtocolError when malformed."""
    if len(data) < _ID.size:
        raise ProtocolError("a body message has no stream id")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("a body message is too large", CLOSE_TOO_BIG)
    (stream,) = _ID.unpack_from(data)
    if stream == 0:
        raise ProtocolError("a body message names stream 0")
    return stream, data[_ID.size :]


def pieces(body: bytes) -> list[memoryview]:
    """`body` cut into payloads of at most MAX_CHUNK bytes."""
    view = memoryview(body)
    return [view[start : start + MAX_CHUNK] for start in range(0, len(view), MAX_CHUNK)]


def kept_headers(headers: dict[str, str] | Any, allowed: frozenset[str]) -> dict[str, str]:
    """The headers among `allowed`, names lower-cased (a sender's side of the filter)."""
    return {
        name.lower(): str(value)
        for name, value in dict(headers).items()
        if name.lower() in allowed and HEADER_VALUE.fullmatch(str(value))
    }


def _int(fields: dict[str, Any], name: str, low: int, high: int) -> int:
    value = fields.get(name)
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(f"{name!r} must be an integer from {low} to {high}")
    return value


def _str(fields: dict[str, Any], name: str, longest: int) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or len(value) > longest:
        raise ProtocolError(f"{name!r} must be text of at most {longest} characters")
    return value


def _headers(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_HEADERS:
        raise ProtocolError(f"'headers' must be an object of at most {MAX_HEADERS} names")
    headers: dict[str, str] = {}
    for name, text in value.items():
        if not HEADER_NAME.fullmatch(name) or not isinstance(text, str):
            raise ProtocolError("a header name or value is malformed")
        if not HEADER_VALUE.fullmatch(text):
            raise ProtocolError("a header value holds characters HTTP cannot carry")
        headers[name] = text
    return headers
