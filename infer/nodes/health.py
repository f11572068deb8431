"""Health state of a node: status changes with hysteresis, and when to check next."""

from __future__ import annotations

from dataclasses import dataclass

from infer.models import NodeStatus

FAILURES_UNTIL_OFFLINE = 3
SUCCESSES_UNTIL_ONLINE = 2  # from offline: one good answer is not a recovery yet


@dataclass(frozen=True)
class Health:
    status: NodeStatus
    failures: int = 0
    successes: int = 0


def after_check(current: Health, *, ok: bool) -> Health:
    """The health after one check; pure, so the rules are tested on their own."""
    if current.status == NodeStatus.DISABLED:
        return current
    if ok:
        successes = current.successes + 1
        recovering = current.status == NodeStatus.OFFLINE or (
            current.status == NodeStatus.DEGRADED and current.failures == 0
        )
        if recovering and successes < SUCCESSES_UNTIL_ONLINE:
            return Health(NodeStatus.DEGRADED, 0, successes)
        return Health(NodeStatus.ONLINE, 0, successes)
    failures = current.failures + 1
    if current.status == NodeStatus.PENDING or failures >= FAILURES_UNTIL_OFFLINE:
        return Health(NodeStatus.OFFLINE, failures, 0)
    if current.status == NodeStatus.OFFLINE:
        return Health(NodeStatus.OFFLINE, failures, 0)
    return Health(NodeStatus.DEGRADED, failures, 0)


def next_delay(health: Health, interval: float) -> float:
    """Seconds until the next check: soon while a change is being confirmed, else `interval`."""
    if health.status == NodeStatus.DEGRADED and health.failures == 0:
        return interval / 4  # confirming a recovery
    if 0 < health.failures < FAILURES_UNTIL_OFFLINE:
        return interval / 4 * 2.0 ** (health.failures - 1)  # confirming a failure
    return interval
