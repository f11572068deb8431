"""Keys and exposure: rotation rules, retiring keys, introspection, provider names, prices."""

from __future__ import annotations

import httpx
import pytest
from conftest import CREATE_KEY, PASSWORD, SIGN_UP, GraphQLClient, http_client, started

from infer.config import Settings
from infer.keys.service import MAX_ACTIVE_KEYS
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

ME_KEYS = "{ me { apiKeys { id revokedAt expiresAt } } }"
ROTATE = (
    "mutation($id: ID!, $g: Int! = 0) "
    "{ rotateApiKey(id: $id, gracePeriodSeconds: $g) { apiKey { id } secret } }"
)
INTROSPECT = "{ __schema { queryType { name } } }"
SET_NAME = "mutation($n: String!) { setDisplayName(name: $n) { displayName } }"
PROVIDERS = "{ providers { id name } }"
REGISTER = (
    "mutation($input: RegisterNodeInput!) "
    "{ registerNode(input: $input) { id models { name inputPerMillion outputPerMillion } } }"
)


def _code(body: dict[str, object]) -> str:
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


async def _only_key_id(graphql: GraphQLClient) -> str:
    body = await graphql(ME_KEYS)
    return str(body["data"]["me"]["apiKeys"][0]["id"])  # type: ignore[index]


async def _rotate(graphql: GraphQLClient, key_id: str, grace: int) -> dict[str, object]:
    return await graphql(ROTATE, {"id": key_id, "g": grace}, expect_errors=True)


async def test_a_key_in_its_grace_period_cannot_be_rotated_again(
    graphql: GraphQLClient, user_key: str
) -> None:
    key_id = await _only_key_id(graphql)
    assert "errors" not in await _rotate(graphql, key_id, 3600)
    for grace in (3600, 0):
        assert _code(await _rotate(graphql, key_id, grace)) == "CONFLICT"
    keys = (await graphql(ME_KEYS))["data"]["me"]["apiKeys"]  # type: ignore[index]
    assert len(keys) == 2


async def test_a_rotation_with_grace_may_not_go_over_the_active_key_limit(
    graphql: GraphQLClient, user_key: str
) -> None:
    for number in range(MAX_ACTIVE_KEYS - 1):
        await graphql(CREATE_KEY, {"n": f"k{number}"})
    key_id = await _only_key_id(graphql)
    refused = await _rotate(graphql, key_id, 3600)
    assert _code(refused) == "BAD_USER_INPUT"
    assert f"at most {MAX_ACTIVE_KEYS} active keys" in refused["errors"][0]["message"]  # type: ignore[index]
    # Ending the old key at once keeps the count, so that rotation is allowed.
    assert "errors" not in await _rotate(graphql, key_id, 0)


async def test_a_retiring_key_calls_the_gateway_but_not_graphql(
    graphql: GraphQLClient, user_key: str
) -> None:
    key_id = await _only_key_id(graphql)
    rotated = await _rotate(graphql, key_id, 3600)
    new_secret = str(rotated["data"]["rotateApiKey"]["secret"])  # type: ignore[index]
    old_on_graphql = await graphql.http.post(
        "/graphql", json={"query": ME_KEYS}, headers={"Authorization": f"Bearer {user_key}"}
    )
    assert old_on_graphql.status_code == 403
    assert old_on_graphql.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # It may not rotate or revoke anything either, including its own replacement.
    old_rotating = await graphql.http.post(
        "/graphql",
        json={"query": ROTATE, "variables": {"id": key_id}},
        headers={"Authorization": f"Bearer {user_key}"},
    )
    assert old_rotating.status_code == 403
    old_on_gateway = await graphql.http.get(
        "/api/v1/models", headers={"Authorization": f"Bearer {user_key}"}
    )
    assert old_on_gateway.status_code == 200
    assert (await graphql(ME_KEYS, key=new_secret))["data"]["me"]["apiKeys"]  # type: ignore[index]


@pytest.fixture
def production(settings: Settings) -> Settings:
    return settings.model_copy(update={"env": "production"})


async def test_anonymous_introspection_is_refused_in_production(production: Settings) -> None:
    async with started(production) as (app, _), http_client(app) as http:
        graphql = GraphQLClient(http)
        anonymous = await graphql(INTROSPECT, expect_errors=True)
        assert anonymous["data"] is None
        assert _code(anonymous) == "UNAUTHENTICATED"
        assert "graphql/schema.graphql" in anonymous["errors"][0]["message"]  # type: ignore[index]
        nested = await graphql('{ __type(name: "Query") { name } }', expect_errors=True)
        assert _code(nested) == "UNAUTHENTICATED"
        await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
        signed_in = await graphql(INTROSPECT)
        assert signed_in["data"] == {"__schema": {"queryType": {"name": "Query"}}}


async def test_introspection_stays_open_outside_production(graphql: GraphQLClient) -> None:
    body = await graphql(INTROSPECT)
    assert body["data"] == {"__schema": {"queryType": {"name": "Query"}}}


async def _operator(graphql: GraphQLClient, email: str) -> str:
    await graphql("mutation { logOut }", expect_errors=True)
    await graphql(SIGN_UP, {"e": email, "p": PASSWORD})
    body = await graphql(CREATE_KEY, {"n": "k"})
    return str(body["data"]["createApiKey"]["secret"])  # type: ignore[index]


async def _sell(graphql: GraphQLClient, key: str, url: str, prices: list[dict[str, str]]) -> None:
    node = {"name": "n1", "runtime": "OLLAMA", "endpoint": url, "prices": prices}
    await graphql(REGISTER, {"input": node}, key=key)


async def test_providers_show_a_neutral_default_then_the_chosen_name(
    graphql: GraphQLClient,
) -> None:
    operator = await _operator(graphql, "ann.smith@example.com")
    prices = [{"model": "llama3.2:1b", "inputPerMillion": "0.1", "outputPerMillion": "0.2"}]
    with serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b",))) as url:
        await _sell(graphql, operator, url, prices)
    buyer = await _operator(graphql, "bob@example.com")
    [before] = (await graphql(PROVIDERS, key=buyer))["data"]["providers"]  # type: ignore[index]
    assert before["name"] == f"provider-{before['id'].replace('-', '')[:8]}"

    chosen = await graphql(SET_NAME, {"n": "  Ann's   GPUs "}, key=operator, expect_errors=True)
    assert _code(chosen) == "BAD_USER_INPUT"  # an apostrophe is not in the set
    chosen = await graphql(SET_NAME, {"n": "  Ann   GPUs "}, key=operator)
    assert chosen["data"] == {"setDisplayName": {"displayName": "Ann GPUs"}}
    [after] = (await graphql(PROVIDERS, key=buyer))["data"]["providers"]  # type: ignore[index]
    assert after == {"id": before["id"], "name": "Ann GPUs"}


@pytest.mark.parametrize(
    "name",
    ["ab", "x" * 33, "-ann", "ann\x00", "ann\u202egpu", "\u0410nn GPUs", "provider-1234abcd", ""],
)
async def test_bad_display_names_are_refused(graphql: GraphQLClient, name: str) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    body = await graphql(SET_NAME, {"n": name}, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"


async def test_display_names_are_unique_whatever_the_letter_case(graphql: GraphQLClient) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    await graphql(SET_NAME, {"n": "Fast GPUs"})
    await graphql(SET_NAME, {"n": "FAST gpus"})  # one's own name in another case is fine
    await graphql("mutation { logOut }")
    await graphql(SIGN_UP, {"e": "bob@example.com", "p": PASSWORD})
    body = await graphql(SET_NAME, {"n": "fast GPUs"}, expect_errors=True)
    assert _code(body) == "CONFLICT"
    me = await graphql("{ me { displayName } }")
    assert me["data"]["me"]["displayName"].startswith("provider-")  # type: ignore[index]


async def test_one_price_may_be_zero_but_a_model_priced_zero_for_both_is_not_for_sale(
    graphql: GraphQLClient, user_key: str
) -> None:
    prices = [
        {"model": "llama3.2:1b", "inputPerMillion": "0", "outputPerMillion": "0.5"},
        {"model": "qwen2.5:0.5b", "inputPerMillion": "0.00", "outputPerMillion": "0"},
    ]
    with serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b", "qwen2.5:0.5b"))) as url:
        await _sell(graphql, user_key, url, prices)
        listed = await graphql.http.get(
            "/api/v1/models", headers={"Authorization": f"Bearer {user_key}"}
        )
    assert [m["id"] for m in listed.json()["data"]] == ["llama3.2:1b"]


@pytest.mark.parametrize(
    "price", ["1e3", " 5", "\uff15", "\u0665", "Infinity", "NaN", "0.0000001", "-1", "1_0", 5]
)
async def test_prices_that_are_not_plain_decimals_are_refused(
    graphql: GraphQLClient, user_key: str, price: object
) -> None:
    prices = [{"model": "m", "inputPerMillion": price, "outputPerMillion": "1"}]
    node = {"name": "n1", "runtime": "OLLAMA", "endpoint": "http://127.0.0.1:9", "prices": prices}
    body = await graphql(REGISTER, {"input": node}, key=user_key, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    assert (await graphql("{ me { nodes { id } } }"))["data"]["me"]["nodes"] == []  # type: ignore[index]


async def test_the_old_key_still_answers_on_the_gateway_when_rotated_with_grace(
    client: httpx.AsyncClient, graphql: GraphQLClient, user_key: str
) -> None:
    key_id = await _only_key_id(graphql)
    await _rotate(graphql, key_id, 3600)
    response = await client.get("/api/v1/models", headers={"Authorization": f"Bearer {user_key}"})
    assert response.status_code == 200
