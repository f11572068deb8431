"""API key scopes: stored as text, checked at the gateway and on GraphQL fields."""

from __future__ import annotations

from collections.abc import Iterable

from infer.errors import BadInput, InsufficientScope
from infer.models import ALL_SCOPES, ApiKeyScope


def parse_scopes(text: str) -> frozenset[ApiKeyScope]:
    """The scopes of a stored key; an unknown word (a newer release's scope) is ignored."""
    known = {scope.value for scope in ApiKeyScope}
    return frozenset(ApiKeyScope(word) for word in text.split(",") if word in known)


def format_scopes(scopes: Iterable[ApiKeyScope]) -> str:
    """Stored in a fixed order (gateway, nodes, account), whatever order they came in."""
    chosen = set(scopes)
    return ",".join(scope.value for scope in ApiKeyScope if scope in chosen)


def names(scopes: Iterable[ApiKeyScope]) -> str:
    """For messages: "gateway, nodes"."""
    return ", ".join(sorted(scope.value for scope in scopes)) or "none"


def requested_scopes(
    wanted: Iterable[ApiKeyScope] | None, *, holder: frozenset[ApiKeyScope]
) -> frozenset[ApiKeyScope]:
    """The scopes a new key gets: all by default, never none, never beyond the holder's."""
    if wanted is None:
        chosen = ALL_SCOPES
    else:
        chosen = frozenset(wanted)
        if not chosen:
            raise BadInput("a key needs at least one scope", param="scopes")
    beyond = chosen - holder
    if beyond:
        raise InsufficientScope(
            f"a key may not create a key with scopes beyond its own (missing: {names(beyond)})",
            param="scopes",
        )
    return chosen


def require_gateway(scopes: frozenset[ApiKeyScope]) -> None:
    if ApiKeyScope.GATEWAY not in scopes:
        raise InsufficientScope(
            f"This API key may not call the gateway (its scopes: {names(scopes)})."
        )
