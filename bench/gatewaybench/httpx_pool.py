"""The former load generator, httpx, kept for comparison (`--client httpx`)."""

from __future__ import annotations

import time

import httpx

from .calls import Call, Reply, Sender, Target
from .errors import CallFailed


class HttpxSender:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(self, call: Call) -> Reply:
        first = None
        url, headers = call.target.url, call.headers
        try:
            if call.stream:
                parts = []
                async with self.client.stream(
                    "POST", url, content=call.body, headers=headers
                ) as response:
                    async for chunk in response.aiter_raw():
                        if first is None:
                            first = time.perf_counter()
                        parts.append(chunk)
                content = b"".join(parts)
            else:
                response = await self.client.post(url, content=call.body, headers=headers)
                content = response.content
        except httpx.HTTPError as exc:
            raise CallFailed(f"{type(exc).__name__}: {exc}") from exc
        return Reply(response.status_code, content, first)


class HttpxPool:
    """httpx.AsyncClients with HTTP/1.1 keep-alive: by default one per worker.

    httpcore 1.0's pool does bookkeeping over every connection it holds on each request,
    so one client with 32 connections costs the load generator about 2 ms of CPU per
    request (5x the cost at one connection) and caps it near 500 requests/s, below the
    figures it must measure. `shared` is the single client, for comparison.
    """

    def __init__(self, *, size: int, shared: bool) -> None:
        self.size = size
        self.shared = shared
        self._clients: dict[str, list[httpx.AsyncClient]] = {}

    def _new(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(limits=limits, timeout=30.0)

    def senders(self, target: Target, count: int) -> list[Sender]:
        """A sender for each of `count` workers (on the same client when shared)."""
        key = "" if self.shared else target.path
        if key not in self._clients:
            self._clients[key] = (
                [self._new(self.size)] if self.shared else [self._new(1) for _ in range(self.size)]
            )
        clients = self._clients[key]
        return [HttpxSender(clients[i % len(clients)]) for i in range(count)]

    async def aclose(self) -> None:
        for clients in self._clients.values():
            for client in clients:
                await client.aclose()
