"""`/api/v1/nodes/{node_id}/tunnel`: where an agent's WebSocket becomes its node's way in.

The handshake is accepted first so that a refusal can say why (close codes in
`protocol.py`): no key or a revoked one (4401), a key without the NODES scope or a
node of another operator (4403), no such node or one not registered for a tunnel
(4404). The key is checked again every KEY_RECHECK seconds while the tunnel is open:
a key revoked on the dashboard cuts the tunnel within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from infer.accounts.principal import Principal
from infer.errors import InferError
from infer.models import ApiKeyScope, Node
from infer.resources import Resources
from infer.tunnel import protocol
from infer.tunnel.hub import is_tunnel
from infer.tunnel.protocol import ProtocolError
from infer.tunnel.session import Tunnel

KEY_RECHECK = 30.0
TOO_MANY = "this node's tunnel reconnects too often; try again in a minute"
UNAVAILABLE = "the platform cannot take tunnels now; try again later"

log = logging.getLogger(__name__)


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


async def _admit(websocket: WebSocket, resources: Resources) -> tuple[Principal, str, uuid.UUID]:
    """The key's principal and the node the tunnel is for, or Refused."""
    scheme, _, secret = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise Refused(protocol.CLOSE_UNAUTHORIZED, "send the node's key as a Bearer token")
    try:
        principal = await resources.authenticator.authenticate(secret.strip())
    except InferError as exc:
        raise Refused(protocol.CLOSE_UNAUTHORIZED, exc.message) from exc
    if not principal.may(ApiKeyScope.NODES):
        raise Refused(protocol.CLOSE_FORBIDDEN, "this key may not serve nodes (no NODES scope)")
    try:
        node_id = uuid.UUID(websocket.path_params["node_id"])
    except ValueError as exc:
        raise Refused(protocol.CLOSE_NOT_FOUND, "no such node") from exc
    async with resources.db.session() as session:
        node = await session.get(Node, node_id)
    if node is None:
        raise Refused(protocol.CLOSE_NOT_FOUND, "no such node")
    if node.operator_id != principal.user_id:
        raise Refused(protocol.CLOSE_FORBIDDEN, "this node belongs to another operator")
    if not is_tunnel(node.endpoint):
        raise Refused(protocol.CLOSE_NOT_FOUND, "this node is not registered for a tunnel")
    return principal, secret.strip(), node_id


async def node_tunnel(websocket: WebSocket) -> None:
    resources: Resources = websocket.state.resources
    if protocol.SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
        await websocket.close(code=protocol.CLOSE_PROTOCOL, reason="unknown subprotocol")
        return
    await websocket.accept(subprotocol=protocol.SUBPROTOCOL)
    try:
        _, secret, node_id = await _admit(websocket, resources)
    except Refused as refused:
        await websocket.close(code=refused.code, reason=refused.reason)
        return
    except Exception:  # the database is away: the agent tries again after its backoff
        log.warning("could not admit a tunnel", exc_info=True)
        await websocket.close(code=1011, reason=UNAVAILABLE)
        return
    if not await resources.limiter.hit(
        resources.settings.tunnel_limit_node, "tunnel", str(node_id)
    ):
        await websocket.close(code=protocol.CLOSE_TOO_MANY, reason=TOO_MANY)
        return
    hub = resources.tunnels

    async def send(message: str | bytes) -> None:
        if isinstance(message, str):
            await websocket.send_text(message)
        else:
            await websocket.send_bytes(message)

    tunnel = Tunnel(node_id, send)
    try:
        await hub.attach(tunnel)
    except Exception:
        log.warning("could not attach node %s's tunnel", node_id, exc_info=True)
        await websocket.close(code=1011, reason=UNAVAILABLE)
        return
    await websocket.send_text(tunnel.hello())  # after the attach: the node is reachable now
    tasks = [
        asyncio.create_task(tunnel.write_forever()),
        asyncio.create_task(_read(websocket, tunnel)),
        asyncio.create_task(_recheck_key(resources, secret, tunnel)),
    ]
    try:
        await tunnel.closed.wait()
    finally:
        tunnel.close(protocol.CLOSE_GOING_AWAY, "the platform process is stopping")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):  # the agent may be gone already
            await websocket.close(code=tunnel.close_code, reason=tunnel.close_reason[:120])
        await asyncio.shield(hub.detach(tunnel))


async def _read(websocket: WebSocket, tunnel: Tunnel) -> None:
    """The agent's messages into the tunnel, until it leaves or breaks the protocol."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                tunnel.close(message.get("code", 1000), "the agent disconnected")
                return
            if (text := message.get("text")) is not None:
                tunnel.receive_text(text)
            elif (data := message.get("bytes")) is not None:
                tunnel.receive_bytes(data)
    except ProtocolError as exc:
        log.warning("tunnel of node %s closed: %s", tunnel.node_id, exc.message)
        tunnel.close(exc.code, exc.message)
    except (WebSocketDisconnect, RuntimeError):
        tunnel.close(1006, "the agent disconnected")


async def _recheck_key(resources: Resources, secret: str, tunnel: Tunnel) -> None:
    while True:
        await asyncio.sleep(KEY_RECHECK)
        try:
            principal = await resources.authenticator.authenticate(secret)
        except InferError as exc:
            tunnel.close(protocol.CLOSE_UNAUTHORIZED, exc.message)
            return
        except Exception:  # the database is away: keep the tunnel, ask again later
            log.warning("could not recheck the key of node %s's tunnel", tunnel.node_id)
            continue
        if not principal.may(ApiKeyScope.NODES):
            tunnel.close(protocol.CLOSE_FORBIDDEN, "the key may no longer serve nodes")
            return


routes = [WebSocketRoute("/api/v1/nodes/{node_id}/tunnel", node_tunnel)]
