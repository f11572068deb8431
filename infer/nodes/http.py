"""The process's one client for node calls: guarded addresses, explicit deadlines."""

from __future__ import annotations

from infer import __version__
from infer.nodes.clients.base import Deadlines
from infer.nodes.transport import NodeHTTP
from infer.security.outbound import AddressPolicy

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
