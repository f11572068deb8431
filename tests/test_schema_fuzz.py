"""Property: no generated GraphQL operation, inline or with variables, is a server error.

Queries and mutations over the whole published schema (graphql/schema.graphql) are sent
to a served platform, anonymously and as a signed-up user who has a key and a node; any
answer is fine except a 5xx or an INTERNAL_SERVER_ERROR.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import graphql
import httpx
import pytest
from conftest import PASSWORD
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, from_schema, nodes

from infer.app import create_app
from infer.config import Settings
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

SDL = (Path(__file__).resolve().parent.parent / "graphql" / "schema.graphql").read_text()
SCHEMA = graphql.build_schema(SDL)
EXAMPLES = 150  # per test and database: a few seconds each

FUZZ = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no example files left in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
AMOUNTS = st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{1,8})?", fullmatch=True) | st.text(max_size=12)
TIMES = st.datetimes(timezones=st.just(UTC)).map(lambda t: t.isoformat()) | st.text(max_size=30)
IDS = st.uuids().map(str) | st.text(max_size=40)
SCALARS: dict[str, st.SearchStrategy[object]] = {
    "String": st.text(max_size=300),
    "ID": IDS,
    "Int": st.integers(min_value=-(2**40), max_value=2**40),
    "Float": st.floats(allow_nan=False, allow_infinity=False),
    "Boolean": st.booleans(),
    "Money": AMOUNTS,
    "DateTime": TIMES,
    "JSON": JSON_VALUES,
}
INLINE_SCALARS = {
    "Money": AMOUNTS.map(nodes.String),
    "DateTime": TIMES.map(nodes.String),
    "JSON": st.text(max_size=30).map(nodes.String) | st.integers().map(nodes.Int),
}


@dataclass
class Platform:
    http: httpx.Client
    key: str


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    """A served platform with one user, their API key and a node on a simulator."""
    with (
        serve_simulator_in_thread(SimulatorConfig(models=("llama3.2:1b",))) as runtime,
        serve_in_thread(create_app(settings), lifespan="on") as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):

        def call(query: str, variables: dict[str, object]) -> dict[str, object]:
            body: dict[str, object] = http.post(
                "/graphql", json={"query": query, "variables": variables}
            ).json()
            assert "errors" not in body, body
            return body

        call(
            "mutation($e: String!, $p: String!) { signUp(email: $e, password: $p) { id } }",
            {"e": "fuzz@example.com", "p": PASSWORD},
        )
        issued = call('mutation { createApiKey(name: "fuzz") { secret } }', {})
        node = {"name": "box", "runtime": "OLLAMA", "endpoint": runtime}
        call("mutation($n: RegisterNodeInput!) { registerNode(input: $n) { id } }", {"n": node})
        http.cookies.clear()
        yield Platform(http, str(issued["data"]["createApiKey"]["secret"]))  # type: ignore[index]


def _post(platform: Platform, body: dict[str, object], *, signed_in: bool) -> None:
    platform.http.cookies.clear()  # a sign-up or log-in in one example must not carry over
    headers = {"Authorization": f"Bearer {platform.key}"} if signed_in else {}
    response = platform.http.post("/graphql", json=body, headers=headers)
    assert response.status_code < 500, response.text
    errors = response.json().get("errors") or []
    codes = [error.get("extensions", {}).get("code") for error in errors]
    assert "INTERNAL_SERVER_ERROR" not in codes, (body, errors)


def _values(type_: graphql.GraphQLInputType) -> st.SearchStrategy[object]:
    """Values of an input type as JSON variables carry them; now and then a wrong one."""
    if isinstance(type_, graphql.GraphQLNonNull):
        right = _right(type_.of_type)
    else:
        right = st.none() | _right(type_)
    return st.one_of(right, right, right, JSON_VALUES)


def _right(type_: graphql.GraphQLInputType) -> st.SearchStrategy[object]:
    if isinstance(type_, graphql.GraphQLList):
        return st.lists(_values(type_.of_type), max_size=3)
    if isinstance(type_, graphql.GraphQLInputObjectType):
        required = {
            name: _values(field.type)
            for name, field in type_.fields.items()
            if isinstance(field.type, graphql.GraphQLNonNull)
        }
        optional = {n: _values(f.type) for n, f in type_.fields.items() if n not in required}
        return st.fixed_dictionaries(required, optional=optional)
    if isinstance(type_, graphql.GraphQLEnumType):
        return st.sampled_from(list(type_.values))
    assert isinstance(type_, graphql.GraphQLScalarType)
    return SCALARS[type_.name]


def _with_variables(field_name: str, field: graphql.GraphQLField, operation: str) -> str:
    declared = ", ".join(f"${name}: {arg.type}" for name, arg in field.args.items())
    passed = ", ".join(f"{name}: ${name}" for name in field.args)
    selection = "" if graphql.is_leaf_type(graphql.get_named_type(field.type)) else "{ __typename }"
    call = f"{field_name}({passed})" if passed else field_name
    return f"{operation}{f'({declared})' if declared else ''} {{ {call} {selection} }}"


ROOT_FIELDS = [
    (operation, name, field)
    for operation, root in (("query", SCHEMA.query_type), ("mutation", SCHEMA.mutation_type))
    if root is not None
    for name, field in root.fields.items()
]


@st.composite
def _operations_with_variables(draw: st.DrawFn) -> dict[str, object]:
    operation, name, field = draw(st.sampled_from(ROOT_FIELDS))
    variables = {arg_name: draw(_values(arg.type)) for arg_name, arg in field.args.items()}
    return {"query": _with_variables(name, field, operation), "variables": variables}


@FUZZ
@given(
    query=st.sampled_from([Mode.POSITIVE, Mode.NEGATIVE]).flatmap(
        lambda mode: from_schema(SDL, custom_scalars=INLINE_SCALARS, mode=mode)
    ),
    signed_in=st.booleans(),
)
def test_no_generated_operation_is_a_server_error(
    platform: Platform, query: str, signed_in: bool
) -> None:
    _post(platform, {"query": query}, signed_in=signed_in)


@FUZZ
@given(body=_operations_with_variables(), signed_in=st.booleans())
def test_no_generated_variables_are_a_server_error(
    platform: Platform, body: dict[str, object], signed_in: bool
) -> None:
    _post(platform, body, signed_in=signed_in)
