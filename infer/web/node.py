"""One node of the operator's: status, health history, prices, settings, pausing,
deregistering."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from infer.web import charts
from infer.web.edge import Web, view
from infer.web.nodes import capacity_of, render_nodes, split_problems
from infer.web.operations import OperationFailed
from infer.web.templates import milliseconds, parse_time

# The Money scalar's own form (ASCII digits, at most 6 decimals), checked here so a typo
# gets a sentence beside its field rather than GraphQL's wording.
_PRICE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")
PRICE_ERROR = "Write a price in USD per million tokens, such as 0.25."
HEALTH_CHECKS = 60  # as many as OperatorNode asks for
MAX_PRICED = 500  # more rows than a node may list models
UPDATE_FIELDS = ("name", "endpoint", "capacity", "token")


def health_chart(checks: list[dict[str, Any]]) -> tuple[charts.Chart, list[bool]]:
    """Latency bars, oldest first; a failed check is a full-height bar marked bad.

    The chart always has room for HEALTH_CHECKS bars, so a new node's few checks are
    thin bars at the right, as they will be once the history fills up.
    """
    oldest_first = list(reversed(checks))
    padding = [charts.Point("", 0.0, "")] * (HEALTH_CHECKS - len(oldest_first))
    points = padding + [
        charts.Point(
            label=_clock(check["checkedAt"]),
            value=float(check["latencyMs"] or 0) if check["ok"] else 0.0,
            shown=milliseconds(check["latencyMs"]) if check["ok"] else f"failed: {check['error']}",
        )
        for check in oldest_first
    ]
    failed = sum(1 for check in checks if not check["ok"])
    chart = charts.bar_chart(
        points,
        axis=lambda v: f"{v:.1f} ms" if 0 < v < 10 else milliseconds(v),
        summary=f"{len(checks)} checks, {failed} failed",
        labels_every=1,
    )
    bottom, top = chart.ticks[0].y, chart.ticks[-1].y
    bad = [not check["ok"] for check in oldest_first]
    bars = [
        dataclasses.replace(bar, y=top, height=bottom - top) if is_bad else bar
        for bar, is_bad in zip(chart.bars[len(padding) :], bad, strict=True)
    ]
    labels = chart.labels[len(padding) :: 10]  # a time under every tenth check
    return dataclasses.replace(chart, bars=bars, labels=labels, empty=not checks), bad


def _clock(value: str) -> str:
    moment = parse_time(value)
    return moment.strftime("%H:%M") if moment else ""


def prices_of(form: dict[str, str]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The price rows of the form (model-N, in-N, out-N), and which of them are not prices."""
    prices, errors = [], {}
    for index in range(MAX_PRICED):
        model = form.get(f"model-{index}")
        if model is None:
            break
        row = {"model": model}
        for field, key in (
            (f"in-{index}", "inputPerMillion"),
            (f"out-{index}", "outputPerMillion"),
        ):
            row[key] = form.get(field, "")
            if not _PRICE.fullmatch(row[key]):
                errors[field] = PRICE_ERROR
        prices.append(row)
    return prices, errors


def node_update(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """UpdateNodeInput from the form: empty fields stay as they are."""
    errors: dict[str, str] = {}
    update: dict[str, Any] = {k: form[k] for k in ("name", "endpoint", "token") if form.get(k)}
    capacity = capacity_of(form.get("capacity", ""), errors)
    if capacity is not None:
        update["capacity"] = capacity
    update["clearToken"] = form.get("clear_token") == "on" and "token" not in update
    return update, errors


async def _node_page(
    web: Web, *, block: str | None = None, status: int = 200, **extra: Any
) -> Response:
    node = (await web.run("OperatorNode", id=web.request.path_params["id"]))["node"]
    chart, bad = health_chart(node["healthChecks"])
    context: dict[str, Any] = {
        "prices": {},
        "price_errors": {},
        "price_problems": [],
        "update": {},
        "update_errors": {},
        "update_problems": [],
    }
    return await web.page(
        "node.html",
        block=block,
        status=status,
        node=node,
        health=chart,
        bad=bad,
        failures=[check for check in node["healthChecks"] if not check["ok"]][:10],
        **(context | extra),
    )


async def node_page(web: Web) -> Response:
    return await _node_page(web, block="node_status")


async def set_prices(web: Web) -> Response:
    form = await web.form()
    prices, errors = prices_of(form)
    problems: list[str] = []
    if not errors:
        try:
            await web.run("OperatorSetPrices", id=web.request.path_params["id"], prices=prices)
        except OperationFailed as failed:
            if failed.code != "BAD_USER_INPUT":
                raise
            problems = failed.general() + list(failed.by_field().values())
        else:
            return web.redirect(f"/nodes/{web.request.path_params['id']}?saved=prices")
    return await _node_page(
        web,
        block="prices_form",
        status=422,
        prices=form,
        price_errors=errors,
        price_problems=problems,
    )


async def update_node(web: Web) -> Response:
    form = await web.form()
    update, errors = node_update(form)
    problems: list[str] = []
    if not errors:
        try:
            await web.run("OperatorUpdateNode", id=web.request.path_params["id"], input=update)
        except OperationFailed as failed:
            if failed.code not in ("BAD_USER_INPUT", "CONFLICT"):
                raise
            errors, problems = split_problems(failed, UPDATE_FIELDS)
        else:
            return web.redirect(f"/nodes/{web.request.path_params['id']}?saved=settings")
    shown = {k: v for k, v in form.items() if k in UPDATE_FIELDS and k != "token"}
    return await _node_page(
        web,
        block="update_form",
        status=422,
        update=shown,
        update_errors=errors,
        update_problems=problems,
    )


async def set_paused(web: Web) -> Response:
    """Pause or resume, from the node list or the node's page: each gets its status back."""
    node_id, form = web.request.path_params["id"], await web.form()
    await web.run("OperatorSetPaused", id=node_id, paused=web.request.url.path.endswith("/pause"))
    on_list = form.get("back") == "list"
    if not web.is_htmx:
        return web.redirect("/nodes" if on_list else f"/nodes/{node_id}")
    if on_list:
        return await render_nodes(web, block="node_status")
    return await _node_page(web, block="node_status")


async def deregister_node(web: Web) -> Response:
    await web.run("OperatorDeregisterNode", id=web.request.path_params["id"])
    return web.redirect("/nodes?removed=1")


routes = [
    Route("/nodes/{id}", view(node_page), methods=["GET"]),
    Route("/nodes/{id}/prices", view(set_prices), methods=["POST"]),
    Route("/nodes/{id}/settings", view(update_node), methods=["POST"]),
    Route("/nodes/{id}/pause", view(set_paused), methods=["POST"]),
    Route("/nodes/{id}/resume", view(set_paused), methods=["POST"]),
    Route("/nodes/{id}/deregister", view(deregister_node), methods=["POST"]),
]
