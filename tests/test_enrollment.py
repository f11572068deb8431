"""Enrolment codes: an operator's one-time code, redeemed once for a NODES-only key."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from conftest import PASSWORD, SIGN_UP, GraphQLClient, http_client, started
from dashboard import Dashboard
from sqlmodel import col, select
from starlette.types import ASGIApp

from infer.config import Settings
from infer.db import Database
from infer.models import ApiKey, AuditLog, EnrollmentCode, utcnow

CREATE_CODE = "mutation { createEnrollmentCode { code expiresAt command } }"
REDEEM = (
    "mutation($c: String!, $n: String) { redeemEnrollmentCode(code: $c, name: $n)"
    " { secret apiKey { id name scopes } } }"
)
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"
ME_NODES = "{ me { email nodes { id } } }"


def _code(body: dict[str, object]) -> str:
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


def _message(body: dict[str, object]) -> str:
    return str(body["errors"][0]["message"])  # type: ignore[index]


@pytest.fixture
async def operator(graphql: GraphQLClient) -> GraphQLClient:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    return graphql


@pytest.fixture
async def node_box(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """Another client with no session: the GPU box running `infer node join`."""
    async with http_client(app) as http:
        yield http


async def _new_code(operator: GraphQLClient) -> str:
    return str((await operator(CREATE_CODE))["data"]["createEnrollmentCode"]["code"])  # type: ignore[index]


async def test_a_code_is_easy_to_paste_and_comes_with_its_join_command(
    operator: GraphQLClient,
) -> None:
    issued = (await operator(CREATE_CODE))["data"]["createEnrollmentCode"]  # type: ignore[index]
    assert re.fullmatch(r"[0-9A-Z]{4}(-[0-9A-Z]{4}){3}", issued["code"])
    assert issued["command"] == (
        f"infer node join --platform http://127.0.0.1:8000 --code {issued['code']}"
    )
    assert issued["expiresAt"] > (utcnow() + timedelta(seconds=890)).isoformat()


async def test_the_code_is_stored_only_as_a_digest(operator: GraphQLClient, db: Database) -> None:
    code = await _new_code(operator)
    async with db.session() as session:
        row = (await session.exec(select(EnrollmentCode))).one()
    assert code.replace("-", "") not in row.digest
    assert code not in row.digest


async def test_redeeming_gives_a_node_key_that_manages_nodes_only(
    operator: GraphQLClient, node_box: httpx.AsyncClient
) -> None:
    code = await _new_code(operator)
    box = GraphQLClient(node_box)
    enrolled = (await box(REDEEM, {"c": code.lower(), "n": "gpu-box"}))["data"][
        "redeemEnrollmentCode"
    ]  # type: ignore[index]
    assert enrolled["apiKey"]["name"] == "node: gpu-box"
    assert enrolled["apiKey"]["scopes"] == ["NODES"]
    key = enrolled["secret"]
    assert (await box(ME_NODES, key=key))["data"]["me"]["email"] == "ann@example.com"  # type: ignore[index]
    body = await box("{ me { balance } }", key=key, expect_errors=True)
    assert _code(body) == "FORBIDDEN"
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    response = await node_box.post(
        "/api/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 403


async def test_a_code_works_once(operator: GraphQLClient, node_box: httpx.AsyncClient) -> None:
    code = await _new_code(operator)
    box = GraphQLClient(node_box)
    await box(REDEEM, {"c": code})
    body = await box(REDEEM, {"c": code}, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    assert "already used" in _message(body)


async def test_an_expired_code_is_refused(
    operator: GraphQLClient, node_box: httpx.AsyncClient, db: Database
) -> None:
    code = await _new_code(operator)
    async with db.transaction() as session:
        connection = await session.connection()
        await connection.execute(
            sa.update(EnrollmentCode).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    body = await GraphQLClient(node_box)(REDEEM, {"c": code}, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    assert "expired" in _message(body)


@pytest.mark.parametrize("code", ["AAAA-BBBB-CCCC-DDDD", "not a code", ""])
async def test_an_unknown_code_is_refused(
    operator: GraphQLClient, node_box: httpx.AsyncClient, code: str
) -> None:
    body = await GraphQLClient(node_box)(REDEEM, {"c": code}, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    assert "unknown enrolment code" in _message(body)


async def test_concurrent_redemptions_of_one_code_make_exactly_one_key(
    operator: GraphQLClient, node_box: httpx.AsyncClient, db: Database
) -> None:
    code = await _new_code(operator)
    box = GraphQLClient(node_box)
    bodies = await asyncio.gather(
        *(box(REDEEM, {"c": code, "n": f"box-{i}"}, expect_errors=True) for i in range(8))
    )
    assert sum("errors" not in body for body in bodies) == 1
    assert {_code(body) for body in bodies if "errors" in body} == {"BAD_USER_INPUT"}
    async with db.session() as session:
        keys = (
            await session.exec(select(ApiKey).where(col(ApiKey.name).startswith("node:")))
        ).all()
    assert len(keys) == 1


async def test_at_most_ten_codes_are_outstanding(operator: GraphQLClient) -> None:
    for _ in range(10):
        await _new_code(operator)
    body = await operator(CREATE_CODE, expect_errors=True)
    assert _code(body) == "BAD_USER_INPUT"
    assert "at most 10" in _message(body)


async def test_revoking_the_node_key_takes_the_agent_off_at_once(
    operator: GraphQLClient, node_box: httpx.AsyncClient
) -> None:
    box = GraphQLClient(node_box)
    enrolled = (await box(REDEEM, {"c": await _new_code(operator)}))["data"]["redeemEnrollmentCode"]  # type: ignore[index]
    await box(ME_NODES, key=enrolled["secret"])
    await operator(REVOKE, {"id": enrolled["apiKey"]["id"]})
    body = await box(ME_NODES, key=enrolled["secret"], expect_errors=True)
    assert _code(body) == "UNAUTHENTICATED"


async def test_creating_and_redeeming_are_audited(
    operator: GraphQLClient, node_box: httpx.AsyncClient, db: Database
) -> None:
    await GraphQLClient(node_box)(REDEEM, {"c": await _new_code(operator), "n": "gpu"})
    async with db.session() as session:
        actions = (await session.exec(select(AuditLog.action))).all()
    assert "enrollment_code.created" in actions
    assert "enrollment_code.redeemed" in actions


async def test_redemptions_are_rate_limited_per_address(settings: Settings) -> None:
    limited = settings.model_copy(update={"enrollment_limit_address": "3/hour"})
    async with started(limited) as (app, _), http_client(app) as http:
        box = GraphQLClient(http)
        for _ in range(3):
            await box(REDEEM, {"c": "AAAA-BBBB-CCCC-DDDD"}, expect_errors=True)
        body = await box(REDEEM, {"c": "AAAA-BBBB-CCCC-DDDD"}, expect_errors=True)
    assert _code(body) == "RATE_LIMITED"


async def test_the_nodes_page_adds_a_node_with_a_code_and_its_join_command(
    client: httpx.AsyncClient, node_box: httpx.AsyncClient
) -> None:
    dashboard = Dashboard(client)
    await dashboard.sign_up("ann@example.com")
    page = await dashboard.get("/nodes")
    assert 'action="/nodes/enrol"' in page.html
    page = await dashboard.post("/nodes/enrol", htmx=True)
    assert page.status == 201
    command = re.search(r'<code id="enrol-command">([^<]+)</code>', page.html)
    assert command is not None
    assert 'data-copy="#enrol-command"' in page.html
    code = command.group(1).rsplit(" ", 1)[1]
    assert command.group(1) == f"infer node join --platform http://127.0.0.1:8000 --code {code}"
    enrolled = await GraphQLClient(node_box)(REDEEM, {"c": code, "n": "desk"})
    assert enrolled["data"]["redeemEnrollmentCode"]["apiKey"]["name"] == "node: desk"  # type: ignore[index]


async def test_adding_a_node_needs_the_csrf_token(client: httpx.AsyncClient) -> None:
    dashboard = Dashboard(client)
    await dashboard.sign_up("ann@example.com")
    dashboard.token = "forged"
    page = await dashboard.post("/nodes/enrol")
    assert page.status == 403
