"""The usage page: filters in the URL narrow totals, chart and log alike; the CSV export."""

from __future__ import annotations

import csv
import io
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape

import httpx
import pytest
from conftest import CREATE_KEY, PASSWORD, SIGN_UP, GraphQLClient, http_client
from dashboard import Dashboard, Page
from starlette.types import ASGIApp

from infer.db import Database
from infer.models import UsageRecord
from infer.web.templates import money

FORMULA_MODEL = '=HYPERLINK("http://evil.test","x")'
FORMULA_KEY = "+cmd|' /C calc'!A0"
SCRIPT_MODEL = "<script>alert(1)</script>"
BULK = 55  # more than a page of the log


@dataclass
class Bought:
    keys: dict[str, str]  # ann's key name → id
    bob: str
    carol: str
    zed_key: str  # another buyer's key


# (request, model, key, operator, prompt, completion, cost in micro-USD, days ago)
SPEC = [
    ("r1", "llama", "default", "bob", 100, 50, 1_000, 1),
    ("r2", "llama", "batch", "carol", 200, 80, 2_000, 1),
    ("r3", "qwen", "default", "bob", 300, 120, 4_000, 2),
    ("r4", FORMULA_MODEL, "batch", "bob", 10, 5, 700, 3),
    ("r7", "qwen", FORMULA_KEY, "carol", 0, 0, 0, 4),
    ("r5", "llama", "default", None, 40, 20, 900, 3),
    ("r6", SCRIPT_MODEL, "default", "carol", 1, 1, 1, 4),
    ("old", "llama", "default", "bob", 999, 999, 99_000, 45),  # before the default range
]


async def _user(graphql: GraphQLClient, email: str, *keys: str) -> tuple[str, dict[str, str]]:
    await graphql(SIGN_UP, {"e": email, "p": PASSWORD})
    for name in keys:
        await graphql(CREATE_KEY, {"n": name})
    me = (await graphql("{ me { id apiKeys { id name } } }"))["data"]["me"]  # type: ignore[index]
    return me["id"], {k["name"]: k["id"] for k in me["apiKeys"]}


@pytest.fixture
async def bought(graphql: GraphQLClient, app: ASGIApp, db: Database) -> Bought:
    """Ann (signed in on `client`) bought from Bob and Carol; Zed bought too, on his own."""
    ann, keys = await _user(graphql, "ann@example.com", "default", "batch", FORMULA_KEY)
    others: dict[str, tuple[str, dict[str, str]]] = {}
    for name in ("bob", "carol", "zed"):
        async with http_client(app) as http:
            browser = GraphQLClient(http)
            others[name] = await _user(browser, f"{name}@example.com", "default")
            if name == "bob":
                await browser('mutation { setDisplayName(name: "Bob GPUs") { displayName } }')
    operators = {name: uuid.UUID(others[name][0]) for name in ("bob", "carol")}
    now = datetime.now(UTC)
    rows = [
        (
            rid,
            model,
            uuid.UUID(keys[key]),
            operators.get(op or ""),
            p,
            c,
            cost,
            now - timedelta(days=ago),
        )
        for rid, model, key, op, p, c, cost, ago in SPEC
    ]
    rows += [
        (
            f"bulk-{i}",
            "tiny",
            uuid.UUID(keys["batch"]),
            operators["carol"],
            1,
            1,
            1,
            now - timedelta(days=5, minutes=i),
        )
        for i in range(BULK)
    ]
    zed, zed_keys = others["zed"]
    rows_zed = [("zed-1", "zed-model", uuid.UUID(zed_keys["default"]), None, 7, 7, 7, now)]
    async with db.transaction() as session:
        for buyer, batch in ((ann, rows), (zed, rows_zed)):
            for rid, model, key_id, op_id, prompt, completion, cost, at in batch:
                session.add(
                    UsageRecord(
                        request_id=rid,
                        buyer_id=uuid.UUID(buyer),
                        api_key_id=key_id,
                        operator_id=op_id,
                        model=model,
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        cost=cost,
                        status="completed",
                        ttft_ms=120.0,
                        duration_ms=900.0,
                        created_at=at,
                    )
                )
    return Bought(keys, str(operators["bob"]), str(operators["carol"]), zed_keys["default"])


@pytest.fixture
def dashboard(client: httpx.AsyncClient) -> Dashboard:
    return Dashboard(client)


def _log_rows(page: Page) -> int:
    return page.html.count('class="badge status-')


def _figure(page: Page, heading: str) -> str:
    match = re.search(rf"<header>{heading}</header>\s*<p class=\"figure\">([^<]+)</p>", page.html)
    assert match, heading
    return unescape(match.group(1))


def _csv(response: httpx.Response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.text)))


async def test_the_default_is_the_last_30_days_of_mine_only(
    dashboard: Dashboard, bought: Bought
) -> None:
    page = await dashboard.get("/usage")
    assert page.status == 200
    assert _figure(page, "Requests") == str(7 + BULK)  # not "old", not Zed's
    assert _figure(page, "Tokens in") == "706"
    assert "zed-model" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
    assert SCRIPT_MODEL not in page.html
    assert "Bob GPUs" in page  # the provider select names providers
    assert _log_rows(page) == 50


