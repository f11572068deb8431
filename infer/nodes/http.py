"""The process's one outbound HTTP client: guarded addresses, explicit timeouts and limits."""

from __future__ import annotations

import httpx

from infer import __version__
from infer.nodes.clients.base import Deadlines
from infer.security.outbound import AddressPolicy, guarded_transport

USER_AGENT = f"infer/{__version__}"
MAX_CONNECTIONS = 1000
MAX_KEEPALIVE_CONNECTIONS = 100
KEEPALIVE_EXPIRY = 30.0


def create_http_client(*, allow_private: bool, deadlines: Deadlines) -> httpx.AsyncClient:
    """Build the long-lived client every runtime call goes through; close it at shutdown.

    Redirects are never followed (a node could point us anywhere), proxies from the
    environment are ignored (they would bypass the address guard), and the timeouts are
    only a backstop: the runtime clients enforce first-byte, idle and total deadlines.
    """
    transport = guarded_transport(
        AddressPolicy(allow_private=allow_private),
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        ),
    )
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(
            connect=deadlines.connect,
            read=max(deadlines.first_byte, deadlines.idle),
            write=deadlines.idle,
            pool=deadlines.connect,
        ),
    )
