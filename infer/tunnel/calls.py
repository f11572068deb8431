"""Where a call to a tunnelled node goes: this process's tunnel, or the process that holds it.

`NodeHTTP` hands every `tunnel://<node id>/<path>` URL to `TunnelCalls.request`:

- the tunnel is held here, on this loop: straight into it (streamed, flow-controlled);
- held here but called from another loop (the health monitor's thread): the answer is
  fetched whole on the tunnel's loop (health probes are small; WHOLE_ANSWER_LIMIT);
- held by another process: the replica hop (`infer/tunnel/hop.py`), to the URL that
  process wrote in `node_tunnels`; which process holds it is cached for OWNER_TTL.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from sqlmodel import select

from infer.db import Database
from infer.errors import UpstreamError
from infer.models import NodeTunnel
from infer.nodes.transport import NodeResponse
from infer.tunnel.hop import HopClient
from infer.tunnel.hub import TUNNEL_SCHEME, TunnelHub
from infer.tunnel.protocol import path_allowed

OWNER_TTL = 2.0  # seconds a lookup of a tunnel's process is trusted
WHOLE_ANSWER_LIMIT = 8 << 20
NOT_CONNECTED = "the node's tunnel is not connected"


class WholeResponse(NodeResponse):
    """An answer fetched whole on another loop, read like any other node answer."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, url: str) -> None:
        self.status = status
        self.headers = headers
        self.url = url
        self._body: bytes | None = body

    async def read(self, until: float | None = None) -> bytes:
        body, self._body = self._body, None
        return body or b""

    async def aclose(self) -> None:
        self._body = None


@dataclass(frozen=True, slots=True)
class Owner:
    replica: str
    url: str | None
    found_at: float


def tunnel_target(url: str) -> tuple[uuid.UUID, str]:
    """The node id and path of a `tunnel://<node id>/<path>` URL."""
    rest = url[len(TUNNEL_SCHEME) :]
    node, _, path = rest.partition("/")
    try:
        node_id = uuid.UUID(node)
    except ValueError as exc:
        raise UpstreamError("the node's URL is not valid") from exc
    path = "/" + path
    if not path_allowed(path):
        raise UpstreamError("this request cannot be sent through a tunnel")
    return node_id, path


class TunnelCalls:
    """Sends node calls into tunnels wherever they are held."""

    def __init__(self, db: Database, *, hub: TunnelHub | None, hop: HopClient | None) -> None:
        self.db = db
        self.hub = hub
        self.hop = hop
        self._owners: dict[uuid.UUID, Owner] = {}

    async def request(
        self,
        url: str,
        *,
        method: str,
        headers: Mapping[str, str],
        body: bytes,
        until: float | None,
    ) -> NodeResponse:
        node_id, path = tunnel_target(url)
        hub = self.hub
        if hub is not None and (tunnel := hub.local(node_id)) is not None:
            if hub.loop is asyncio.get_running_loop():
                return await tunnel.request(
                    method, path, headers=headers, body=body, until=until, url=url
                )
            return await self._across(hub, node_id, method, path, headers, body, until, url)
        owner = await self._owner(node_id)
        if owner is None or (hub is not None and owner.replica == hub.replica.id):
            raise UpstreamError(NOT_CONNECTED)
        if self.hop is None or owner.url is None:
            raise UpstreamError("the node's tunnel is held by a platform process out of reach")
        try:
            return await self.hop.request(
                owner.url, node_id, method, path, headers=headers, body=body, until=until
            )
        except UpstreamError:
            self._owners.pop(node_id, None)  # it may have moved: look again next time
            raise

    async def aclose(self) -> None:
        if self.hop is not None:
            await self.hop.http.aclose()

    async def _owner(self, node_id: uuid.UUID) -> Owner | None:
        now = time.monotonic()
        owner = self._owners.get(node_id)
        if owner is not None and now - owner.found_at < OWNER_TTL:
            return owner
        async with self.db.session() as session:
            row = (
                await session.exec(select(NodeTunnel).where(NodeTunnel.node_id == node_id))
            ).first()
        if row is None:
            self._owners.pop(node_id, None)
            return None
        owner = self._owners[node_id] = Owner(row.replica, row.replica_url, now)
        return owner

    async def _across(
        self,
        hub: TunnelHub,
        node_id: uuid.UUID,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        until: float | None,
        url: str,
    ) -> WholeResponse:
        """The whole answer, fetched on the tunnel's loop (`until` holds: loops share a clock)."""
        assert hub.loop is not None

        async def fetch() -> WholeResponse:
            tunnel = hub.local(node_id)
            if tunnel is None:
                raise UpstreamError(NOT_CONNECTED)
            answer = await tunnel.request(
                method, path, headers=headers, body=body, until=until, url=url
            )
            async with answer:
                parts: list[bytes] = []
                size = 0
                while chunk := await answer.read(until):
                    size += len(chunk)
                    if size > WHOLE_ANSWER_LIMIT:
                        raise UpstreamError("the node's answer is too large")
                    parts.append(chunk)
            return WholeResponse(answer.status, answer.headers, b"".join(parts), url)

        future = asyncio.run_coroutine_threadsafe(fetch(), hub.loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise
