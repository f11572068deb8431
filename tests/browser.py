"""A harness for real-browser tests: the platform on loopback, Chromium, and its complaints."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from conftest import CREATE_KEY, PASSWORD, SIGN_UP, TEST_ENCRYPTION_KEYS
from pydantic import SecretStr

from infer.app import create_app
from infer.audit import ClientInfo
from infer.billing.credits import grant_credits
from infer.config import Settings
from infer.db import Database
from infer.simulator import serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"
MY_ID = "{ me { id } }"
T = TypeVar("T")

# Injected before any page script, so no inline script is needed: a CSP violation becomes
# a console error even when the browser would not log it (e.g. a blocked style attribute).
REPORT_CSP = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`
    + ` at ${e.sourceFile || document.location.pathname}:${e.lineNumber}`);
});
"""


def browser_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


def in_thread(work: Callable[[], Awaitable[T]]) -> T:
    """Runs a coroutine to completion on a thread of its own.

    Playwright's sync API keeps an event loop on this thread, so asyncio.run cannot.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result(timeout=60)  # type: ignore[arg-type]


def platform_settings(directory: Path, template: Path) -> Settings:
    """The platform on SQLite: private endpoints allowed, a node checked every second."""
    database = directory / "infer.db"
    shutil.copyfile(template, database)
    return Settings(
        database_url=f"sqlite+aiosqlite:///{database}",
        secret_key=SecretStr("browser-session-secret-" + "x" * 32),
        lookup_key=SecretStr("browser-lookup-secret-" + "y" * 32),
        encryption_keys=SecretStr(TEST_ENCRYPTION_KEYS),
        secrets_file=directory / "secrets.json",
        spool_dir=directory / "spool",
        health_interval=1.0,
        figures_interval=1.0,
        allow_private_endpoints=True,
    )


@dataclass
class Platform:
    """The platform served over HTTP on loopback, and the API calls tests set it up with."""

    url: str
    settings: Settings

    def graphql(self, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> Any:
        """The data of one GraphQL call with an API key (key=…) or a fresh client."""
        key = kw.pop("key", None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"query": query, "variables": variables or {}}
        response = httpx.post(f"{self.url}/graphql", json=body, headers=headers, timeout=30)
        answer = response.json()
        assert "errors" not in answer, answer
        return answer["data"]

    def sign_up(self, email: str) -> str:
        """A new account (through the API, not the page) and the secret of a key of it."""
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for query, variables in (
                (SIGN_UP, {"e": email, "p": PASSWORD}),
                (CREATE_KEY, {"n": "k"}),
            ):
                answer = http.post("/graphql", json={"query": query, "variables": variables}).json()
                assert "errors" not in answer, answer
        return str(answer["data"]["createApiKey"]["secret"])

    def user_id(self, key: str) -> str:
        return str(self.graphql(MY_ID, key=key)["me"]["id"])

    def grant(self, email: str, amount: int) -> None:
        """Credits, as `infer credits grant` gives them (micro-USD)."""

        async def grant() -> None:
            db = Database.from_url(self.settings.database_url)
            try:
                await grant_credits(db, email=email, amount=amount, client=ClientInfo.cli())
            finally:
                await db.dispose()

        in_thread(grant)

    def register_node(self, key: str, *, endpoint: str, name: str, model: str) -> str:
        """An online node of the key's owner, selling the model at µ$1 / µ$2 a token."""
        prices = [{"model": model, "inputPerMillion": "1", "outputPerMillion": "2"}]
        node_input = {"name": name, "runtime": "OLLAMA", "endpoint": endpoint, "prices": prices}
        node = self.graphql(REGISTER, {"input": node_input}, key=key)["registerNode"]
        assert node["status"] == "ONLINE", node
        return str(node["id"])

    def models(self, key: str) -> httpx.Response:
        """GET /api/v1/models with the key: 200 while it works, 401 once it does not."""
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.get(f"{self.url}/api/v1/models", headers=headers, timeout=30)

    def complete(
        self, key: str, model: str, text: str = "Tell me about the sea."
    ) -> dict[str, Any]:
        """One chat completion through the REST API, as an OpenAI client makes it."""
        response = httpx.post(
            f"{self.url}/api/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 16,
            },
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


@contextlib.contextmanager
def serve_platform(settings: Settings) -> Iterator[Platform]:
    """Serves the platform at its public URL, so pages show the address it really has."""
    port = free_port()
    settings = settings.model_copy(update={"public_url": f"http://127.0.0.1:{port}"})
    with serve_in_thread(create_app(settings), lifespan="on", port=port) as url:
        yield Platform(url=url, settings=settings)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Complaints:
    """What the browser and the server said that a finished product never says."""

    problems: list[str] = field(default_factory=list)
    # Statuses a test provokes on purpose (a 422 form): Chromium logs each failed fetch
    # as a console error, which is the browser's note, not a fault of the page.
    expected: set[int] = field(default_factory=set)

    def expect_status(self, status: int) -> None:
        self.expected.add(status)

    def watch(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("response", self._response)
        page.on("requestfailed", self._failed)

    def _console(self, message: Any) -> None:
        provoked = (f"the server responded with a status of {n} " for n in self.expected)
        if message.text.startswith("Failed to load resource") and any(
            text in message.text for text in provoked
        ):
            return
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text} ({message.location})")

    def _response(self, response: Any) -> None:
        if response.status >= 500:
            self.problems.append(f"{response.status} from {response.request.method} {response.url}")
        document = response.request.resource_type == "document" and response.status < 300
        if document and "content-security-policy" not in response.headers:
            self.problems.append(f"no CSP on {response.url}")

    def _failed(self, request: Any) -> None:
        # A navigation away cancels the page's pending requests (the self-refresh): not a fault.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"failed {request.method} {request.url}: {request.failure}")

    def assert_none(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


def artifact_dir(default: Path) -> Path:
    """Where screenshots go: $INFER_TEST_ARTIFACTS, or the given folder."""
    folder = Path(os.environ.get("INFER_TEST_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
