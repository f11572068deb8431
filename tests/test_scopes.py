"""API key scopes: what GATEWAY, NODES and ACCOUNT keys may call, on every edge."""

from __future__ import annotations

import httpx
import pytest
from conftest import PASSWORD, SIGN_UP, GraphQLClient
from dashboard import Dashboard
from graphql import parse, validate

from infer.models import ALL_SCOPES, ApiKeyScope
from infer.schema import schema
from infer.schema.scopes import _rule_for

CREATE = (
    "mutation($n: String!, $s: [ApiKeyScope!]) "
    "{ createApiKey(name: $n, scopes: $s) { apiKey { id scopes } secret } }"
)
REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id name status } }"
NODE = "query($id: ID!) { node(id: $id) { id name } }"

# Every field of Query, Mutation and User, as a NODES-only key finds it. A new field
# must be put in one list or the other (test_every_field_is_classified_for_node_keys).
NODES_ALLOWED = {
    "Query": {"me", "node", "providers", "provider", "models", "model"},
    "User": {"id", "email", "nodes"},
    "Mutation": {
        "registerNode",
        "updateNode",
        "setModelPrices",
        "setModelCapabilities",
        "deregisterNode",
        "setNodePaused",
        "redeemEnrollmentCode",
    },
}
NODES_REFUSED = {
    "Query": set(),
    "User": {
        "role",
        "displayName",
        "googleLinked",
        "hasPassword",
        "balance",
        "apiKeys",
        "notifications",
        "unreadNotificationCount",
        "sessions",
        "auditLog",
        "usage",
        "earnings",
        "earningsReport",
        "usageRecords",
        "transactions",
    },
    "Mutation": {
        "signUp",
        "logIn",
        "logOut",
        "endSession",
        "changePassword",
        "setPassword",
        "setDisplayName",
        "createApiKey",
        "rotateApiKey",
        "revokeApiKey",
        "setApiKeyLimits",
        "setApiKeyBudget",
        "createReview",
        "updateReview",
        "deleteReview",
        "replyToReview",
        "updateProviderProfile",
        "markNotificationsRead",
        "createEnrollmentCode",
    },
}


def _code(body: dict[str, object]) -> str:
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


def _message(body: dict[str, object]) -> str:
    return str(body["errors"][0]["message"])  # type: ignore[index]


async def _key(graphql: GraphQLClient, *scopes: str) -> str:
    body = await graphql(CREATE, {"n": "-".join(scopes) or "all", "s": list(scopes) or None})
    return str(body["data"]["createApiKey"]["secret"])  # type: ignore[index]


@pytest.fixture
async def signed_in(graphql: GraphQLClient) -> GraphQLClient:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    return graphql


def _document(type_name: str, field: str) -> str:
    if type_name == "User":
        return f"query {{ me {{ {field} }} }}"
    return f"{'mutation' if type_name == 'Mutation' else 'query'} {{ {field} }}"


def test_every_field_is_classified_for_node_keys() -> None:
    rule = _rule_for(frozenset({ApiKeyScope.NODES}))
    for type_name in ("Query", "Mutation", "User"):
        fields = set(schema._schema.get_type(type_name).fields)  # type: ignore[union-attr]
        allowed, refused = NODES_ALLOWED[type_name], NODES_REFUSED[type_name]
        assert fields == allowed | refused, f"classify {type_name}: {fields ^ (allowed | refused)}"
        for field in fields:
            errors = validate(schema._schema, parse(_document(type_name, field)), [rule])
            assert bool(errors) == (field in refused), f"{type_name}.{field}"
            if errors:
                assert errors[0].extensions == {"code": "FORBIDDEN"}
                assert "account scope" in errors[0].message


async def test_a_key_without_scopes_given_has_all_three(signed_in: GraphQLClient) -> None:
    body = await signed_in(CREATE, {"n": "full"})
    assert body["data"]["createApiKey"]["apiKey"]["scopes"] == ["GATEWAY", "NODES", "ACCOUNT"]  # type: ignore[index]


