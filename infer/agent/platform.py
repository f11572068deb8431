"""The platform's GraphQL API as the agent uses it: enrolment, registration, status, pause."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from infer import __version__
from infer.agent.errors import PlatformError
from infer.agent.register import Registration
from infer.errors import BadInput

REGISTER_NODE = """
mutation RegisterNode($input: RegisterNodeInput!) {
  registerNode(input: $input) { id status statusReason }
}
"""
REDEEM_CODE = """
mutation RedeemEnrollmentCode($code: String!, $name: String) {
  redeemEnrollmentCode(code: $code, name: $name) { secret apiKey { id name scopes } }
}
"""
NODE_FIELDS = """
  id name status statusReason paused lastCheckedAt
  servedToday { requests earnings }
  healthChecks(last: 1) { checkedAt ok latencyMs error }
"""
NODE_STATE = f"query NodeState($id: ID!) {{ node(id: $id) {{ {NODE_FIELDS} }} }}"
MY_NODES = f"query MyNodes {{ me {{ nodes {{ {NODE_FIELDS} }} }} }}"
SET_PAUSED = f"""
mutation SetNodePaused($id: ID!, $paused: Boolean!) {{
  setNodePaused(id: $id, paused: $paused) {{ {NODE_FIELDS} }}
}}
"""
WHO_AM_I = "query WhoAmI { me { id nodes { id } } }"
NODE_THERE = "query NodeThere($id: ID!) { node(id: $id) { id } }"
CAN_SPEND = "query CanSpend { me { balance } }"
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# Codes after which the same request may well succeed later.
RETRYABLE_CODES = frozenset({"RATE_LIMITED", "INTERNAL", "INTERNAL_SERVER_ERROR"})
MAX_MESSAGE = 300
MAX_ANSWER = 4 * 1024 * 1024  # a node list of the largest operator is far less


@dataclass(frozen=True, slots=True)
class RegisteredNode:
    """The platform's answer: the node's id and status (a new endpoint starts "pending")."""

    id: str
    status: str
    status_reason: str | None


@dataclass(frozen=True, slots=True)
class EnrolledKey:
    """What an enrolment code is exchanged for: a node-scoped key, shown this once."""

    secret: str
    key_id: str
    name: str
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """The platform's newest check of a node."""

    checked_at: datetime | None
    ok: bool
    latency_ms: float | None
    error: str | None


