"""What a worker sends and gets back, whichever HTTP client the load generator uses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from .market import BODY


@dataclass(frozen=True)
class Target:
    path: str  # "direct" or "INFER"
    url: str
    headers: dict[str, str]  # beyond Host, Content-Type and Content-Length


@dataclass(frozen=True)
class Call:
    """One row's request, the same every time, prepared once for any client."""

    target: Target
    stream: bool
    body: bytes
    headers: dict[str, str]
    raw: bytes  # the whole HTTP/1.1 request: request line, headers, body

    @classmethod
    def build(cls, target: Target, *, stream: bool) -> Call:
        body = json.dumps({**BODY, "stream": True} if stream else BODY).encode()
        headers = {"Content-Type": "application/json", **target.headers}
        url = urlsplit(target.url)
        lines = [
            f"POST {url.path} HTTP/1.1",
            f"Host: {url.netloc}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        head = "\r\n".join(lines) + "\r\n\r\n"
        return cls(target, stream, body, headers, head.encode("latin-1") + body)


@dataclass(slots=True)
class Reply:
    status: int
    content: bytes  # the body as sent: SSE text for a stream, JSON otherwise
    first: float | None  # time.perf_counter() when the first body bytes arrived


class Sender(Protocol):
    """One worker's connection."""

    async def send(self, call: Call) -> Reply:
        """The complete answer to `call`; CallFailed when there is none."""
        ...


class Pool(Protocol):
    """The senders of one client kind, kept (and their connections open) for the whole run."""

    def senders(self, target: Target, count: int) -> list[Sender]: ...

    async def aclose(self) -> None: ...