async def test_an_empty_scope_list_is_refused(signed_in: GraphQLClient) -> None:
    body = await signed_in(CREATE, {"n": "none", "s": []}, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    assert "at least one scope" in _message(body)


async def test_a_node_key_on_the_gateway_is_refused_in_openais_form(
    signed_in: GraphQLClient, client: httpx.AsyncClient
) -> None:
    key = await _key(signed_in, "NODES")
    headers = {"Authorization": f"Bearer {key}"}
    chat = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
    for response in (
        await client.post("/api/v1/chat/completions", json=chat, headers=headers),
        await client.get("/api/v1/models", headers=headers),
    ):
        assert response.status_code == 403
        assert response.json() == {
            "error": {
                "message": "This API key may not call the gateway (its scopes: nodes).",
                "type": "permission_error",
                "param": None,
                "code": "insufficient_scope",
            }
        }


async def test_a_gateway_key_lists_models(
    signed_in: GraphQLClient, client: httpx.AsyncClient
) -> None:
    key = await _key(signed_in, "GATEWAY")
    response = await client.get("/api/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


async def test_a_node_key_may_not_spend_read_money_or_manage_keys(
    signed_in: GraphQLClient,
) -> None:
    key = await _key(signed_in, "NODES")
    calls: list[tuple[str, dict[str, object] | None]] = [
        ("{ me { id balance } }", None),
        (CREATE, {"n": "escalate"}),
        ("mutation { createEnrollmentCode { code } }", None),
        ("{ me { apiKeys { id } } }", None),
    ]
    for query, variables in calls:
        body = await signed_in(query, variables, key=key, expect_errors=True)
        assert body.get("data") is None
        assert _code(body) == "FORBIDDEN"
        assert "needs the account scope" in _message(body)


async def test_a_node_key_reads_who_it_is_and_its_nodes(signed_in: GraphQLClient) -> None:
    key = await _key(signed_in, "NODES")
    body = await signed_in("{ me { id email nodes { id } } models { name } }", key=key)
    assert body["data"]["me"]["email"] == "ann@example.com"  # type: ignore[index]
    assert body["data"]["me"]["nodes"] == []  # type: ignore[index]


async def test_a_gateway_key_reads_who_it_is_and_nothing_of_nodes(
    signed_in: GraphQLClient,
) -> None:
    key = await _key(signed_in, "GATEWAY")
    body = await signed_in("{ me { id email } providers { id } }", key=key)
    assert body["data"]["me"]["email"] == "ann@example.com"  # type: ignore[index]
    body = await signed_in("{ me { nodes { id } } }", key=key, expect_errors=True)
    assert _code(body) == "FORBIDDEN"
    assert "needs the nodes scope (its scopes: gateway)" in _message(body)
    body = await signed_in(
        REGISTER,
        {"input": {"name": "x", "runtime": "OLLAMA", "endpoint": "http://127.0.0.1:9"}},
        key=key,
        expect_errors=True,
    )
    assert _code(body) == "FORBIDDEN"


async def test_a_node_key_may_not_touch_another_operators_node(
    signed_in: GraphQLClient, client: httpx.AsyncClient
) -> None:
    node_key = await _key(signed_in, "NODES")
    await client.post("/graphql", json={"query": "mutation { logOut }"})
    client.cookies.clear()
    await signed_in(SIGN_UP, {"e": "bob@example.com", "p": PASSWORD})
    endpoint = "http://127.0.0.1:9"  # nothing listens: the node is registered offline
    body = await signed_in(
        REGISTER, {"input": {"name": "bobs", "runtime": "OLLAMA", "endpoint": endpoint}}
    )
    bobs = body["data"]["registerNode"]["id"]  # type: ignore[index]
    for query, variables in (
        (NODE, {"id": bobs}),
        ("mutation($id: ID!) { setNodePaused(id: $id, paused: true) { id } }", {"id": bobs}),
        ("mutation($id: ID!) { deregisterNode(id: $id) }", {"id": bobs}),
    ):
        body = await signed_in(query, variables, key=node_key, expect_errors=True)
        assert _code(body) == "NOT_FOUND"
    assert (await signed_in(NODE, {"id": bobs}))["data"]["node"]["name"] == "bobs"  # type: ignore[index]


async def test_a_key_may_not_create_a_key_beyond_its_own_scopes(
    signed_in: GraphQLClient,
) -> None:
    narrow = await _key(signed_in, "NODES", "ACCOUNT")
    body = await signed_in(CREATE, {"n": "wider"}, key=narrow, expect_errors=True)
    assert _code(body) == "FORBIDDEN"
    assert "missing: gateway" in _message(body)
    body = await signed_in(CREATE, {"n": "same", "s": ["NODES"]}, key=narrow)
    assert body["data"]["createApiKey"]["apiKey"]["scopes"] == ["NODES"]  # type: ignore[index]


async def test_a_full_key_and_the_session_have_every_scope(signed_in: GraphQLClient) -> None:
    key = await _key(signed_in)
    body = await signed_in("{ me { balance apiKeys { scopes } } }", key=key)
    assert body["data"]["me"]["apiKeys"][0]["scopes"] == [s.name for s in ApiKeyScope]  # type: ignore[index]
    assert {s.name for s in ALL_SCOPES} == {"GATEWAY", "NODES", "ACCOUNT"}


async def test_the_keys_page_creates_a_key_with_the_scopes_ticked(
    client: httpx.AsyncClient, signed_in: GraphQLClient
) -> None:
    dashboard = Dashboard(client)
    page = await dashboard.get("/keys")
    assert page.html.count('type="checkbox"') == 3
    assert page.html.count(" checked") == 3
    page = await dashboard.post(
        "/keys", {"name": "agent", "scopes": "chosen", "scope_nodes": "on"}, htmx=True
    )
    assert page.status == 201
    assert '<span class="badge">nodes</span>' in page.html
    listed = (await signed_in("{ me { apiKeys { name scopes } } }"))["data"]["me"]["apiKeys"]  # type: ignore[index]
    assert listed == [{"name": "agent", "scopes": ["NODES"]}]


async def test_the_keys_page_refuses_a_key_without_scopes_beside_the_form(
    client: httpx.AsyncClient, signed_in: GraphQLClient
) -> None:
    dashboard = Dashboard(client)
    await dashboard.get("/keys")
    page = await dashboard.post("/keys", {"name": "nothing", "scopes": "chosen"}, htmx=True)
    assert page.status == 422
    assert 'id="scopes-error"' in page.html
    assert "at least one scope" in page.text
    assert page.html.count(" checked") == 0
