"""The platform's GraphQL API as the agent uses it: registerNode with a Bearer API key."""

from __future__ import annotations

from dataclasses import dataclass
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
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# Codes after which the same request may well succeed later.
RETRYABLE_CODES = frozenset({"RATE_LIMITED", "INTERNAL", "INTERNAL_SERVER_ERROR"})
MAX_MESSAGE = 300


@dataclass(frozen=True, slots=True)
class RegisteredNode:
    """The platform's answer: the node's id and status (a new endpoint starts "pending")."""

    id: str
    status: str
    status_reason: str | None


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
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


class PlatformClient:
    """One HTTP client for one platform and API key; use it as a context manager."""

    def __init__(
        self,
        platform: str,
        api_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.url = graphql_url(platform)
        if not api_key.strip() or not api_key.strip().isprintable():
            raise BadInput("the API key is empty or not printable", param="api-key")
        headers = {
            "Authorization": f"Bearer {api_key.strip()}",
            "Accept": "application/json",
            "User-Agent": f"infer-agent/{__version__}",
        }
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

    def execute(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Runs one operation; returns `data`, or raises PlatformError with a one-line message."""
        try:
            response = self._http.post(self.url, json={"query": query, "variables": variables})
        except httpx.TimeoutException as exc:
            raise PlatformError(
                f"the platform at {self.url} did not answer in time", retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            raise PlatformError(
                f"cannot reach the platform at {self.url}: {_one_line(exc) or type(exc).__name__}",
                retryable=True,
            ) from exc
        return self._data(response)

    def _data(self, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if response.is_redirect:
            where = response.headers.get("location", "elsewhere")
            raise PlatformError(f"the platform redirects to {where}; pass that as --platform")
        try:
            body = response.json()
        except ValueError:
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
