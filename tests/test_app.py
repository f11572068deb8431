"""The app's edges: health probes, security headers, body limits, GraphQL guards, SDL."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import http_client, started

from infer.config import Settings
from infer.schema import schema
from infer.security.apikeys import generate_key

SDL = Path(__file__).resolve().parent.parent / "graphql" / "schema.graphql"


async def test_probes_answer_when_the_database_is_reachable(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200


async def test_readyz_is_503_when_the_database_is_unreachable(settings: Settings) -> None:
    unreachable = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://nobody@127.0.0.1:9/none"}
    )
    async with started(unreachable) as (app, _), http_client(app) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert "nobody" not in ready.text


async def test_an_unexpected_failure_under_the_api_is_an_openai_error_telling_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    # The key lookup finds no tables (a database never migrated): a failure no handler expects.
    # (An unreachable database is expected: tests/test_outages.py.)
    unmigrated = settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'hunter2-nobody.db'}"}
    )
    async with started(unmigrated) as (app, _):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.post(
                "/api/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {generate_key()}"},
            )
            graphql = await http.post("/graphql", json={"query": "{ me { id } }"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "the server had an error processing your request",
            "type": "api_error",
            "param": None,
            "code": "internal_error",
        }
    }
    for text in (response.text, graphql.text):
        assert "nobody" not in text
        assert "hunter2" not in text
        assert "api_keys" not in text


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/v1/chat/completions", 405, "method_not_allowed"),
        ("POST", "/api/v1/models", 405, "method_not_allowed"),
        ("GET", "/api/v1/completions", 405, "method_not_allowed"),
        ("POST", "/api/v1/audio/speech", 404, "unknown_url"),
        ("GET", "/api/v2/models", 404, "unknown_url"),
    ],
)
async def test_unknown_api_urls_and_methods_get_openai_errors(
    client: httpx.AsyncClient, method: str, path: str, status: int, code: str
) -> None:
    # The `openai` SDK reads `error.message` from these, as from any other error.
    response = await client.request(method, path)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert f"{method} {path}" in error["message"]
    if status == 405:
        assert response.headers["allow"] in error["message"]


async def test_unknown_urls_elsewhere_stay_plain(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.text == "Not Found"


async def test_responses_carry_security_headers(client: httpx.AsyncClient) -> None:
    headers = (await client.get("/healthz")).headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"


async def test_oversize_bodies_get_413(client: httpx.AsyncClient) -> None:
    big = "x" * (1024 * 1024 + 1)
    response = await client.post("/graphql", json={"query": big})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_deep_queries_are_refused(client: httpx.AsyncClient) -> None:
    deep = "{ me " + "{ apiKeys " * 14 + "{ id }" + " }" * 14 + " }"
    body = (await client.post("/graphql", json={"query": deep})).json()
    assert body.get("data") is None
    assert "exceeds maximum operation depth" in body["errors"][0]["message"]


async def test_too_many_aliases_are_refused(client: httpx.AsyncClient) -> None:
    aliases = " ".join(f"a{i}: me {{ id }}" for i in range(40))
    body = (await client.post("/graphql", json={"query": "{ " + aliases + " }"})).json()
    assert "aliases" in body["errors"][0]["message"].lower()


def _refusal(response: httpx.Response, status: int, message: str) -> None:
    """Refused before any operation runs, still in GraphQL's error shape."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    errors = response.json()["errors"]
    assert errors[0]["extensions"]["code"] == "BAD_REQUEST"
    assert message in errors[0]["message"]


async def test_batched_operations_are_not_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json=[{"query": "{ me { id } }"}] * 2)
    _refusal(response, 400, "Batching is not enabled")


async def test_mutations_cannot_run_over_get(client: httpx.AsyncClient) -> None:
    query = 'mutation { signUp(email: "a@example.com", password: "long enough pass") { id } }'
    response = await client.get("/graphql", params={"query": query})
    _refusal(response, 400, "mutations are not allowed when using GET")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_posts_are_refused(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post(
        "/graphql", content=b'{"query": "{ me { id } }"}', headers={"content-type": content_type}
    )
    _refusal(response, 400, "Unsupported content type")


@pytest.mark.parametrize(
    ("body", "message"),
    [(b'{"query": ', "Unable to parse request body as JSON"), (b"{}", "No GraphQL query")],
)
async def test_bodies_without_a_query_are_refused(
    client: httpx.AsyncClient, body: bytes, message: str
) -> None:
    response = await client.post(
        "/graphql", content=body, headers={"content-type": "application/json"}
    )
    _refusal(response, 400, message)


def test_schema_file_matches_the_code() -> None:
    """Regenerate: strawberry export-schema infer.schema:schema --output graphql/schema.graphql"""
    assert SDL.read_text().strip() == schema.as_str().strip()


async def test_listed_origins_may_call_with_a_key_but_never_ride_on_the_cookie(
    settings: Settings,
) -> None:
    allowed = settings.model_copy(update={"cors_origins": ("https://app.example",)})
    async with started(allowed) as (app, _), http_client(app) as http:
        preflight = await http.options(
            "/api/v1/chat/completions",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-credentials" not in preflight.headers
        other = await http.options(
            "/api/v1/models",
            headers={"origin": "https://evil.example", "access-control-request-method": "GET"},
        )
        assert "access-control-allow-origin" not in other.headers
        signup = 'mutation { signUp(email: "a@example.com", password: "long pass phrase") { id } }'
        await http.post("/graphql", json={"query": signup})
        cross = await http.post(
            "/graphql", json={"query": "{ me { id } }"}, headers={"origin": "https://app.example"}
        )
    assert cross.status_code == 403
