"""The overview: balance, spend over the last 30 days, recent requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from starlette.responses import Response
from starlette.routing import Route

from infer.web import charts
from infer.web.edge import Web, public_view
from infer.web.templates import money

DAYS = 30


def spend_chart(by_day: list[dict[str, object]], *, today: datetime) -> charts.Chart:
    total = sum((Decimal(str(b["spent"])) for b in by_day), Decimal(0))
    return charts.money_per_day(
        by_day,
        amount="spent",
        requests="totalRequests",
        start=today.date() - timedelta(days=DAYS - 1),
        end=today.date(),
        summary=f"{money(str(total))} spent over the last {DAYS} days",
    )


async def overview(web: Web) -> Response:
    if web.principal is None:
        return web.redirect("/marketplace")  # the storefront is the front door
    today = datetime.now(UTC)
    start = (today - timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    me = (await web.run("Overview", **{"from": start.isoformat()}))["me"]
    return await web.page(
        "overview.html",
        data=me,
        chart=spend_chart(me["usage"]["byDay"], today=today),
        active_keys=sum(1 for key in me["apiKeys"] if key["revokedAt"] is None),
        origin=web.resources.settings.public_origin,
    )


routes = [Route("/", public_view(overview), methods=["GET"])]
