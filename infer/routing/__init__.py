"""Choosing nodes for a request: catalog, shared router state, scoring."""

from infer.routing.catalog import Candidate, NodeCatalog
from infer.routing.preferences import Preferences, parse_preferences
from infer.routing.redis_state import RedisRouterState
from infer.routing.router import Router
from infer.routing.state import (
    MemoryRouterState,
    NodeStats,
    RouterState,
    router_state_from_settings,
)

__all__ = [
    "Candidate",
    "MemoryRouterState",
    "NodeCatalog",
    "NodeStats",
    "Preferences",
    "RedisRouterState",
    "Router",
    "RouterState",
    "parse_preferences",
    "router_state_from_settings",
]
