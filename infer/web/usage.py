"""The usage page: my requests filtered by dates, model, key and provider; and their CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.routing import Route

from infer.web import charts
from infer.web.edge import Web, view
from infer.web.operations import OperationFailed
from infer.web.templates import money, parse_time

DAYS = 30  # the default range, ending today
MAX_DAYS = 366
# Dates a report can be about; beyond them the range's arithmetic would overflow.
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2999, 12, 31)
PAGE_SIZE = 50
EXPORT_LIMIT = 10_000  # rows in one CSV: a year of heavy use is a job for the API
PROVIDER_LOOKUPS = 20  # names looked up beyond those on the page
# The API's argument names, as the page's fields are named in the URL.
FIELD_OF = {"from": "from", "to": "to", "model": "model", "apiKeyId": "key"}
FIELD_OF |= {"providerId": "provider"}
CSV_COLUMNS = [
    "time",
    "request id",
    "model",
    "provider",
    "api key",
    "prompt tokens",
    "completion tokens",
    "cost",
    "ttft ms",
    "tokens/s",
    "status",
    "estimated",
]
STALE_PAGE = "This page link is out of date: apply the filter again to start from the newest."
FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would run as a formula


@dataclass
class Filters:
    """The filter as the URL gives it: dates inclusive, empty text meaning "any"."""

    start: date
    end: date
    model: str = ""
    key: str = ""
    provider: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)  # the values as typed, to show again

    def variables(self) -> dict[str, Any]:
        """The API's arguments: [start, end + 1 day) in UTC."""
        return {
            "from": datetime.combine(self.start, time(), UTC).isoformat(),
            "to": datetime.combine(self.end + timedelta(days=1), time(), UTC).isoformat(),
            "model": self.model or None,
            "apiKeyId": self.key or None,
            "providerId": self.provider or None,
        }

    def query(self, **extra: str) -> str:
        """This filter as a query string (empty fields left out), plus `extra`."""
        fields = {"from": self.start.isoformat(), "to": self.end.isoformat()}
        fields |= {"model": self.model, "key": self.key, "provider": self.provider, **extra}
        return urlencode({name: value for name, value in fields.items() if value})


def _day(raw: str, default: date, name: str, errors: dict[str, str]) -> date:
    if not raw:
        return default
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        errors[name] = "Give a date as YYYY-MM-DD."
        return default
    if not FIRST_DAY <= day <= LAST_DAY:
        errors[name] = f"Give a date from {FIRST_DAY} to {LAST_DAY}."
        return default
    return day


def parse_filters(params: QueryParams, *, today: date) -> Filters:
    """The filter of these query parameters; what is wrong with it is in `.errors`."""
    raw = {name: params.get(name, "").strip() for name in ("from", "to", "model", "key")}
    raw["provider"] = params.get("provider", "").strip()
    errors: dict[str, str] = {}
    end = _day(raw["to"], today, "to", errors)
    start = _day(raw["from"], end - timedelta(days=DAYS - 1), "from", errors)
    if not errors and end < start:
        errors["to"] = "The end date is before the start date."
    elif not errors and (end - start).days >= MAX_DAYS:
        errors["to"] = f"Choose at most {MAX_DAYS} days."
    if errors:  # show the default period's figures' options, the typed values kept
        end, start = today, today - timedelta(days=DAYS - 1)
    filters = Filters(start, end, raw["model"], raw["key"], raw["provider"], errors, raw)
    return filters


async def _options(web: Web, filters: Filters) -> dict[str, Any]:
    """My keys and the period's models and providers; an unknown key is an error."""
    period = filters.variables()
    me: dict[str, Any] = (
        await web.run("UsageOptions", **{"from": period["from"]}, to=period["to"])
    )["me"]
    if filters.key and filters.key not in {k["id"] for k in me["apiKeys"]}:
        filters.errors["key"] = "You have no API key with this id."
    return me


async def _provider_names(
    web: Web, filters: Filters, keys: list[str], records: list[dict[str, Any]]
) -> dict[str, str]:
    """Each provider's name: from the page's records, else from one of my requests to it."""
    names = {r["provider"]["id"]: r["provider"]["name"] for r in records if r["provider"]}
    period = filters.variables()
    for key in [k for k in keys if k not in names][:PROVIDER_LOOKUPS]:
        found = await web.run(
            "UsageProviderName", providerId=key, **{"from": period["from"]}, to=period["to"]
        )
        nodes = found["me"]["usageRecords"]["nodes"]
        names[key] = nodes[0]["provider"]["name"] if nodes and nodes[0]["provider"] else ""
    return {key: names.get(key) or f"Provider {key[:8]}" for key in keys}


