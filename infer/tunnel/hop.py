"""The replica hop: a call for a node whose tunnel another platform process holds.

Each process serves one route, `POST /tunnel-hop`, on its own listener
(`INFER_REPLICA_LISTEN`, loopback and a free port by default: never the public port,
and one per process even when several share that port); it writes the listener's URL
into `node_tunnels` when a tunnel attaches. Another process sends the request there
with the node, method and path in headers, signed with a key derived from
`INFER_SECRET_KEY` (which replicas share already) over a timestamp, those fields and
the body's digest; the holder relays it into the tunnel and streams the answer back,
status and body as the runtime gave them. What failed on the holder's side comes back
with an `x-infer-hop-error` header, never as the runtime's own answer.

Cost: a request that lands on a process without the tunnel takes one more HTTP
exchange inside the platform (on loopback ~0.3 ms and a little CPU on both sides);
the answer's bytes cross the platform twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from infer.errors import UpstreamError
from infer.nodes.transport import NodeHTTP, NodeResponse
from infer.tunnel import protocol
from infer.tunnel.hub import TunnelHub
from infer.tunnel.protocol import MAX_BODY, METHODS, path_allowed

HOP_PATH = "/tunnel-hop"
CLOCK_SKEW = 60  # seconds a signed hop stays valid
HOP_ERROR = "x-infer-hop-error"
EVICT_SECONDS = 5.0
CLOSE = "CLOSE"  # a hop's method that asks the holder to close a tunnel superseded elsewhere

log = logging.getLogger(__name__)


def hop_key(secret_key: str) -> bytes:
    return hmac.new(secret_key.encode(), b"infer tunnel replica hop", hashlib.sha256).digest()


def _signature(key: bytes, stamp: str, node: str, method: str, path: str, body: bytes) -> str:
    signed = f"{stamp}\n{node}\n{method}\n{path}\n".encode() + hashlib.sha256(body).digest()
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def _head_signature(key: bytes, stamp: str, node: str, method: str, path: str, length: int) -> str:
    """Over the head alone: checked before a byte of the body is read."""
    signed = f"head\n{stamp}\n{node}\n{method}\n{path}\n{length}".encode()
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


class HopClient:
    """Sends a tunnelled node's call to the process that holds its tunnel."""

    def __init__(self, *, key: bytes, http: NodeHTTP) -> None:
        self.key = key
        self.http = http  # a client for platform processes: private addresses allowed

    async def request(
        self,
        owner_url: str,
        node_id: uuid.UUID,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        until: float | None,
    ) -> NodeResponse:
        stamp = str(int(time.time()))
        node = str(node_id)
        sent = {
            "x-infer-hop-node": node,
            "x-infer-hop-method": method,
            "x-infer-hop-path": path,
            "x-infer-hop-time": stamp,
            "x-infer-hop-signature": _signature(self.key, stamp, node, method, path, body),
            "x-infer-hop-head": _head_signature(self.key, stamp, node, method, path, len(body)),
        }
        if "content-type" in headers:
            sent["content-type"] = headers["content-type"]
        answer = await self.http.request(
            "POST", owner_url.rstrip("/") + HOP_PATH, headers=sent, body=body, until=until
        )
        reason = answer.headers.get(HOP_ERROR)
        if reason is not None:
            await answer.aclose()
            raise UpstreamError(reason[:200] or "the node's tunnel could not be reached")
        return answer


async def evict(client: HopClient, owner_url: str, node_id: uuid.UUID, session: uuid.UUID) -> None:
    """Ask the process at `owner_url` to close the node's tunnel `session` (a newer one is here)."""
    try:
        until = asyncio.get_running_loop().time() + EVICT_SECONDS
        answer = await client.request(
            owner_url, node_id, CLOSE, f"/{session}", headers={}, body=b"", until=until
        )
        await answer.aclose()
    except Exception:  # gone already, or unreachable: its tunnel dies with its pings
        log.info("could not ask %s to close node %s's old tunnel", owner_url, node_id)


def _refused(status: int, reason: str) -> Response:
    return Response(status_code=status, headers={HOP_ERROR: reason})


