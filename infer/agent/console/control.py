"""The node as the platform sees it, briefly cached, and its pause switch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from infer.agent.platform import NodeState

FRESH_FOR = 2.0  # seconds: every open tab and the tray poll; the platform is asked once


class NodeSource(Protocol):
    """The platform calls the console makes (the agent's PlatformClient)."""

    def node(self, node_id: str) -> NodeState: ...

    def set_paused(self, node_id: str, paused: bool) -> NodeState: ...


class NodeControl:
    """Reads a node's state (cached for `fresh_for` seconds) and pauses or resumes it."""

    def __init__(
        self,
        platform: NodeSource,
        *,
        fresh_for: float = FRESH_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.platform = platform
        self.fresh_for = fresh_for
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, NodeState] | None = None

    def state(self, node_id: str) -> NodeState:
        with self._lock:
            cached = self._cached
            if cached and cached[1].id == node_id and self.clock() - cached[0] < self.fresh_for:
                return cached[1]
        state = self.platform.node(node_id)
        self._keep(state)
        return state

    def set_paused(self, node_id: str, *, paused: bool) -> NodeState:
        """Pauses (drains: no new requests, running ones finish) or resumes the node."""
        state = self.platform.set_paused(node_id, paused)
        self._keep(state)
        return state

    def forget(self) -> None:
        """Drops the cached state: the next read asks the platform."""
        with self._lock:
            self._cached = None

    def _keep(self, state: NodeState) -> None:
        with self._lock:
            self._cached = (self.clock(), state)
