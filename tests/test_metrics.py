"""GET /metrics: Prometheus' text format, parsed with prometheus-client's own parser."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import http_client, started
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from test_gateway import MESSAGES, MODEL, Market

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.simulator import SimulatorConfig, serve_in_thread, serve_simulator_in_thread

TOKEN = "metrics-token-" + "z" * 24


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
async def market(settings: Settings, db: Database) -> AsyncIterator[Market]:
    guarded = settings.model_copy(update={"metrics_token": SecretStr(TOKEN)})
    with serve_in_thread(create_app(guarded), lifespan="on") as url:
        market = Market(url, db)
        await market.setup(credits=10_000_000)
        yield market
        await market.close()


async def _scrape(market: Market) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    await market.settled()
    response = await market.http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _samples(response.text)


async def test_requests_tokens_money_and_nodes_move_as_requests_are_served(
    market: Market,
) -> None:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as node:
        await market.add_node(node, "sim")
        before = await _scrape(market)
        client = market.async_client()
        answers = [
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
            for _ in range(3)
        ]
        refused = await market.http.post(
            "/api/v1/chat/completions",
            json={"model": "no-such-model", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {market.buyer_key}"},
        )
        after = await _scrape(market)
    assert refused.status_code == 404
    ok = (("model", MODEL), ("status", "200"))
    assert after[("infer_requests_total", ok)] == 3
    assert after[("infer_requests_total", (("model", "-"), ("status", "404")))] == 1
    assert after[("infer_request_duration_seconds_count", ok)] == 3
    assert after[("infer_time_to_first_token_seconds_count", (("model", MODEL),))] == 3
    tokens_out = sum(a.usage.completion_tokens for a in answers if a.usage)
    tokens_in = sum(a.usage.prompt_tokens for a in answers if a.usage)
    assert after[("infer_tokens_total", (("direction", "out"), ("model", MODEL)))] == tokens_out
    assert after[("infer_tokens_total", (("direction", "in"), ("model", MODEL)))] == tokens_in
    spent = sum(record.cost for record in await market.usage())
    settled = after[("infer_settled_micro_usd_total", ())] - before.get(
        ("infer_settled_micro_usd_total", ()), 0
    )
    assert settled == spent > 0
    assert after[("infer_holds_open", ())] == 0
    assert after[("infer_settlement_queue_depth", ())] == 0
    assert after[("infer_nodes", (("status", "online"),))] == 1
    assert after[("infer_nodes", (("status", "offline"),))] == 0
    assert after[("infer_health_checks_this_hour", (("result", "ok"),))] >= 1


async def test_a_wrong_or_missing_token_is_refused(market: Market) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = await market.http.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert "infer_" not in response.text


async def test_without_a_token_metrics_are_open_in_development_and_off_in_production(
    settings: Settings,
) -> None:
    async with started(settings) as (app, _), http_client(app) as http:
        assert (await http.get("/metrics")).status_code == 200
    production = settings.model_copy(update={"env": "production"})
    async with started(production) as (app, _), http_client(app) as http:
        assert (await http.get("/metrics")).status_code == 404


WORKER = """
from infer.metrics import Metrics
Metrics().finished("m", 200, 0.2)
"""
SCRAPE = """
import sys
from infer.metrics import Metrics
sys.stdout.write(Metrics().exposition().decode())
"""


def test_worker_processes_metrics_are_summed(tmp_path: Path) -> None:
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", WORKER], env=environment, check=True)
    scraped = subprocess.run(
        [sys.executable, "-c", SCRAPE], env=environment, check=True, capture_output=True, text=True
    ).stdout
    samples = _samples(scraped)
    assert samples[("infer_requests_total", (("model", "m"), ("status", "200")))] == 2
    assert (
        samples[("infer_request_duration_seconds_count", (("model", "m"), ("status", "200")))] == 2
    )
