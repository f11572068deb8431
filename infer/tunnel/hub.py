"""The tunnels this process holds, and the database rows that tell the others where they are.

A tunnel attaches when its agent connects: the row in `node_tunnels` names this process
and its replica hop's URL, and the node is checked at once over the tunnel. When it
detaches, the row goes, and, unless a newer tunnel of the node took over meanwhile (on
this process or another), the node goes offline in the same transaction: routing stops
sending it requests within a catalog refresh, without waiting for three failed checks.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import col, select

from infer.db import Database
from infer.models import Node, NodeStatus, NodeTunnel, utcnow
from infer.tunnel import protocol
from infer.tunnel.session import Tunnel

TUNNEL_SCHEME = "tunnel://"
CLOSED_REASON = "the agent's tunnel closed"
CHECKING_REASON = "the agent's tunnel connected; checking the runtime through it"
DETACH_RETRIES = 12
DETACH_RETRY_SECONDS = 5.0

log = logging.getLogger(__name__)


def tunnel_endpoint(node_id: uuid.UUID) -> str:
    """What a tunnelled node's endpoint column holds: where the node clients send its calls."""
    return f"{TUNNEL_SCHEME}{node_id}"


def is_tunnel(endpoint: str) -> bool:
    return endpoint.startswith(TUNNEL_SCHEME)


@dataclass(frozen=True, slots=True)
class Replica:
    """This process among the platform's: its id, and the URL of its replica hop (if any)."""

    id: str
    url: str | None = None


class TunnelHub:
    """The tunnels connected to this process, by node; lives on the serving event loop."""

    def __init__(
        self,
        db: Database,
        *,
        replica: Replica,
        on_change: Callable[[], None] = lambda: None,
        check_now: Callable[[uuid.UUID], Awaitable[object]] | None = None,
    ) -> None:
        self.db = db
        self.replica = replica
        self.on_change = on_change
        self.check_now = check_now
        self.tunnels: dict[uuid.UUID, Tunnel] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._checks: set[asyncio.Task[None]] = set()
        # Closes a node's older tunnel held by another process: (its URL, node, session).
        self.evict: Callable[[str, uuid.UUID, uuid.UUID], Awaitable[None]] | None = None

    def local(self, node_id: uuid.UUID) -> Tunnel | None:
        tunnel = self.tunnels.get(node_id)
        return None if tunnel is None or tunnel.closed.is_set() else tunnel

    async def attach(self, tunnel: Tunnel) -> None:
        """Make `tunnel` the node's way in (a tunnel it had here before is closed)."""
        self.loop = asyncio.get_running_loop()
        before = self.tunnels.get(tunnel.node_id)
        self.tunnels[tunnel.node_id] = tunnel
        if before is not None:
            before.close(protocol.CLOSE_REPLACED, "a newer tunnel of this node connected")
        try:
            before_elsewhere = await self._record(tunnel)
        except BaseException:  # the database is away: the agent is refused and tries again
            if self.tunnels.get(tunnel.node_id) is tunnel:
                del self.tunnels[tunnel.node_id]
            raise
        log.info("tunnel of node %s connected", tunnel.node_id)
        self._spawn(self._check(tunnel.node_id))
        if before_elsewhere is not None and self.evict is not None:
            # The agent reconnected here while that process still holds its old connection
            # (it has not noticed the drop): it would send requests into a dead tunnel.
            url, old_session = before_elsewhere
            self._spawn(self.evict(url, tunnel.node_id, old_session))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _record(self, tunnel: Tunnel) -> tuple[str, uuid.UUID] | None:
        """Write this process down as the node's way in; where the row it replaced pointed
        (URL and session) if that was another process's."""
        now = utcnow()
        elsewhere: tuple[str, uuid.UUID] | None = None
        async with self.db.transaction() as session:
            before = (
                await session.exec(
                    select(NodeTunnel.replica, NodeTunnel.replica_url, NodeTunnel.session).where(
                        NodeTunnel.node_id == tunnel.node_id
                    )
                )
            ).first()
            if before is not None and before[0] != self.replica.id and before[1]:
                elsewhere = (before[1], before[2])
            # By key, not by the row read: the old holder may delete it meanwhile.
            await session.exec(
                sa.delete(NodeTunnel).where(col(NodeTunnel.node_id) == tunnel.node_id)
            )
            session.add(
                NodeTunnel(
                    node_id=tunnel.node_id,
                    session=tunnel.session,
                    replica=self.replica.id,
                    replica_url=self.replica.url,
                    connected_at=now,
                )
            )
            await session.exec(
                sa.update(Node).where(col(Node.id) == tunnel.node_id).values(next_check_at=now)
            )
            # Offline because its tunnel was down (every such reason names the tunnel): one
            # good check over the new one serves it again. A node offline for failed checks
            # of its runtime still needs two (infer/nodes/health.py).
            await session.exec(
                sa.update(Node)
                .where(
                    col(Node.id) == tunnel.node_id,
                    col(Node.status) == NodeStatus.OFFLINE,
                    col(Node.status_reason).contains("tunnel"),
                )
                .values(status=NodeStatus.PENDING, status_reason=CHECKING_REASON)
            )
        return elsewhere

    async def _check(self, node_id: uuid.UUID) -> None:
        """A health check over the new tunnel now: the node is served without waiting a sweep."""
        if self.check_now is None:
            return
        try:
            await self.check_now(node_id)
        except Exception:  # the regular sweep checks it soon (next_check_at is now)
            log.warning("could not check node %s over its new tunnel", node_id, exc_info=True)
        self.on_change()

    async def detach(self, tunnel: Tunnel) -> None:
        """Forget `tunnel`; the node goes offline unless a newer tunnel holds it now.

        While the database is away the row stays (calls find no tunnel here and fail over)
        and the write is tried again, for up to DETACH_RETRIES * DETACH_RETRY_SECONDS.
        """
        if self.tunnels.get(tunnel.node_id) is tunnel:
            del self.tunnels[tunnel.node_id]
        for attempt in range(DETACH_RETRIES):
            try:
                await self._forget(tunnel)
                break
            except Exception:
                if attempt == DETACH_RETRIES - 1:
                    log.exception("could not record that node %s's tunnel closed", tunnel.node_id)
                    break
                log.warning(
                    "could not record that node %s's tunnel closed; retrying", tunnel.node_id
                )
                await asyncio.sleep(DETACH_RETRY_SECONDS)
        log.info("tunnel of node %s closed: %s", tunnel.node_id, tunnel.close_reason)
        self.on_change()

    async def _forget(self, tunnel: Tunnel) -> None:
        async with self.db.transaction() as session:
            await session.exec(
                sa.delete(NodeTunnel).where(
                    col(NodeTunnel.node_id) == tunnel.node_id,
                    col(NodeTunnel.session) == tunnel.session,
                )
            )
            newer = sa.select(col(NodeTunnel.node_id)).where(
                col(NodeTunnel.node_id) == tunnel.node_id
            )
            await session.exec(
                sa.update(Node)
                .where(col(Node.id) == tunnel.node_id, ~sa.exists(newer))
                .where(col(Node.status) != NodeStatus.DISABLED)
                .values(
                    status=NodeStatus.OFFLINE,
                    status_reason=CLOSED_REASON,
                    consecutive_successes=0,
                    updated_at=utcnow(),
                )
            )

    async def close_all(self) -> None:
        """At shutdown: end every tunnel (their agents reconnect to another process)."""
        for tunnel in list(self.tunnels.values()):
            tunnel.close(protocol.CLOSE_GOING_AWAY, "the platform process is stopping")
