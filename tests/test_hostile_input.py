"""Hostile input: stored strings, bad values, broken bodies and runtimes' model lists."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import httpx
import pytest
from conftest import CREATE_KEY, PASSWORD, SIGN_UP, GraphQLClient
from runtimes import FakeRuntime
from sqlalchemy import update
from sqlmodel import col, select

from infer.db import Database
from infer.models import ApiKey, Node, NodeModel, Review, UsageRecord, User, utcnow
from infer.nodes.monitor import MODEL_RETENTION, SEEN_AT_STEP
from infer.nodes.registry import MAX_MODELS_PER_NODE
from infer.resources import Resources
from infer.simulator import serve_in_thread

REGISTER = """
mutation($input: RegisterNodeInput!) {
  registerNode(input: $input) { id name modelsNote models { name available } }
}"""
REVIEW = (
    "mutation($p: ID!, $c: String) { createReview(providerId: $p, rating: 4, comment: $c) "
    "{ id comment } }"
)
KEYS = "{ me { apiKeys { name } } }"
NODES = "{ me { nodes { name } } }"
UNSEEN = "00000000-0000-0000-0000-000000000000"

# Each is refused in every stored string: NUL, a control, a bidi override, a zero-width space.
HOSTILE = ["nul\x00here", "bell\x07", "evil\u202egnp.exe", "zero\u200bwidth"]


def _code(body: dict[str, object]) -> str:
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


def _node(name: str, endpoint: str = "http://127.0.0.1:9", **extra: object) -> dict[str, object]:
    return {"name": name, "runtime": "OPENAI", "endpoint": endpoint, **extra}


async def _stored_key_names(db: Database) -> list[str]:
    async with db.session() as session:
        return list(await session.exec(select(ApiKey.name)))


@pytest.mark.parametrize("text", [*HOSTILE, "x" * 101, "   "])
async def test_a_hostile_key_name_is_bad_user_input_and_not_stored(
    graphql: GraphQLClient, user_key: str, db: Database, text: str
) -> None:
    body = await graphql(CREATE_KEY, {"n": text}, key=user_key, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    assert await _stored_key_names(db) == ["default"]


@pytest.mark.parametrize("text", [*HOSTILE, "x" * 101])
async def test_a_hostile_node_name_is_bad_user_input_on_register_and_rename(
    graphql: GraphQLClient, user_key: str, text: str
) -> None:
    refused = await graphql(REGISTER, {"input": _node(text)}, key=user_key, expect_errors=True)
    assert _code(refused) == "BAD_USER_INPUT"
    node = await graphql(REGISTER, {"input": _node("box")}, key=user_key)
    node_id = node["data"]["registerNode"]["id"]  # type: ignore[index]
    rename = "mutation($id: ID!, $n: String) { updateNode(id: $id, input: {name: $n}) { id } }"
    renamed = await graphql(rename, {"id": node_id, "n": text}, key=user_key, expect_errors=True)
    assert _code(renamed) == "BAD_USER_INPUT"
    listed = await graphql(NODES, key=user_key)
    assert listed["data"]["me"]["nodes"] == [{"name": "box"}]  # type: ignore[index]


@pytest.mark.parametrize(
    "gpu",
    [
        {"vendor": "nvidia", "devices": [{"name": "RTX\u202e0904"}]},
        {"bad\x07key": 1},
        {"deep": json.loads("[" * 900 + "]" * 900)},  # deeper than any GPU report
    ],
)
async def test_hostile_gpu_information_is_bad_user_input(
    graphql: GraphQLClient, user_key: str, gpu: dict[str, object]
) -> None:
    body = await graphql(
        REGISTER, {"input": _node("box", gpu=gpu)}, key=user_key, expect_errors=True
    )
    assert _code(body) == "BAD_USER_INPUT"


@pytest.mark.parametrize("email", ["ann\x07@example.com", "a\u202enn@example.com"])
async def test_an_email_with_control_characters_is_refused_at_sign_up(
    graphql: GraphQLClient, db: Database, email: str
) -> None:
    body = await graphql(SIGN_UP, {"e": email, "p": PASSWORD}, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    async with db.session() as session:
        assert (await session.exec(select(User.id))).first() is None


async def _reviewable_provider(graphql: GraphQLClient, db: Database) -> tuple[str, str]:
    """A buyer's key and a provider whom that buyer has used (a completed request)."""
    await graphql(SIGN_UP, {"e": "op@example.com", "p": PASSWORD})
    await graphql("mutation { logOut }")
    await graphql(SIGN_UP, {"e": "buyer@example.com", "p": PASSWORD})
    buyer_key = str((await graphql(CREATE_KEY, {"n": "k"}))["data"]["createApiKey"]["secret"])  # type: ignore[index]
    async with db.transaction() as session:
        ids = dict((await session.exec(select(User.email, User.id))).all())
        session.add(
            UsageRecord(
                request_id=uuid.uuid4().hex,
                buyer_id=ids["buyer@example.com"],
                operator_id=ids["op@example.com"],
                model="m",
                status="completed",
            )
        )
    return buyer_key, str(ids["op@example.com"])


