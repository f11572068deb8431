"""`infer node status`: this box's nodes as the platform sees them, and an exit status for scripts.

Exit status: 0 every node online; 3 a node degraded or paused; 4 a node offline, pending,
disabled or unknown to the platform, or no node registered (1, from the CLI: the
platform could not be asked).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from infer.agent.errors import PlatformError
from infer.agent.platform import NodeState

ONLINE, HALF, DOWN = 0, 3, 4
_EXIT = {"online": ONLINE, "degraded": HALF, "paused": HALF}


class NodeReader(Protocol):
    """The part of the PlatformClient that status needs."""

    def node(self, node_id: str) -> NodeState: ...

    def nodes(self) -> tuple[NodeState, ...]: ...


@dataclass(frozen=True, slots=True)
class Report:
    """The nodes found, the ids the platform no longer knows, and the exit status."""

    nodes: tuple[NodeState, ...]
    missing: tuple[str, ...]

    @property
    def exit_status(self) -> int:
        if self.missing or not self.nodes:
            return DOWN
        return max(_EXIT.get(node.status, DOWN) for node in self.nodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [node.to_json() for node in self.nodes],
            "missing": list(self.missing),
            "exit_status": self.exit_status,
        }

    def lines(self) -> list[str]:
        if not self.nodes and not self.missing:
            return ["no node is registered yet: run `infer node register` or `infer node join`"]
        shown = [describe(node) for node in self.nodes]
        shown += [f"node {i}: unknown to the platform (deregistered?)" for i in self.missing]
        return shown


def read_nodes(platform: NodeReader, node_ids: Sequence[str]) -> Report:
    """The given nodes (those `join` recorded), else every node the key can see."""
    if not node_ids:
        return Report(nodes=platform.nodes(), missing=())
    found, missing = [], []
    for node_id in node_ids:
        try:
            found.append(platform.node(node_id))
        except PlatformError as exc:
            if exc.platform_code != "NOT_FOUND":
                raise
            missing.append(node_id)
    return Report(nodes=tuple(found), missing=tuple(missing))


def describe(node: NodeState) -> str:
    """One line: name, id, status and why, the last check, and today's requests and earnings."""
    status = node.status + (f" ({node.status_reason})" if node.status_reason else "")
    if node.paused and node.status != "paused":
        status += ", paused"
    check = node.last_check
    if check is None or check.checked_at is None:
        checked = "not checked yet"
    else:
        result = "passed" if check.ok else f"failed: {check.error or 'no reason given'}"
        latency = f" in {check.latency_ms:.0f} ms" if check.ok and check.latency_ms else ""
        checked = f"last check {check.checked_at:%Y-%m-%d %H:%M:%S %Z} {result}{latency}"
    today = f"today {node.requests_today} requests, {node.earnings_today} USD"
    return f"{node.name} (id {node.id}): {status} · {checked} · {today}"
