"""Node health rules: hysteresis between online, degraded and offline, and check timing."""

from __future__ import annotations

from infer.models import NodeStatus
from infer.nodes.health import Health, after_check, next_delay

ONLINE, DEGRADED, OFFLINE, PENDING = (
    NodeStatus.ONLINE,
    NodeStatus.DEGRADED,
    NodeStatus.OFFLINE,
    NodeStatus.PENDING,
)


def _run(start: Health, results: list[bool]) -> list[NodeStatus]:
    statuses, health = [], start
    for ok in results:
        health = after_check(health, ok=ok)
        statuses.append(health.status)
    return statuses


def test_a_new_node_goes_online_at_its_first_good_check() -> None:
    assert _run(Health(PENDING), [True]) == [ONLINE]


def test_a_new_node_that_cannot_be_reached_is_offline_at_once() -> None:
    assert _run(Health(PENDING), [False]) == [OFFLINE]


def test_one_failure_degrades_and_three_take_a_node_offline() -> None:
    assert _run(Health(ONLINE), [False, False, False]) == [DEGRADED, DEGRADED, OFFLINE]


def test_a_single_blip_recovers_at_the_next_good_check() -> None:
    assert _run(Health(ONLINE), [False, True]) == [DEGRADED, ONLINE]


def test_an_offline_node_needs_two_good_checks_to_be_online_again() -> None:
    assert _run(Health(OFFLINE, failures=5), [True, True]) == [DEGRADED, ONLINE]
    assert _run(Health(OFFLINE, failures=5), [True, False]) == [DEGRADED, DEGRADED]


def test_disabled_nodes_stay_disabled() -> None:
    assert _run(Health(NodeStatus.DISABLED), [True, False]) == [NodeStatus.DISABLED] * 2


def test_failures_and_recoveries_are_confirmed_sooner_than_the_interval() -> None:
    interval = 60.0
    assert next_delay(Health(ONLINE, successes=3), interval) == 60
    assert next_delay(Health(DEGRADED, failures=1), interval) == 15
    assert next_delay(Health(DEGRADED, failures=2), interval) == 30
    assert next_delay(Health(OFFLINE, failures=7), interval) == 60
    assert next_delay(Health(DEGRADED, successes=1), interval) == 15
