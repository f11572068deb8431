"""The HTTP side of every runtime client: requests, capped reads, and error translation.

Nothing a node sends is echoed in an error message: messages name the status or what was
wrong with the shape; the start of an error body is logged at debug level only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from infer.errors import BadInput, UpstreamError
from infer.nodes.clients.base import RuntimeClient
from infer.nodes.clients.clock import StreamClock
from infer.nodes.clients.payloads import parse_json
from infer.nodes.transport import NodeResponse

MAX_LINE_BYTES = 1 << 20  # one NDJSON line or one SSE event
MAX_PROBE_BYTES = 4 << 20  # one health-check answer
ERROR_PEEK_BYTES = 300  # how much of an error body the debug log shows
DRAIN_SECONDS = 0.5  # how long to wait for the end of a body after its last event
DRAIN_BYTES = 64 << 10

log = logging.getLogger(__name__)


def request_headers(client: RuntimeClient, *, accept: str) -> dict[str, str]:
    """Headers for one call: no compression (it would defeat the size caps), the token if any."""
    headers = {"Accept": accept, "Accept-Encoding": "identity"}
    if client.token:
        headers["Authorization"] = f"Bearer {client.token}"
    return headers


def encode_json(body: dict[str, object]) -> bytes:
    """A request body as compact JSON; BadInput for NaN or Infinity, which JSON cannot carry."""
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise BadInput("the request holds a number JSON cannot carry (NaN or Infinity)") from exc


async def _check(response: NodeResponse, path: str, *, model: str | None = None) -> None:
    """Raise UpstreamError unless the response is a 2xx with an uncompressed body."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if response.is_success and encoding in ("", "identity"):
        return
    status = response.status
    if log.isEnabledFor(logging.DEBUG):
        log.debug("node %s answered HTTP %d: %r", response.url, status, await _peek(response))
    if not response.is_success:
        if response.is_redirect:
            raise UpstreamError(f"the node answered HTTP {status} to {path} (not followed)")
        if status == 404 and model is not None:
            raise UpstreamError(f"the node does not serve model {model!r} (HTTP 404)")
        raise UpstreamError(f"the node answered HTTP {status} to {path}")
    raise UpstreamError("the node sent a compressed answer although none was asked for")


async def _peek(response: NodeResponse) -> bytes:
    """The start of a body, for the debug log; whatever goes wrong reading it is ignored."""
    with contextlib.suppress(TimeoutError, UpstreamError):
        return (await response.read(asyncio.get_running_loop().time() + 1.0))[:ERROR_PEEK_BYTES]
    return b""


@contextlib.asynccontextmanager
async def open_stream(
    client: RuntimeClient,
    path: str,
    body: dict[str, object],
    *,
    clock: StreamClock,
    accept: str,
    model: str,
) -> AsyncIterator[NodeResponse]:
    """POST `body` as JSON; yield the response once it is a 2xx. Exiting closes it."""
    headers = request_headers(client, accept=accept)
    headers["Content-Type"] = "application/json"
    try:
        response = await client.http.request(
            "POST",
            client.base_url + path,
            headers=headers,
            body=encode_json(body),
            until=clock.deadline(),
        )
    except TimeoutError as exc:
        raise clock.expired() from exc
    try:
        await _check(response, path, model=model)
        yield response
    finally:
        await response.aclose()


async def read_lines(
    response: NodeResponse, clock: StreamClock, *, limit: int = MAX_LINE_BYTES
) -> AsyncGenerator[list[bytes], None]:
    """The body's lines without their line ends, in the groups one read delivered.

    A group holds every whole line that arrived together, so a consumer can handle a
    burst at once; a line longer than `limit` is an error (after the lines before it).
    It never waits for a whole body and keeps at most one partial line, so memory stays
    under `limit` plus one read.
    """
    buffer = b""
    while True:
        try:
            chunk = await response.read(clock.deadline())
        except TimeoutError as exc:
            raise clock.expired() from exc
        if not chunk:
            break
        clock.check()
        if buffer:
            chunk = buffer + chunk
        lines = chunk.split(b"\n")
        buffer = lines.pop()
        for index, line in enumerate(lines):
            if len(line) > limit:
                if index:
                    yield lines[:index]
                raise _too_long(limit)
            if line.endswith(b"\r"):
                lines[index] = line[:-1]
        if lines:
            yield lines
        if len(buffer) > limit:
            raise _too_long(limit)
    if buffer:
        yield [buffer.removesuffix(b"\r")]


async def drain(response: NodeResponse) -> None:
    """Read the little that follows the last event, so the connection can be reused.

    Whatever goes wrong, or a body that goes on, just ends the attempt (the connection is
    then closed instead of reused).
    """
    until = asyncio.get_running_loop().time() + DRAIN_SECONDS
    read = 0
    with contextlib.suppress(TimeoutError, UpstreamError):
        while chunk := await response.read(until):
            read += len(chunk)
            if read > DRAIN_BYTES:
                return


def _too_long(limit: int) -> UpstreamError:
    return UpstreamError(f"the node sent a line longer than {limit // 1024} KiB")


async def fetch_json(
    client: RuntimeClient,
    path: str,
    *,
    missing_ok: bool = False,
    body: dict[str, object] | None = None,
) -> object:
    """GET (or POST `body` to) a JSON document of at most MAX_PROBE_BYTES; None for a 404
    when `missing_ok`."""
    headers = request_headers(client, accept="application/json")
    if body is not None:
        headers["Content-Type"] = "application/json"
    response = await client.http.request(
        "GET" if body is None else "POST",
        client.base_url + path,
        headers=headers,
        body=b"" if body is None else encode_json(body),
    )
    try:
        if missing_ok and response.status == 404:
            return None
        await _check(response, path)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_PROBE_BYTES:
            raise _too_big()
        received = bytearray()
        while chunk := await response.read():
            received += chunk
            if len(received) > MAX_PROBE_BYTES:
                raise _too_big()
    finally:
        await response.aclose()
    return parse_json(bytes(received))


def _too_big() -> UpstreamError:
    return UpstreamError(f"the node's answer is larger than {MAX_PROBE_BYTES >> 20} MiB")