@pytest.mark.parametrize("comment", [*HOSTILE, "y" * 2001])
async def test_a_hostile_review_comment_is_bad_user_input(
    graphql: GraphQLClient, db: Database, comment: str
) -> None:
    key, provider = await _reviewable_provider(graphql, db)
    body = await graphql(REVIEW, {"p": provider, "c": comment}, key=key, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    async with db.session() as session:
        assert (await session.exec(select(Review.id))).first() is None


async def test_markup_is_stored_and_returned_as_text(
    graphql: GraphQLClient, user_key: str, db: Database
) -> None:
    markup = "<script>alert('x')</script> & <b>bold</b>"
    created = await graphql(CREATE_KEY, {"n": markup}, key=user_key)
    assert created["data"]["createApiKey"]["apiKey"]["name"] == markup  # type: ignore[index]
    assert markup in await _stored_key_names(db)
    key, provider = await _reviewable_provider(graphql, db)
    comment = "Fast.\n<img src=x onerror=alert(1)>\tfine"
    review = await graphql(REVIEW, {"p": provider, "c": comment}, key=key)
    assert review["data"]["createReview"]["comment"] == comment  # type: ignore[index]


# The same bad value, inline and as a variable: the same code, and never a masked 500.
SAME_INLINE_AND_VARIABLE = [
    ("Int!", '"me { notifications(first: $v) { id } }"', 2**31, "2147483648"),
    ("DateTime", "me { usage(from: $v) { spent } }", "yesterday", '"yesterday"'),
    ("String!", "createApiKey(name: $v) { secret }", "a\x00b", '"a\\u0000b"'),
    ("ID!", "node(id: $v) { id }", "\x00", '"\\u0000"'),
    (
        "[ModelPriceInput!]!",
        f'setModelPrices(nodeId: "{UNSEEN}", prices: $v) {{ id }}',
        [{"model": "m", "inputPerMillion": "ten", "outputPerMillion": "1"}],
        '[{model: "m", inputPerMillion: "ten", outputPerMillion: "1"}]',
    ),
]


@pytest.mark.parametrize(("kind", "selection", "value", "inline"), SAME_INLINE_AND_VARIABLE)
async def test_a_bad_value_is_bad_user_input_inline_and_as_a_variable(
    graphql: GraphQLClient,
    user_key: str,
    kind: str,
    selection: str,
    value: object,
    inline: str,
) -> None:
    selection = selection.strip('"')
    operation = "mutation" if not selection.startswith(("me", "node")) else "query"
    as_variable = await graphql(
        f"{operation}($v: {kind}) {{ {selection} }}", {"v": value}, key=user_key, expect_errors=True
    )
    written_inline = await graphql(
        f"{operation} {{ {selection.replace('$v', inline)} }}", key=user_key, expect_errors=True
    )
    assert _code(as_variable) == _code(written_inline) == "BAD_USER_INPUT"


@pytest.mark.parametrize(
    "value", [{"x": 1}, [[["deep"]]], 1.5, True], ids=["object", "lists", "float", "bool"]
)
async def test_an_id_of_the_wrong_shape_is_bad_user_input(
    graphql: GraphQLClient, user_key: str, value: object
) -> None:
    body = await graphql(
        "query($v: ID!) { node(id: $v) { id } }", {"v": value}, key=user_key, expect_errors=True
    )
    assert _code(body) == "BAD_USER_INPUT"


DEEP = b"[" * 100_000 + b"]" * 100_000
BROKEN_BODIES = {
    "nested too deeply": b'{"query": "{ __typename }", "variables": {"v": ' + DEEP + b"}}",
    "a string": b'"{ __typename }"',
    "a number": b"42",
    "null": b"null",
    "invalid UTF-8": b'{"query": "{ __typename \xff }"}',
    "a lone surrogate": b'{"query": "{ __typename }", "variables": {"v": "\\ud800"}}',
    "NaN": b'{"query": "query($n: Int) { __typename }", "variables": {"n": NaN}}',
    "a huge integer": b'{"query": "{ __typename }", "variables": {"n": 1' + b"0" * 5000 + b"}}",
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # refused before any query
@pytest.mark.parametrize("body", BROKEN_BODIES.values(), ids=BROKEN_BODIES.keys())
async def test_a_broken_graphql_body_is_a_400_in_graphqls_shape(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post(
        "/graphql", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert _code(response.json()) == "BAD_REQUEST"


async def _rest(client: httpx.AsyncClient, key: str, body: bytes) -> httpx.Response:
    return await client.post(
        "/api/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )


def _chat(model: str = "tiny-model", content: str = "hi") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "body",
    [b'{"model": "m", "messages": ' + DEEP + b"}", b'{"model": "m\xff"}', b"[1]", b'"hi"'],
    ids=["nested", "invalid UTF-8", "a list", "a string"],
)
async def test_a_broken_completion_body_is_a_400_in_openais_form(
    client: httpx.AsyncClient, user_key: str, body: bytes
) -> None:
    response = await _rest(client, user_key, body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "body", [_chat(model="tiny\x00model"), _chat(content="h\x00i")], ids=["model", "content"]
)
async def test_nul_in_a_completion_body_is_a_400_in_openais_form(
    client: httpx.AsyncClient, user_key: str, body: bytes
) -> None:
    response = await _rest(client, user_key, body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# Runtimes' model lists.

BAD_MODEL_NAMES = ("has space", "x" * 201, "rtl\u202eevil", "<script>", "", "nul\x00")


async def test_a_runtimes_bad_model_names_are_ignored_with_a_note(
    graphql: GraphQLClient, user_key: str
) -> None:
    runtime = FakeRuntime(models=("good-one", *BAD_MODEL_NAMES, "org/model:Q4_K_M"))
    with serve_in_thread(runtime) as url:
        body = await graphql(REGISTER, {"input": _node("box", url)}, key=user_key)
    node = body["data"]["registerNode"]  # type: ignore[index]
    assert [m["name"] for m in node["models"]] == ["good-one", "org/model:Q4_K_M"]
    assert f"{len(BAD_MODEL_NAMES)} model name(s) ignored" in node["modelsNote"]


async def test_a_runtime_listing_too_many_models_keeps_the_first_and_priced_ones(
    graphql: GraphQLClient, user_key: str, resources: Resources
) -> None:
    many = tuple(f"model-{i:04d}" for i in range(MAX_MODELS_PER_NODE + 40))
    runtime = FakeRuntime(models=many)
    with serve_in_thread(runtime) as url:
        body = await graphql(REGISTER, {"input": _node("box", url)}, key=user_key)
        node = body["data"]["registerNode"]  # type: ignore[index]
        assert len(node["models"]) == MAX_MODELS_PER_NODE
        assert f"offers {len(many)} models" in node["modelsNote"]
        # New models ahead of the listed ones do not push those out.
        runtime.models = tuple(f"new-{i}" for i in range(40)) + many
        await resources.monitor.check_now(uuid.UUID(node["id"]), force=True)
    listed = await graphql(
        "query($id: ID!) { node(id: $id) { models { name available } } }",
        {"id": node["id"]},
        key=user_key,
    )
    models = listed["data"]["node"]["models"]  # type: ignore[index]
    assert {m["name"] for m in models if m["available"]} == set(many[:MAX_MODELS_PER_NODE])


async def test_a_model_gone_from_its_runtime_is_kept_then_pruned(
    graphql: GraphQLClient, user_key: str, resources: Resources, db: Database
) -> None:
    runtime = FakeRuntime(models=("stays", "goes"))
    prices = [{"model": "goes", "inputPerMillion": "1", "outputPerMillion": "2"}]
    with serve_in_thread(runtime) as url:
        body = await graphql(REGISTER, {"input": _node("box", url, prices=prices)}, key=user_key)
        node_id = uuid.UUID(body["data"]["registerNode"]["id"])  # type: ignore[index]
        runtime.models = ("stays",)
        await resources.monitor.check_now(node_id, force=True)
        async with db.session() as session:
            rows = {m.model: m for m in await session.exec(select(NodeModel))}
        assert rows["goes"].available is False  # kept for a while, with its price
        assert rows["goes"].input_price_per_million == 1_000_000
        async with db.transaction() as session:
            old = utcnow() - MODEL_RETENTION - timedelta(minutes=1)
            await session.exec(
                update(NodeModel).where(col(NodeModel.model) == "goes").values(seen_at=old)
            )
        await resources.monitor.check_now(node_id, force=True)
    async with db.session() as session:
        assert list(await session.exec(select(NodeModel.model))) == ["stays"]
        node = await session.get(Node, node_id)
    assert node is not None
    assert node.models_note is None


async def test_a_routine_check_writes_a_models_seen_time_at_most_hourly(
    graphql: GraphQLClient, user_key: str, resources: Resources, db: Database
) -> None:
    async def seen() -> datetime:
        async with db.session() as session:
            return (await session.exec(select(NodeModel.seen_at))).one()

    with serve_in_thread(FakeRuntime(models=("stays",))) as url:
        body = await graphql(REGISTER, {"input": _node("box", url)}, key=user_key)
        node_id = uuid.UUID(body["data"]["registerNode"]["id"])  # type: ignore[index]
        first = await seen()
        await resources.monitor.check_now(node_id, force=True)
        assert await seen() == first  # offered a moment ago: no row written
        async with db.transaction() as session:
            await session.exec(update(NodeModel).values(seen_at=first - SEEN_AT_STEP))
        await resources.monitor.check_now(node_id, force=True)
    assert await seen() > first  # an hour old: moved on


async def test_an_operator_cannot_price_more_models_than_a_node_lists(
    graphql: GraphQLClient, user_key: str
) -> None:
    prices = [
        {"model": f"m{i}", "inputPerMillion": "1", "outputPerMillion": "1"}
        for i in range(MAX_MODELS_PER_NODE + 1)
    ]
    body = await graphql(
        REGISTER, {"input": _node("box", prices=prices)}, key=user_key, expect_errors=True
    )
    assert _code(body) == "BAD_USER_INPUT"
