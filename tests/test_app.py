"""The app's edges: health probes, security headers, body limits, GraphQL guards, SDL."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import http_client, started

from infer.config import Settings
from infer.schema import schema

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


async def test_batched_operations_are_not_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json=[{"query": "{ me { id } }"}] * 2)
    assert response.status_code == 400


async def test_mutations_cannot_run_over_get(client: httpx.AsyncClient) -> None:
    query = 'mutation { signUp(email: "a@example.com", password: "long enough pass") { id } }'
    response = await client.get("/graphql", params={"query": query})
    assert response.status_code in (400, 405)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_posts_are_refused(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post(
        "/graphql", content=b'{"query": "{ me { id } }"}', headers={"content-type": content_type}
    )
    assert response.status_code in (400, 415)


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
