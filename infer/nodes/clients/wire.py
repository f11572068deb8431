"""The HTTP side of every runtime client: requests, capped reads, and error translation.

Nothing a node sends is echoed in an error message: messages name the status or what was
wrong with the shape; the start of an error body is logged at debug level only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import cast

import httpx

from infer.errors import BadInput, UpstreamError, UpstreamTimeout
from infer.nodes.clients.base import Deadlines, RuntimeClient
from infer.nodes.clients.clock import StreamClock
from infer.nodes.clients.payloads import parse_json

MAX_LINE_BYTES = 1 << 20  # one NDJSON line or one SSE event
MAX_PROBE_BYTES = 4 << 20  # one health-check answer
ERROR_PEEK_BYTES = 300  # how much of an error body the debug log shows
BACKSTOP_SECONDS = 5.0  # httpx's own timeouts trail our deadlines by this much
DRAIN_SECONDS = 0.5  # how long to wait for the end of a body after its last event
DRAIN_BYTES = 64 << 10

log = logging.getLogger(__name__)


def request_headers(client: RuntimeClient, *, accept: str) -> dict[str, str]:
    """Headers for one call: no compression (it would defeat the size caps), the token if any."""
    headers = {"Accept": accept, "Accept-Encoding": "identity"}
    if client.token:
        headers["Authorization"] = f"Bearer {client.token}"
    return headers


@contextlib.contextmanager
def translated_errors(url: str) -> Iterator[None]:
    """Turn httpx failures, and the outbound guard's refusal, into UpstreamError."""
    try:
        yield
    except BadInput as exc:
        log.warning("call to %s refused by the outbound policy: %s", url, exc.message)
        raise UpstreamError("the node's address is not allowed by the platform") from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout("the node did not answer in time") from exc
    except httpx.ConnectError as exc:
        raise UpstreamError("cannot connect to the node") from exc
    except httpx.RemoteProtocolError as exc:
        raise UpstreamError("the node broke off the connection or the HTTP protocol") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise UpstreamError("the connection to the node failed") from exc


def _timeout(deadlines: Deadlines, wait: float) -> httpx.Timeout:
    """httpx's per-request timeouts: a backstop behind the deadlines enforced with asyncio."""
    return httpx.Timeout(
        connect=deadlines.connect,
        read=wait + BACKSTOP_SECONDS,
        write=deadlines.idle,
        pool=deadlines.connect,
    )


def _raw(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The body's bytes as they arrive (a body read already, as a mock's is, in one piece)."""
    if response.is_stream_consumed:
        return _ready(response.content)
    # httpx types aiter_raw as an iterator, but it is a generator we can (and must) close.
    return cast(AsyncGenerator[bytes, None], response.aiter_raw())


async def _ready(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def _check(response: httpx.Response, path: str, *, model: str | None = None) -> None:
    """Raise UpstreamError unless the response is a 2xx with an uncompressed body."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if response.is_success and encoding in ("", "identity"):
        return
    status = response.status_code
    if log.isEnabledFor(logging.DEBUG):
        log.debug("node %s answered HTTP %d: %r", response.url, status, await _peek(response))
    if not response.is_success:
        if response.is_redirect:
            raise UpstreamError(f"the node answered HTTP {status} to {path} (not followed)")
        if status == 404 and model is not None:
            raise UpstreamError(f"the node does not serve model {model!r} (HTTP 404)")
        raise UpstreamError(f"the node answered HTTP {status} to {path}")
    raise UpstreamError("the node sent a compressed answer although none was asked for")


async def _peek(response: httpx.Response) -> bytes:
    """The start of a body, for the debug log; whatever goes wrong reading it is ignored."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(1.0), contextlib.aclosing(_raw(response)) as chunks:
            async for chunk in chunks:
                return chunk[:ERROR_PEEK_BYTES]
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
) -> AsyncIterator[httpx.Response]:
    """POST `body` as JSON; yield the response once it is a 2xx. Exiting closes it."""
    url = client.base_url + path
    d = client.deadlines
    try:
        request = client.http.build_request(
            "POST",
            url,
            json=body,
            headers=request_headers(client, accept=accept),
            timeout=_timeout(d, max(d.first_byte, d.idle)),
        )
    except httpx.InvalidURL as exc:
        raise UpstreamError("the node's URL is not valid") from exc
    except ValueError as exc:  # httpx refuses NaN and Infinity, as JSON has no such numbers
        raise BadInput("the request holds a number JSON cannot carry (NaN or Infinity)") from exc
    with translated_errors(url):
        response = await clock.wait(client.http.send(request, stream=True))
    try:
        await _check(response, path, model=model)
        yield response
    finally:
        await response.aclose()


async def read_lines(
    response: httpx.Response, clock: StreamClock, *, limit: int = MAX_LINE_BYTES
) -> AsyncGenerator[bytes, None]:
    """The body's lines without their line ends; a line longer than `limit` is an error.

    It reads whatever chunks the network delivers (never a whole body) and keeps at most
    one partial line, so memory stays under `limit` plus one chunk.
    """
    url = str(response.url)
    buffer = bytearray()
    async with contextlib.aclosing(_raw(response)) as chunks:
        while True:
            with translated_errors(url):
                chunk = await clock.wait(anext(chunks, None))
            if chunk is None:
                break
            scan, start = len(buffer), 0  # the old tail holds no newline: search only the new
            buffer += chunk
            while (end := buffer.find(b"\n", scan)) >= 0:
                if end - start > limit:
                    raise _too_long(limit)
                yield bytes(buffer[start:end]).removesuffix(b"\r")
                start = scan = end + 1
            del buffer[:start]
            if len(buffer) > limit:
                raise _too_long(limit)
    if buffer:
        yield bytes(buffer).removesuffix(b"\r")


async def drain(lines: AsyncIterator[bytes]) -> None:
    """Read the little that follows the last event, so the connection can be reused.

    Whatever goes wrong, or a body that goes on, just ends the attempt (the connection is
    then closed instead of reused).
    """
    read = 0
    with contextlib.suppress(TimeoutError, UpstreamError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for line in lines:
                read += len(line) + 1
                if read > DRAIN_BYTES:
                    return


def _too_long(limit: int) -> UpstreamError:
    return UpstreamError(f"the node sent a line longer than {limit // 1024} KiB")


async def fetch_json(client: RuntimeClient, path: str, *, missing_ok: bool = False) -> object:
    """GET a JSON document of at most MAX_PROBE_BYTES; None for a 404 when `missing_ok`."""
    url = client.base_url + path
    with translated_errors(url):
        request = client.http.build_request(
            "GET",
            url,
            headers=request_headers(client, accept="application/json"),
            timeout=_timeout(client.deadlines, client.deadlines.health),
        )
        response = await client.http.send(request, stream=True)
    try:
        if missing_ok and response.status_code == 404:
            return None
        await _check(response, path)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_PROBE_BYTES:
            raise _too_big()
        body = bytearray()
        with translated_errors(url):
            async with contextlib.aclosing(_raw(response)) as chunks:
                async for chunk in chunks:
                    body += chunk
                    if len(body) > MAX_PROBE_BYTES:
                        raise _too_big()
    finally:
        await response.aclose()
    return parse_json(bytes(body))


def _too_big() -> UpstreamError:
    return UpstreamError(f"the node's answer is larger than {MAX_PROBE_BYTES >> 20} MiB")