@pytest.mark.parametrize(
    ("query", "requests", "spent"),
    [
        ("model=llama", 3, "$0.0039"),
        ("key=KEY:batch", 2 + BULK, "$0.002755"),
        ("provider=BOB", 3, "$0.0057"),
        ("model=llama&key=KEY:default", 2, "$0.0019"),
    ],
)
async def test_filters_narrow_totals_and_log_alike_and_stay_in_the_form(
    dashboard: Dashboard, bought: Bought, query: str, requests: int, spent: str
) -> None:
    query = query.replace("KEY:batch", bought.keys["batch"]).replace(
        "KEY:default", bought.keys["default"]
    )
    query = query.replace("BOB", bought.bob)
    page = await dashboard.get(f"/usage?{query}")
    assert page.status == 200, page.text
    assert _figure(page, "Requests") == str(requests)
    assert _figure(page, "Spent") == spent
    assert _log_rows(page) == min(requests, 50)
    for value in re.findall(r"=([^&]+)", query):
        assert re.search(rf'value="{re.escape(value)}"( selected)?', page.html), value
    export = await dashboard.http.get(f"/usage.csv?{query}")
    rows = _csv(export)
    assert len(rows) == requests
    assert money(str(sum(Decimal(r["cost"]) for r in rows))) == spent


async def test_older_pages_keep_the_filter_until_the_last(
    dashboard: Dashboard, bought: Bought
) -> None:
    page = await dashboard.get("/usage?model=tiny")
    assert _log_rows(page) == 50
    older = re.search(r'<a href="(/usage\?[^"]*after=[^"]+)"', page.html)
    assert older
    link = unescape(older.group(1))
    assert "model=tiny" in link
    last = await dashboard.get(link)
    assert last.status == 200
    assert _log_rows(last) == BULK - 50
    assert _figure(last, "Requests") == str(BULK)  # the totals are the filter's, not the page's
    assert 'rel="next"' not in last.html


async def test_csv_has_every_request_of_the_filter_with_the_page_totals(
    dashboard: Dashboard, bought: Bought
) -> None:
    page = await dashboard.get("/usage")
    response = await dashboard.http.get("/usage.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    today = datetime.now(UTC).date()
    start = today - timedelta(days=29)
    assert response.headers["content-disposition"] == (
        f'attachment; filename="infer-usage-{start}-{today}.csv"'
    )
    assert response.text.splitlines()[0] == (
        "time,request id,model,provider,api key,prompt tokens,completion tokens,cost,"
        "ttft ms,tokens/s,status,estimated"
    )
    rows = _csv(response)
    assert len(rows) == int(_figure(page, "Requests"))
    assert {r["request id"] for r in rows} >= {"r1", "r6", "bulk-54"}
    assert sum(int(r["prompt tokens"]) for r in rows) == int(_figure(page, "Tokens in"))
    assert money(str(sum(Decimal(r["cost"]) for r in rows))) == _figure(page, "Spent")
    r1 = next(r for r in rows if r["request id"] == "r1")
    assert r1["api key"] == "default"
    assert r1["time"].endswith("Z")
    assert r1["cost"] == "0.001"


async def test_csv_neutralises_formulas_in_models_and_provider_names(
    dashboard: Dashboard, bought: Bought
) -> None:
    rows = {r["request id"]: r for r in _csv(await dashboard.http.get("/usage.csv"))}
    assert rows["r4"]["model"] == "'" + FORMULA_MODEL
    assert rows["r7"]["api key"] == "'" + FORMULA_KEY
    assert rows["r4"]["provider"] == "Bob GPUs"  # a plain name is left alone


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("from=2025-13-01", "from", "Give a date as YYYY-MM-DD."),
        ("to=yesterday", "to", "Give a date as YYYY-MM-DD."),
        ("from=2025-03-10&to=2025-03-01", "to", "The end date is before the start date."),
        ("from=2020-01-01&to=2025-01-01", "to", "Choose at most 366 days."),
        (f"key={uuid.uuid4()}", "key", "You have no API key with this id."),
        ("key=ZED", "key", "You have no API key with this id."),
        ("provider=%27%3B%20DROP", "provider", ""),
    ],
)
async def test_a_bad_filter_is_a_422_beside_its_field(
    dashboard: Dashboard, bought: Bought, query: str, field: str, message: str
) -> None:
    query = query.replace("ZED", bought.zed_key)
    for path in (f"/usage?{query}", f"/usage.csv?{query}"):
        page = await dashboard.get(path)
        assert page.status == 422, (path, page.text)
        error = re.search(rf'<small id="f-{field}-error" class="error">([^<]+)</small>', page.html)
        assert error, page.html
        assert message in unescape(error.group(1))
        assert 'aria-invalid="true"' in page.html
        assert "zed-model" not in page
        assert "<table" not in page.html  # no figures for a filter that is not understood


async def test_a_forged_page_link_is_a_422_with_a_way_back(
    dashboard: Dashboard, bought: Bought
) -> None:
    page = await dashboard.get("/usage?model=llama&after=forged")
    assert page.status == 422
    assert "This page link is out of date" in page
    assert 'value="llama"' in page.html  # the filter is kept


async def test_htmx_gets_only_the_results_block(dashboard: Dashboard, bought: Bought) -> None:
    page = await dashboard.get("/usage?model=qwen", htmx=True)
    assert page.status == 200
    assert "<html" not in page.html
    assert page.html.lstrip().startswith('<div id="usage"')
    assert _figure(page, "Requests") == "2"
    assert page.response.headers["vary"].startswith("HX-Request")
    bad = await dashboard.get("/usage?from=nope", htmx=True)
    assert bad.status == 422
    assert "<html" not in bad.html
    assert "Give a date as YYYY-MM-DD." in bad


async def test_anonymous_is_sent_to_log_in(client: httpx.AsyncClient) -> None:
    for path in ("/usage", "/usage.csv"):
        response = await client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")