@dataclass(frozen=True, slots=True)
class NodeState:
    """A node as the platform sees it; status is lower case (online, paused, offline, …)."""

    id: str
    name: str
    status: str
    status_reason: str | None
    paused: bool
    last_checked_at: datetime | None
    requests_today: int
    earnings_today: str
    last_check: HealthCheck | None

    def to_json(self) -> dict[str, Any]:
        check = self.last_check
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "status_reason": self.status_reason,
            "paused": self.paused,
            "last_checked_at": _iso(self.last_checked_at),
            "served_today": {"requests": self.requests_today, "earnings": self.earnings_today},
            "last_check": None
            if check is None
            else {
                "checked_at": _iso(check.checked_at),
                "ok": check.ok,
                "latency_ms": check.latency_ms,
                "error": check.error,
            },
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _datetime(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def node_state(node: object) -> NodeState:
    """A `Node` object of the GraphQL answer as a NodeState; PlatformError if it is not one."""
    if not isinstance(node, dict) or not isinstance(node.get("id"), str | int):
        raise PlatformError("the platform's answer has no node")
    served = node.get("servedToday")
    served = served if isinstance(served, dict) else {}
    requests = served.get("requests")
    checks = node.get("healthChecks")
    newest = checks[0] if isinstance(checks, list) and checks else None
    reason = node.get("statusReason")
    return NodeState(
        id=str(node["id"]),
        name=str(node.get("name") or ""),
        status=str(node.get("status") or "unknown").lower(),
        status_reason=_one_line(reason) if reason else None,
        paused=node.get("paused") is True,
        last_checked_at=_datetime(node.get("lastCheckedAt")),
        requests_today=requests if isinstance(requests, int) else 0,
        earnings_today=str(served.get("earnings") or "0"),
        last_check=None
        if not isinstance(newest, dict)
        else HealthCheck(
            checked_at=_datetime(newest.get("checkedAt")),
            ok=newest.get("ok") is True,
            latency_ms=newest.get("latencyMs")
            if isinstance(newest.get("latencyMs"), int | float)
            else None,
            error=_one_line(newest["error"]) if newest.get("error") else None,
        ),
    )


def graphql_url(platform: str) -> str:
    """The GraphQL URL of a platform given as its base URL (or already ending in /graphql)."""
    parts = urlsplit(platform.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("--platform must be an http(s) URL, such as https://infer.example.com")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise BadInput("--platform takes a plain URL, without credentials, query or fragment")
    path = parts.path.rstrip("/")
    if not path.endswith("/graphql"):
        path += "/graphql"
    return f"{parts.scheme}://{parts.netloc}{path}"


def is_plaintext(url: str) -> bool:
    """True for http:// to anything but this machine: a key sent there can be read."""
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1")


def _one_line(text: object) -> str:
    """One printable line: a platform's words reach a terminal, where an escape sequence
    would act (move the cursor, rewrite the title) rather than show."""
    line = " ".join("".join(c for c in word if c.isprintable()) for word in str(text).split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


class PlatformClient:
    """One HTTP client for one platform and API key; use it as a context manager.

    Without a key (None) it can only redeem an enrolment code.
    """

    def __init__(
        self,
        platform: str,
        api_key: str | None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.url = graphql_url(platform)
        headers = {"Accept": "application/json", "User-Agent": f"infer-agent/{__version__}"}
        if api_key is not None:
            if not api_key.strip() or not api_key.strip().isprintable():
                raise BadInput("the API key is empty or not printable", param="api-key")
            headers["Authorization"] = f"Bearer {api_key.strip()}"
        # The platform's clock, from the Date header of its last answer (for clock skew).
        self.server_date: datetime | None = None
        # No redirects: the key must only ever go to the URL the operator gave.
        self._http = httpx.Client(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def register_node(self, registration: Registration) -> RegisteredNode:
        """Adds the node, or updates the caller's node of the same name."""
        data = self.execute(REGISTER_NODE, registration.variables())
        node = data.get("registerNode")
        if not isinstance(node, dict) or not isinstance(node.get("id"), str | int):
            raise PlatformError("the platform's answer to registerNode has no node id")
        reason = node.get("statusReason")
        return RegisteredNode(
            id=str(node["id"]),
            status=str(node.get("status") or "unknown").lower(),
            status_reason=_one_line(reason) if reason else None,
        )

    def redeem(self, code: str, *, name: str | None = None) -> EnrolledKey:
        """Exchanges a one-time enrolment code for a node-scoped key (needs no key)."""
        code = code.strip()
        if not code or not code.isprintable() or len(code) > 100:
            raise BadInput("--code is empty or not an enrolment code", param="code")
        data = self.execute(REDEEM_CODE, {"code": code, "name": name})
        enrolled = data.get("redeemEnrollmentCode")
        enrolled = enrolled if isinstance(enrolled, dict) else {}
        key, secret = enrolled.get("apiKey"), enrolled.get("secret")
        if not isinstance(key, dict) or not isinstance(secret, str) or not secret:
            raise PlatformError("the platform's answer to redeemEnrollmentCode has no key")
        scopes = key.get("scopes")
        return EnrolledKey(
            secret=secret,
            key_id=str(key.get("id") or ""),
            name=str(key.get("name") or ""),
            scopes=tuple(str(s) for s in scopes) if isinstance(scopes, list) else (),
        )

    def node(self, node_id: str) -> NodeState:
        """One of the caller's nodes, as the platform sees it."""
        return node_state(self.execute(NODE_STATE, {"id": node_id}).get("node"))

    def nodes(self) -> tuple[NodeState, ...]:
        """All of the caller's nodes."""
        me = self.execute(MY_NODES, {}).get("me")
        nodes = me.get("nodes") if isinstance(me, dict) else None
        if not isinstance(nodes, list):
            raise PlatformError("the platform's answer to me.nodes has no node list")
        return tuple(node_state(node) for node in nodes)

    def confirm_node(self, node_id: str) -> None:
        """Raises PlatformError unless this key may still see the node (not revoked, not
        deregistered): the agent's check on a round with nothing to register."""
        found = self.execute(NODE_THERE, {"id": node_id}).get("node")
        if not isinstance(found, dict) or found.get("id") != node_id:
            raise PlatformError(f"the platform has no node {node_id} for this key any more")

    def set_paused(self, node_id: str, paused: bool) -> NodeState:
        """Pauses (drains: no new requests, in-flight ones finish) or resumes a node."""
        data = self.execute(SET_PAUSED, {"id": node_id, "paused": paused})
        return node_state(data.get("setNodePaused"))

    def check_key(self) -> bool:
        """Raises PlatformError unless the key may manage nodes; True if it can also spend."""
        self.execute(WHO_AM_I, {})
        try:
            self.execute(CAN_SPEND, {})
        except PlatformError as exc:
            if exc.platform_code == "FORBIDDEN":
                return False
            raise
        return True

    def execute(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Runs one operation; returns `data`, or raises PlatformError with a one-line message."""
        try:
            with self._http.stream(
                "POST", self.url, json={"query": query, "variables": variables}
            ) as response:
                raw = bytearray()
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_ANSWER:
                        raise PlatformError(
                            f"the answer from {self.url} is too large (over {MAX_ANSWER} bytes)"
                        )
        except httpx.TimeoutException as exc:
            raise PlatformError(
                f"the platform at {self.url} did not answer in time", retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            raise PlatformError(
                f"cannot reach the platform at {self.url}: {_one_line(exc) or type(exc).__name__}",
                retryable=True,
            ) from exc
        return self._data(response, bytes(raw))

    def _data(self, response: httpx.Response, raw: bytes) -> dict[str, Any]:
        status = response.status_code
        self.server_date = _header_date(response.headers.get("date"))
        if response.is_redirect:
            where = _one_line(response.headers.get("location", "elsewhere"))
            raise PlatformError(f"the platform redirects to {where}; pass that as --platform")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or brackets nested past any limit
            body = None
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors:
            raise _refusal(errors[0], status)
        if not response.is_success:
            raise PlatformError(
                f"the platform answered HTTP {status} at {self.url}",
                retryable=status >= 500 or status == 429,
            )
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise PlatformError(f"the answer from {self.url} is not a GraphQL response")
        return data


def _header_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    # `-0000` (and a date with no zone) come back naive; HTTP dates are UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _refusal(error: object, status: int) -> PlatformError:
    """A GraphQL error as one line: its message and, when given, extensions.code."""
    details = error if isinstance(error, dict) else {}
    extensions = details.get("extensions")
    code = extensions.get("code") if isinstance(extensions, dict) else None
    code = str(code) if code else None
    message = _one_line(details.get("message") or "no message")
    return PlatformError(
        f"the platform refused: {message}" + (f" ({code})" if code else ""),
        platform_code=code,
        retryable=code in RETRYABLE_CODES or status >= 500,
    )
