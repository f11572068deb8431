"""The process's one client for node calls: guarded addresses, explicit deadlines."""

from __future__ import annotations

from infer import __version__
from infer.db import Database
from infer.nodes.clients.base import Deadlines
from infer.nodes.transport import NodeHTTP
from infer.security.outbound import AddressPolicy
from infer.tunnel.calls import TunnelCalls
from infer.tunnel.hop import HopClient
from infer.tunnel.hub import TunnelHub

USER_AGENT = f"infer/{__version__}"


def create_http_client(*, allow_private: bool, deadlines: Deadlines) -> NodeHTTP:
    """Build the long-lived client every runtime call goes through; close it at shutdown.

    Redirects are never followed (a node could point us anywhere) and no proxy is used
    (it would bypass the address guard); the runtime clients enforce first-byte, idle
    and total deadlines on each call.
    """
    return NodeHTTP(
        policy=AddressPolicy(allow_private=allow_private),
        connect_timeout=deadlines.connect,
        user_agent=USER_AGENT,
    )


def tunnel_calls(
    db: Database, *, hub: TunnelHub | None, key: bytes, deadlines: Deadlines
) -> TunnelCalls:
    """Calls to tunnelled nodes: into `hub`'s tunnels, or hopped to the process holding one.

    The hop's own client may reach private addresses: it only ever calls the URLs
    platform processes wrote into `node_tunnels`, never one a user gave.
    """
    replicas = NodeHTTP(
        policy=AddressPolicy(allow_private=True),
        connect_timeout=deadlines.connect,
        user_agent=USER_AGENT,
    )
    return TunnelCalls(db, hub=hub, hop=HopClient(key=key, http=replicas))