def spend_chart(by_day: list[dict[str, Any]], filters: Filters, spent: str) -> charts.Chart:
    summary = f"{money(spent)} spent from {filters.start:%b %d, %Y} to {filters.end:%b %d, %Y}"
    return charts.money_per_day(
        by_day,
        amount="spent",
        requests="totalRequests",
        start=filters.start,
        end=filters.end,
        summary=summary,
    )


async def _results(web: Web, filters: Filters, after: str) -> dict[str, Any]:
    me: dict[str, Any] = (
        await web.run("UsagePage", **filters.variables(), first=PAGE_SIZE, after=after or None)
    )["me"]
    usage = me["usage"]
    return {
        "usage": usage,
        "records": me["usageRecords"]["nodes"],
        "older": me["usageRecords"]["pageInfo"]["endCursor"]
        if me["usageRecords"]["pageInfo"]["hasNextPage"]
        else None,
        "chart": spend_chart(usage["byDay"], filters, usage["spent"]),
    }


def _refused(filters: Filters, failed: OperationFailed) -> list[str]:
    """The API's BAD_USER_INPUT beside the page's fields; what names no field, as problems."""
    if failed.code != "BAD_USER_INPUT":
        raise failed
    problems = failed.general()
    for name, message in failed.by_field().items():
        if name in FIELD_OF:
            filters.errors[FIELD_OF[name]] = message
        elif name == "after":
            problems.append(STALE_PAGE)
        else:
            problems.append(message)
    return problems


async def usage_page(web: Web) -> Response:
    filters = parse_filters(web.request.query_params, today=datetime.now(UTC).date())
    options = await _options(web, filters)
    results: dict[str, Any] | None = None
    problems: list[str] = []
    if not filters.errors:
        try:
            results = await _results(web, filters, web.request.query_params.get("after", ""))
        except OperationFailed as failed:
            problems = _refused(filters, failed)
    provider_keys = [b["key"] for b in options["usage"]["byProvider"] if b["key"]]
    if filters.provider and filters.provider not in provider_keys and not filters.errors:
        provider_keys.append(filters.provider)
    records = results["records"] if results else []
    invalid = bool(filters.errors or problems)
    return await web.page(
        "usage.html",
        block="results",
        status=422 if invalid else 200,
        filters=filters,
        key_options=[
            (k["id"], k["name"] + (" (revoked)" if k["revokedAt"] else ""))
            for k in options["apiKeys"]
        ],
        key_names={k["id"]: k["name"] for k in options["apiKeys"]},
        models=[b["key"] for b in options["usage"]["byModel"] if b["key"]],
        providers=await _provider_names(web, filters, provider_keys, records),
        results=None if invalid else results,
        problems=problems,
        limit=EXPORT_LIMIT,
    )


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA) else text


def _csv_row(record: dict[str, Any], key_names: dict[str, str]) -> list[str]:
    moment = parse_time(record["createdAt"])
    provider = record["provider"]
    return [
        _cell(moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else ""),
        _cell(record["requestId"]),
        _cell(record["model"]),
        _cell(provider["name"] if provider else ""),
        _cell(key_names.get(record["apiKeyId"] or "", "")),
        _cell(record["promptTokens"]),
        _cell(record["completionTokens"]),
        _cell(record["cost"]),
        _cell(record["ttftMs"]),
        _cell(record["tokensPerSecond"]),
        _cell(record["status"]),
        _cell("true" if record["estimated"] else "false"),
    ]


async def usage_csv(web: Web) -> Response:
    filters = parse_filters(web.request.query_params, today=datetime.now(UTC).date())
    options = await _options(web, filters)
    if filters.errors:
        return await usage_page(web)  # the page says what is wrong, beside the filter
    key_names = {k["id"]: k["name"] for k in options["apiKeys"]}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    after: str | None = None
    written = 0
    while written < EXPORT_LIMIT:
        try:
            page = (await web.run("UsageExport", **filters.variables(), after=after))["me"]
        except OperationFailed as failed:
            if failed.code != "BAD_USER_INPUT":
                raise
            return await usage_page(web)
        for record in page["usageRecords"]["nodes"][: EXPORT_LIMIT - written]:
            writer.writerow(_csv_row(record, key_names))
            written += 1
        info = page["usageRecords"]["pageInfo"]
        if not info["hasNextPage"]:
            break
        after = info["endCursor"]
    name = f"infer-usage-{filters.start.isoformat()}-{filters.end.isoformat()}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="{name}"',
            "cache-control": "no-store",
        },
    )


routes = [
    Route("/usage", view(usage_page), methods=["GET"]),
    Route("/usage.csv", view(usage_csv), methods=["GET"]),
]
