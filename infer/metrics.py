"""Prometheus metrics: what the gateway did, counted cheaply on the hot path; GET /metrics.

Each app owns a `Metrics` with its own registry (tests run many apps in one process).
Under `infer serve --workers N` the CLI points PROMETHEUS_MULTIPROC_DIR at a fresh
directory before the workers start; prometheus-client then keeps every worker's values in
files there and a scrape, served by any worker, sums them (gauges as `livesum`). Figures
that belong to the platform rather than a process (nodes by status, this hour's health
checks) are read from the database at scrape time.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from infer.db import Database
from infer.models import Node, NodeHealthRollup, NodeStatus, utcnow

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; first tokens come in tens of milliseconds to seconds, answers up to minutes.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A requested model that never reached a node (unknown, refused) is counted under this
# label: request bodies must not choose label values (the series would be unbounded).
UNROUTED = "-"


@dataclass(frozen=True)
class ModelSeries:
    """One model's label children, bound once: a request only increments them."""

    ttft: Histogram
    tokens_in: Counter
    tokens_out: Counter


class Metrics:
    """The gateway's metrics, registered on a registry of this app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_ENV) or None
        r = self.registry
        self.requests = Counter(
            "infer_requests",
            "Gateway requests by model and HTTP status.",
            ["model", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "infer_request_duration_seconds",
            "Whole request time, from arrival to the last byte, by model and status.",
            ["model", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "infer_time_to_first_token_seconds",
            "From arrival to the first token relayed, by model.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "infer_tokens",
            "Tokens billed, by model and direction (in: prompt, out: completion).",
            ["model", "direction"],
            registry=r,
        )
        self.settled = Counter(
            "infer_settled_micro_usd",
            "Money charged to buyers and written to the books.",
            registry=r,
        )
        self.holds_open = Gauge(
            "infer_holds_open",
            "Holds placed and not yet settled or released.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.settlement_queue = Gauge(
            "infer_settlement_queue_depth",
            "Settlements waiting to be written.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.waiting = Gauge(
            "infer_requests_waiting",
            "Requests waiting at capacity for a free node.",
            multiprocess_mode="livesum",
            registry=r,
        )
        waits = Counter(
            "infer_capacity_waits",
            "Requests that waited at capacity, by how the wait ended.",
            ["outcome"],
            registry=r,
        )
        self.waits_served = waits.labels("served")
        self.waits_timed_out = waits.labels("timed_out")
        self.waits_left = waits.labels("left")
        self.waits_refused = waits.labels("queue_full")
        self._series: dict[str, ModelSeries] = {}
        self._outcomes: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def series(self, model: str) -> ModelSeries:
        found = self._series.get(model)
        if found is None:
            found = self._series[model] = ModelSeries(
                ttft=self.ttft.labels(model),
                tokens_in=self.tokens.labels(model, "in"),
                tokens_out=self.tokens.labels(model, "out"),
            )
        return found

    def finished(self, model: str, status: int, seconds: float) -> None:
        """A request ended with `status` (its HTTP status) after `seconds`."""
        key = (model, str(status))
        children = self._outcomes.get(key)
        if children is None:
            children = self._outcomes[key] = (
                self.requests.labels(*key),
                self.duration.labels(*key),
            )
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> bytes:
        """This process's metrics, or all workers' in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


async def platform_figures(db: Database) -> bytes:
    """Nodes by status and this hour's health checks, from the database, as text format."""
    registry = CollectorRegistry()
    nodes = Gauge("infer_nodes", "Registered nodes by status.", ["status"], registry=registry)
    checks = Gauge(
        "infer_health_checks_this_hour",
        "Health checks of the current UTC hour by result.",
        ["result"],
        registry=registry,
    )
    node = Node.__table__  # type: ignore[attr-defined]
    rollup = NodeHealthRollup.__table__  # type: ignore[attr-defined]
    status = sa.case((node.c.paused, NodeStatus.PAUSED.value), else_=node.c.status)
    hour = utcnow().replace(minute=0, second=0, microsecond=0)
    async with db.engine.connect() as connection:
        counted: dict[str, int] = dict(
            (await connection.execute(sa.select(status, sa.func.count()).group_by(status))).all()
        )
        total, good = (
            await connection.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(rollup.c.checks), 0),
                    sa.func.coalesce(sa.func.sum(rollup.c.ok_checks), 0),
                ).where(rollup.c.bucket_start == hour)
            )
        ).one()
    for value in NodeStatus:
        nodes.labels(value.value).set(counted.get(value.value, 0))
    checks.labels("ok").set(int(good))
    checks.labels("failed").set(int(total) - int(good))
    return generate_latest(registry)


def authorized(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    presented = request.headers.get("authorization", "")
    return hmac.compare_digest(presented.encode(), f"Bearer {token}".encode())


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: 404 in production without a token; 401 without the right Bearer."""
    resources = request.state.resources
    settings = resources.settings
    secret = settings.metrics_token
    if secret is None and settings.is_production:
        return PlainTextResponse("Not Found", status_code=404)
    if not authorized(request, None if secret is None else secret.get_secret_value()):
        return PlainTextResponse(
            "a metrics token is needed", status_code=401, headers={"www-authenticate": "Bearer"}
        )
    body = resources.metrics.exposition() + await platform_figures(resources.db)
    return Response(body, media_type=CONTENT_TYPE)
