"""The operator's earnings and notifications; the node pages live in nodes.py and node.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from infer.web import charts, node, nodes
from infer.web.edge import Web, view
from infer.web.templates import money

DAYS = 30
MAX_DAYS = 366
# Dates a report can be about; beyond them the range's arithmetic would overflow.
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2999, 12, 31)


def _day(text: str | None, field: str, errors: dict[str, str]) -> date | None:
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        errors[field] = "Write a date as YYYY-MM-DD."
        return None
    if not FIRST_DAY <= day <= LAST_DAY:
        errors[field] = f"Write a date from {FIRST_DAY} to {LAST_DAY}."
        return None
    return day


def date_range(query: dict[str, str], *, today: date) -> tuple[date, date, dict[str, str]]:
    """The first and last day to show (inclusive), the last 30 days unless the URL says."""
    errors: dict[str, str] = {}
    start = _day(query.get("from"), "from", errors)
    end = _day(query.get("to"), "to", errors) or today
    start = start or end - timedelta(days=DAYS - 1)
    if not errors and end < start:
        errors["to"] = "The last day comes before the first."
    elif not errors and (end - start).days >= MAX_DAYS:
        errors["to"] = f"Choose at most {MAX_DAYS} days."
    if errors:
        start, end = today - timedelta(days=DAYS - 1), today
    return start, end, errors


def earnings_chart(by_day: list[dict[str, Any]], *, start: date, end: date) -> charts.Chart:
    total = sum((Decimal(str(b["earned"])) for b in by_day), Decimal(0))
    return charts.money_per_day(
        by_day,
        amount="earned",
        requests="requestsServed",
        start=start,
        end=end,
        summary=f"{money(str(total))} earned from {start:%b %d} to {end:%b %d}",
    )


def _midnight(day: date) -> str:
    return datetime.combine(day, time(), tzinfo=UTC).isoformat()


async def earnings(web: Web) -> Response:
    start, end, errors = date_range(dict(web.request.query_params), today=datetime.now(UTC).date())
    me = (
        await web.run(
            "OperatorEarnings",
            **{"from": _midnight(start), "to": _midnight(end + timedelta(days=1))},
        )
    )["me"]
    report = me["earningsReport"]
    return await web.page(
        "earnings.html",
        status=422 if errors else 200,
        report=report,
        chart=earnings_chart(report["byDay"], start=start, end=end),
        names={n["id"]: n["name"] for n in me["nodes"]},
        start=start,
        end=end,
        errors=errors,
        query=dict(web.request.query_params),
    )


async def notifications(web: Web) -> Response:
    me = (await web.run("OperatorNotifications"))["me"]
    return await web.page(
        "notifications.html",
        notifications=me["notifications"],
        unread=me["unreadNotificationCount"],
    )


async def mark_all_read(web: Web) -> Response:
    await web.run("OperatorMarkRead", ids=None)
    return web.redirect("/notifications")


async def mark_read(web: Web) -> Response:
    await web.run("OperatorMarkRead", ids=[web.request.path_params["id"]])
    return web.redirect("/notifications")


routes: list[BaseRoute] = [
    *nodes.routes,
    *node.routes,
    Route("/earnings", view(earnings), methods=["GET"]),
    Route("/notifications", view(notifications), methods=["GET"]),
    Route("/notifications/read", view(mark_all_read), methods=["POST"]),
    Route("/notifications/{id}/read", view(mark_read), methods=["POST"]),
]
