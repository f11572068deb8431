"""Failed log-ins from strangers' addresses never lock the owner out; guessing stays throttled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from conftest import PASSWORD, SIGN_UP, GraphQLClient
from starlette.types import ASGIApp

from infer.accounts.throttle import address_key

LOG_IN = "mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { email } }"
OWNER = "ann@example.com"


Clients = Callable[[str], GraphQLClient]


@pytest.fixture
async def at(app: ASGIApp) -> AsyncIterator[Clients]:
    """A GraphQL client calling from a given address; all are closed afterwards."""
    opened: list[httpx.AsyncClient] = []

    def client(ip: str) -> GraphQLClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 5555))
        opened.append(httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000"))
        return GraphQLClient(opened[-1])

    yield client
    for http in opened:
        await http.aclose()


async def _log_in(graphql: GraphQLClient, password: str, email: str = OWNER) -> str | None:
    """The error code of a log-in, or None when it worked."""
    body = await graphql(LOG_IN, {"e": email, "p": password}, expect_errors=True)
    if "errors" not in body:
        return None
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


async def _fail(graphql: GraphQLClient, times: int, email: str = OWNER) -> list[str | None]:
    return [await _log_in(graphql, "guess " + PASSWORD, email) for _ in range(times)]


async def test_a_hundred_failures_from_other_addresses_leave_the_owner_a_way_in(
    at: Clients, graphql: GraphQLClient
) -> None:
    await graphql(SIGN_UP, {"e": OWNER, "p": PASSWORD})  # from 203.0.113.7, her address
    strangers = [at(f"198.51.100.{host + 1}") for host in range(20)]
    results = await asyncio.gather(*(_fail(stranger, 5) for stranger in strangers))
    assert [code for codes in results for code in codes] == ["UNAUTHENTICATED"] * 100
    # The account's own counter is full: a new address is refused, even with the password...
    assert await _log_in(at("192.0.2.200"), PASSWORD) == "RATE_LIMITED"
    # ...but the owner, from an address she has logged in from, gets in.
    assert await _log_in(graphql, PASSWORD) is None
    me = await graphql("{ me { email } }")
    assert me["data"] == {"me": {"email": OWNER}}


async def test_one_address_guessing_one_account_is_stopped_without_touching_others(
    at: Clients, graphql: GraphQLClient
) -> None:
    await graphql(SIGN_UP, {"e": OWNER, "p": PASSWORD})
    await graphql(SIGN_UP, {"e": "bob@example.com", "p": PASSWORD})
    guesser = at("198.51.100.7")
    assert await _fail(guesser, 10) == ["UNAUTHENTICATED"] * 10
    assert await _log_in(guesser, "guess " + PASSWORD) == "RATE_LIMITED"
    assert await _log_in(guesser, PASSWORD) == "RATE_LIMITED"
    # Another account from that address, and this account from the owner's, still work.
    assert await _log_in(guesser, PASSWORD, email="bob@example.com") is None
    assert await _log_in(graphql, PASSWORD) is None


async def test_one_address_spraying_many_accounts_is_stopped(at: Clients) -> None:
    sprayer = at("198.51.100.9")
    emails = [f"user{number}@example.com" for number in range(30)]
    results = await asyncio.gather(*(_fail(sprayer, 1, email) for email in emails))
    assert [code for codes in results for code in codes] == ["UNAUTHENTICATED"] * 30
    assert await _log_in(sprayer, "guess " + PASSWORD, email="other@example.com") == "RATE_LIMITED"


async def test_addresses_in_one_ipv6_64_count_as_one(at: Clients, graphql: GraphQLClient) -> None:
    await graphql(SIGN_UP, {"e": OWNER, "p": PASSWORD})
    for host in range(10):
        assert await _fail(at(f"2001:db8:1:2::{host + 1:x}"), 1) == ["UNAUTHENTICATED"]
    assert await _log_in(at("2001:db8:1:2:ffff::1"), PASSWORD) == "RATE_LIMITED"
    assert await _log_in(at("2001:db8:1:3::1"), PASSWORD) is None


def test_addresses_are_counted_by_ipv4_or_ipv6_64() -> None:
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key(None) == "-"
