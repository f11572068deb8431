"""`infer node join`: an enrolment code becomes a node key on this box, then a registered node.

The order keeps anything from being half-done where it can be avoided: the options and
the runtime are checked before the code is spent; the key is stored before it is used,
so that a registration that fails afterwards can be retried with `infer node register`
(which takes the stored key) without a new code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infer.agent import credentials
from infer.agent.credentials import NodeCredentials
from infer.agent.detect import Detection
from infer.agent.errors import AgentError, AlreadyJoined, RegistrationAfterJoinFailed
from infer.agent.platform import PlatformClient, RegisteredNode, graphql_url
from infer.agent.register import Registration, RegistrationOptions, build_registration


@dataclass(frozen=True, slots=True)
class Joined:
    """What join did: the key it stored (where) and the node it registered."""

    path: Path
    stored: NodeCredentials
    registration: Registration
    node: RegisteredNode


def join(
    *,
    platform: str,
    code: str,
    options: RegistrationOptions,
    path: Path,
    detect: Callable[[], Detection],
    client: Callable[[str | None], PlatformClient],
    force: bool = False,
) -> Joined:
    """Redeems `code` on `platform`, keeps the key at `path`, registers what `detect` finds."""
    url = graphql_url(platform)
    existing = credentials.load(path)
    if existing is not None and not force:
        raise AlreadyJoined(
            f"this box already joined {existing.platform} (its key is in {path}); "
            "`infer node register` and `infer node agent` use it. To join again, revoke "
            "that key in the dashboard and pass --force"
        )
    # Before the code is spent: a missing runtime, a bad option or a place where the key
    # cannot be kept needs no new code.
    registration = build_registration(detect(), options)
    credentials.check_writable(path)
    with client(None) as anonymous:
        enrolled = anonymous.redeem(code, name=registration.name)
    stored = NodeCredentials(
        platform=url.removesuffix("/graphql"),
        api_key=enrolled.secret,
        key_id=enrolled.key_id or None,
        name=registration.name,
        runtime=options.runtime,
        endpoint=options.endpoint,
        tunnel=options.tunnel,
    )
    credentials.save(path, stored)
    try:
        with client(enrolled.secret) as platform_client:
            node = platform_client.register_node(registration)
    except AgentError as exc:
        raise RegistrationAfterJoinFailed(
            f"joined, and the node key is stored in {path}, but registering failed: "
            f"{exc.message}. Fix that, then run `infer node register` (no new code needed)"
        ) from exc
    stored = stored.with_node(node.id)
    credentials.save(path, stored)
    return Joined(path=path, stored=stored, registration=registration, node=node)
