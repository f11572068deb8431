"""The agent's GraphQL client: enrolment, node state and pause, against canned answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from infer.agent.errors import PlatformError
from infer.agent.platform import PlatformClient

NODE = {
    "id": "7",
    "name": "box-ollama",
    "status": "ONLINE",
    "statusReason": None,
    "paused": False,
    "lastCheckedAt": "2026-01-02T03:04:05+00:00",
    "servedToday": {"requests": 12, "earnings": "0.031"},
    "healthChecks": [
        {"checkedAt": "2026-01-02T03:04:05+00:00", "ok": True, "latencyMs": 4.5, "error": None}
    ],
}


def client(
    answer: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]],
    seen: list[httpx.Request],
    key: str | None = "inf_key",
) -> PlatformClient:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = answer(json.loads(request.content))
        return httpx.Response(status, json=body, headers={"Date": "Fri, 02 Jan 2026 03:04:05 GMT"})

    return PlatformClient("https://p.example", key, transport=httpx.MockTransport(handle))


def test_redeeming_a_code_sends_no_key_and_returns_the_new_one() -> None:
    seen: list[httpx.Request] = []
    key = {"id": "k1", "name": "node: box", "scopes": ["NODES"]}
    answer = {"data": {"redeemEnrollmentCode": {"secret": "inf_node", "apiKey": key}}}
    with client(lambda body: (200, answer), seen, key=None) as platform:
        enrolled = platform.redeem(" ABCD-EFGH ", name="box")
    assert (enrolled.secret, enrolled.key_id, enrolled.scopes) == ("inf_node", "k1", ("NODES",))
    assert "authorization" not in seen[0].headers
    assert json.loads(seen[0].content)["variables"] == {"code": "ABCD-EFGH", "name": "box"}


def test_a_used_code_is_a_one_line_refusal() -> None:
    error = {
        "message": "this enrolment code was already used",
        "extensions": {"code": "BAD_USER_INPUT"},
    }
    with (
        client(lambda body: (200, {"data": None, "errors": [error]}), [], key=None) as platform,
        pytest.raises(PlatformError) as refused,
    ):
        platform.redeem("ABCD")
    assert refused.value.message == (
        "the platform refused: this enrolment code was already used (BAD_USER_INPUT)"
    )
    assert not refused.value.retryable


def test_node_state_reads_status_pause_check_and_today() -> None:
    with client(lambda body: (200, {"data": {"node": NODE}}), []) as platform:
        state = platform.node("7")
        assert platform.server_date == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (state.status, state.paused, state.requests_today) == ("online", False, 12)
    assert state.last_check is not None
    assert state.last_check.ok
    assert state.to_json()["served_today"] == {"requests": 12, "earnings": "0.031"}


def test_set_paused_sends_the_flag_and_reads_the_new_status() -> None:
    seen: list[httpx.Request] = []
    paused = NODE | {"status": "PAUSED", "paused": True}
    with client(lambda body: (200, {"data": {"setNodePaused": paused}}), seen) as platform:
        state = platform.set_paused("7", True)
    assert json.loads(seen[0].content)["variables"] == {"id": "7", "paused": True}
    assert (state.status, state.paused) == ("paused", True)


def test_check_key_tells_a_node_key_from_one_that_can_spend() -> None:
    forbidden = {"message": "needs ACCOUNT", "extensions": {"code": "FORBIDDEN"}}

    def node_key(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "balance" in body["query"]:
            return 200, {"data": None, "errors": [forbidden]}
        return 200, {"data": {"me": {"id": "1", "nodes": []}}}

    with client(node_key, []) as platform:
        assert platform.check_key() is False
    with client(lambda body: (200, {"data": {"me": {"id": "1", "balance": "1"}}}), []) as platform:
        assert platform.check_key() is True


def test_a_garbled_node_is_a_platform_error() -> None:
    with (
        client(lambda body: (200, {"data": {"node": {"name": "x"}}}), []) as platform,
        pytest.raises(PlatformError, match="no node"),
    ):
        platform.node("7")


def test_a_platforms_words_reach_the_terminal_without_escape_sequences() -> None:
    reason = "runtime gone\x1b]0;pwned\x07\x1b[2J again"
    answer = {"data": {"node": {**NODE, "status": "OFFLINE", "statusReason": reason}}}
    with client(lambda body: (200, answer), []) as platform:
        state = platform.node("7")
    assert state.status_reason == "runtime gone]0;pwned[2J again"
    assert all(c.isprintable() for c in state.status_reason)