def hop_app(hub: TunnelHub, *, key: bytes, total_timeout: float) -> Starlette:
    """The hop's listener: relays signed calls into the tunnels this process holds."""

    async def relay(request: Request) -> Response:
        fields = request.headers
        node, method, path = (
            fields.get(f"x-infer-hop-{n}", "") for n in ("node", "method", "path")
        )
        stamp = fields.get("x-infer-hop-time", "")
        try:
            node_id = uuid.UUID(node)
            fresh = abs(time.time() - int(stamp)) <= CLOCK_SKEW
            length = int(fields.get("content-length", ""))
        except ValueError:
            return _refused(400, "a malformed hop")
        # The head's signature first: a stranger's hop is refused before its body is read.
        head = _head_signature(key, stamp, node, method, path, length)
        if not fresh or not hmac.compare_digest(head, fields.get("x-infer-hop-head", "")):
            log.warning("replica hop refused: bad or stale signature")
            return _refused(403, "the hop's signature is not valid")
        if length > MAX_BODY:
            return _refused(413, "a hop's body is larger than a tunnel carries")
        body = await request.body()  # no more than the signed Content-Length
        expected = _signature(key, stamp, node, method, path, body)
        if not hmac.compare_digest(expected, fields.get("x-infer-hop-signature", "")):
            log.warning("replica hop refused: its body is not the one signed")
            return _refused(403, "the hop's signature is not valid")
        if method == CLOSE:
            held = hub.tunnels.get(node_id)
            if held is not None and path == f"/{held.session}":
                held.close(
                    protocol.CLOSE_REPLACED, "a newer tunnel of this node connected elsewhere"
                )
            return Response(status_code=204)
        if method not in METHODS or not path_allowed(path):
            return _refused(400, "a hop this process does not relay")
        tunnel = hub.local(node_id)
        if tunnel is None:
            return _refused(421, "the node's tunnel is not connected")
        until = asyncio.get_running_loop().time() + total_timeout
        headers = {"content-type": fields["content-type"]} if "content-type" in fields else {}
        try:
            answer = await tunnel.request(
                method,
                path,
                headers=headers,
                body=body,
                until=until,
                url=f"hop:{node}{path}",
            )
        except UpstreamError as exc:
            return _refused(502, exc.message)
        except TimeoutError:
            return _refused(504, "the node did not answer in time")

        async def stream() -> AsyncIterator[bytes]:
            async with answer:  # a caller that leaves cancels this: the agent is told
                while chunk := await answer.read(until):
                    yield chunk

        kept = (
            {"content-type": answer.headers["content-type"]}
            if "content-type" in answer.headers
            else {}
        )
        return StreamingResponse(stream(), status_code=answer.status, headers=kept)

    return Starlette(routes=[Route(HOP_PATH, relay, methods=["POST"])])


class HopServer:
    """The hop's listener on this process's event loop (uvicorn's HTTP protocol, no signals)."""

    def __init__(self, app: Starlette, *, host: str, port: int, advertise: str | None) -> None:
        import uvicorn

        # log_config=None and the default access_log: uvicorn's Config sets its loggers up
        # globally, and access_log=False would silence the public server's access log too.
        self._config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None)
        self._server = uvicorn.Server(self._config)
        self._advertise = advertise
        self.url: str | None = None

    async def start(self) -> str:
        """Listen; return the URL other processes reach this one's hop at."""
        self._config.load()
        self._server.lifespan = self._config.lifespan_class(self._config)
        # uvicorn announces every server it starts ("running on …, press CTRL+C"): for the
        # hop that would read like a second public port. The URL is logged below instead.
        announcer = logging.getLogger("uvicorn.error")
        level = announcer.level
        announcer.setLevel(logging.WARNING)
        try:
            await self._server.startup()
        finally:
            announcer.setLevel(level)
        sockets = self._server.servers[0].sockets
        port = sockets[0].getsockname()[1]
        host = self._advertise or self._config.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104
            # Listening on every interface, for other machines: they reach this one by its
            # name (a container's name resolves on its network; INFER_REPLICA_ADDRESS else).
            host = socket.gethostname()
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        log.info("replica hop listening at %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self.url is not None:
            self._server.force_exit = True  # in-flight hops end with their tunnels
            await self._server.shutdown()
