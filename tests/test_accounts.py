"""Sign-up, log-in, sessions and log-out through GraphQL."""

from __future__ import annotations

import httpx
import pytest
from conftest import PASSWORD, SIGN_UP, GraphQLClient
from sqlmodel import select

from infer.db import Database
from infer.models import AuditLog

LOG_IN = "mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { id email } }"
ME = "{ me { id email balance } }"


def _codes(body: dict[str, object]) -> list[str]:
    return [e["extensions"]["code"] for e in body["errors"]]  # type: ignore[index, union-attr]


def _messages(body: dict[str, object]) -> list[str]:
    return [e["message"] for e in body["errors"]]  # type: ignore[index, union-attr]


async def test_sign_up_starts_a_session_and_opens_an_empty_account(graphql: GraphQLClient) -> None:
    body = await graphql(SIGN_UP, {"e": "  Ann@Example.COM ", "p": PASSWORD})
    assert body["data"]["signUp"]["email"] == "ann@example.com"  # type: ignore[index]
    me = await graphql(ME)
    assert me["data"]["me"]["email"] == "ann@example.com"  # type: ignore[index]
    assert me["data"]["me"]["balance"] == "0.00"  # type: ignore[index]


async def test_session_cookie_is_httponly_lax_and_not_secure_over_http(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/graphql", json={"query": SIGN_UP, "variables": {"e": "a@example.com", "p": PASSWORD}}
    )
    cookie = response.headers["set-cookie"].lower()
    assert "infer_session=" in cookie
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie


async def test_duplicate_sign_up_in_another_letter_case_is_a_conflict(
    graphql: GraphQLClient,
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    body = await graphql(SIGN_UP, {"e": "ANN@example.com", "p": PASSWORD}, expect_errors=True)
    assert _codes(body) == ["CONFLICT"]


@pytest.mark.parametrize(
    ("email", "password", "fragment"),
    [
        ("not-an-email", PASSWORD, "valid email"),
        ("a@b", PASSWORD, "valid email"),
        ("ann@example.com", "short", "at least 10"),
        ("ann@example.com", "x" * 1025, "at most 1024"),
        ("ann@example.com", "password123", "too common"),
        ("ann@example.com", "aaaaaaaaaaaa", "too common"),
    ],
)
async def test_bad_sign_up_input_is_refused_with_a_clear_message(
    graphql: GraphQLClient, db: Database, email: str, password: str, fragment: str
) -> None:
    body = await graphql(SIGN_UP, {"e": email, "p": password}, expect_errors=True)
    assert _codes(body) == ["BAD_USER_INPUT"]
    assert fragment in _messages(body)[0]
    assert (await graphql(ME, expect_errors=True))["data"] is None


async def test_long_passwords_are_not_truncated(graphql: GraphQLClient) -> None:
    long_password = "p" * 100 + "-the-end-matters"
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": long_password})
    wrong = await graphql(
        LOG_IN, {"e": "ann@example.com", "p": long_password[:-1] + "X"}, expect_errors=True
    )
    assert _codes(wrong) == ["UNAUTHENTICATED"]
    await graphql(LOG_IN, {"e": "ann@example.com", "p": long_password})


async def test_unknown_email_and_wrong_password_get_the_same_answer(
    graphql: GraphQLClient,
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    unknown = await graphql(LOG_IN, {"e": "bob@example.com", "p": PASSWORD}, expect_errors=True)
    wrong = await graphql(
        LOG_IN, {"e": "ann@example.com", "p": "wrong " + PASSWORD}, expect_errors=True
    )
    assert _codes(unknown) == _codes(wrong) == ["UNAUTHENTICATED"]
    assert _messages(unknown) == _messages(wrong) == ["incorrect email or password"]


async def test_repeated_failed_log_ins_are_throttled(graphql: GraphQLClient) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    for _ in range(10):
        await graphql(LOG_IN, {"e": "ann@example.com", "p": "wrong password!"}, expect_errors=True)
    body = await graphql(LOG_IN, {"e": "ann@example.com", "p": PASSWORD}, expect_errors=True)
    assert _codes(body) == ["RATE_LIMITED"]
    assert body["errors"][0]["extensions"]["retryAfter"] >= 1  # type: ignore[index]


async def test_log_out_ends_the_session_even_for_a_kept_cookie(
    client: httpx.AsyncClient, graphql: GraphQLClient
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    kept = client.cookies["infer_session"]
    assert (await graphql("mutation { logOut }"))["data"] == {"logOut": True}
    client.cookies.set("infer_session", kept)
    body = await graphql(ME, expect_errors=True)
    assert _codes(body) == ["UNAUTHENTICATED"]


async def test_each_log_in_opens_a_fresh_session(
    client: httpx.AsyncClient, graphql: GraphQLClient
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    first = client.cookies["infer_session"]
    await graphql(LOG_IN, {"e": "ann@example.com", "p": PASSWORD})
    assert client.cookies["infer_session"] != first


async def test_changing_the_password_ends_other_sessions(
    client: httpx.AsyncClient, graphql: GraphQLClient
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    other_session = client.cookies["infer_session"]
    change = (
        "mutation($c: String!, $n: String!) "
        "{ changePassword(currentPassword: $c, newPassword: $n) { id } }"
    )
    await graphql(change, {"c": PASSWORD, "n": "a brand new pass phrase"})
    assert (await graphql(ME))["data"]["me"]["email"] == "ann@example.com"  # type: ignore[index]
    client.cookies.set("infer_session", other_session)
    assert _codes(await graphql(ME, expect_errors=True)) == ["UNAUTHENTICATED"]
    await graphql(LOG_IN, {"e": "ann@example.com", "p": "a brand new pass phrase"})


async def test_session_cookie_is_ignored_on_requests_a_form_could_send(
    client: httpx.AsyncClient, graphql: GraphQLClient
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    response = await client.get("/graphql", params={"query": ME})
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    form = await client.post(
        "/graphql",
        content='{"query": "mutation { createApiKey(name: \\"x\\") { secret } }"}',
        headers={"content-type": "text/plain"},
    )
    assert form.status_code >= 400 or "errors" in form.json()
    assert "secret" not in form.text


async def test_foreign_origin_with_the_session_cookie_is_refused(
    client: httpx.AsyncClient, graphql: GraphQLClient
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    response = await client.post(
        "/graphql", json={"query": ME}, headers={"origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    same = await client.post(
        "/graphql", json={"query": ME}, headers={"origin": "http://127.0.0.1:8000"}
    )
    assert same.json()["data"]["me"]["email"] == "ann@example.com"


async def test_sign_up_log_in_and_failures_are_audited_with_address_and_agent(
    graphql: GraphQLClient, db: Database
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
    await graphql(LOG_IN, {"e": "ann@example.com", "p": "wrong password!"}, expect_errors=True)
    await graphql(LOG_IN, {"e": "ann@example.com", "p": PASSWORD})
    await graphql("mutation { logOut }")
    async with db.session() as session:
        rows = (await session.exec(select(AuditLog).order_by(AuditLog.id))).all()  # type: ignore[arg-type]
    assert [r.action for r in rows] == [
        "user.signed_up",
        "user.login_failed",
        "user.logged_in",
        "user.logged_out",
    ]
    assert all(r.ip == "203.0.113.7" and r.user_agent for r in rows)
    assert all(PASSWORD not in str(r.details) for r in rows)
