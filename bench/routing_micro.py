"""Microbenchmark of routing: µs per plan (pure, memory state, Redis) by market size.

python bench/routing_micro.py [--plans 10000] [--candidates 10,100,1000,10000] [--redis ...]

For each number of candidates (nodes serving the model) it times `scoring.plan` over all
of them (what a plan cost before sampling), `Router.plan` (which scores a bounded sample
beyond `sample.SMALL` nodes), how many candidates a plan scores, and building the index
once per catalog load; then prints one table, so the sizes compare within one run.

With --redis it also times the Redis state's background sync: one call per 100 ms
while requests come, so its cost per request is a sync's cost over the requests a
sync carries (at 100 requests/s, 10).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from infer.db import Database, upgrade_database
from infer.models import Node, NodeModel, NodeStatus, Runtime, User
from infer.routing import (
    MemoryRouterState,
    NodeCatalog,
    NodeStats,
    Preferences,
    RedisRouterState,
    Router,
)
from infer.routing.index import ModelIndex
from infer.routing.scoring import plan


async def _seed_database(db: Database, count: int) -> None:
    async with db.transaction() as session:
        for i in range(count):
            # Latencies and prices spread as in a market: many near-equal, a few apart.
            user = User(email=f"op{i}@example.com")
            session.add(user)
            await session.flush()
            node = Node(
                operator_id=user.id,
                name=f"node{i}",
                runtime=Runtime.OLLAMA,
                endpoint=f"http://node{i}.example:11434",
                status=NodeStatus.ONLINE,
                latency_ms=10.0 + i % 97,
            )
            session.add(node)
            await session.flush()
            session.add(
                NodeModel(
                    node_id=node.id,
                    model="llama3",
                    available=True,
                    input_price_per_million=100_000 * (i % 13 + 1),
                    output_price_per_million=200_000 * (i % 11 + 1),
                )
            )


class _Timer:
    """Wall and CPU time of this process (a local Redis's own work is not in the CPU)."""

    def __init__(self, label: str, runs: int) -> None:
        self.label, self.runs = label, runs
        self.cpu_us = 0.0

    def __enter__(self) -> _Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = (time.perf_counter() - self.wall) / self.runs * 1e6
        self.cpu_us = (time.process_time() - self.cpu) / self.runs * 1e6
        print(f"{self.label:<46} {wall:8.1f} µs wall {self.cpu_us:8.1f} µs CPU")


class _CountingState(MemoryRouterState):
    """The memory state, counting the nodes plans ask figures for (the ones scored)."""

    asked = 0

    async def snapshot(self, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, NodeStats]:
        found = await super().snapshot(node_ids)
        self.asked += len(found)
        return found


async def _time_router(label: str, router: Router, plans: int) -> None:
    await router.plan("llama3")  # warm: load the catalog
    with _Timer(label, plans):
        for _ in range(plans):
            await router.plan("llama3")
    node_id = (await router.plan("llama3"))[0].node_id
    with _Timer(label.replace("plan", "acquire+release"), plans):
        for _ in range(plans):
            await router.state.acquire(node_id)
            await router.state.release(node_id, ok=True, ttft_ms=100.0, tokens_per_second=50.0)


async def _time_sync(state: RedisRouterState, node_ids: list[uuid.UUID], runs: int) -> None:
    await state.snapshot(node_ids)  # knows every candidate, as a replica routing them would
    for outcomes in (0, 10, 100):
        with _Timer(f"RedisRouterState.sync, {outcomes} outcomes queued", runs):
            for i in range(runs):
                for j in range(outcomes):
                    node_id = node_ids[(i + j) % len(node_ids)]
                    await state.acquire(node_id)  # ~1 µs each, in the figure
                    await state.release(node_id, ok=True, ttft_ms=100.0, tokens_per_second=50)
                await state.sync()


async def _one_size(db: Database, count: int, plans: int, redis_url: str | None) -> list[str]:
    """Time one market size; the row of the table it prints."""
    catalog = NodeCatalog(db, refresh_seconds=3600)
    candidates = await catalog.candidates("llama3")
    state = _CountingState()
    for i, candidate in enumerate(candidates):
        for _ in range(i % 3):
            await state.acquire(candidate.node_id)
        ttft_ms = 100.0 + i % 97
        await state.release(candidate.node_id, ok=True, ttft_ms=ttft_ms, tokens_per_second=50)
    stats = await state.snapshot(c.node_id for c in candidates)
    rng = random.Random(1)
    runs = max(10, plans * 10 // max(count, 10))  # scoring them all is slow at 10,000
    with _Timer(f"[{count}] scoring.plan over all, sort=None", runs) as whole:
        for _ in range(runs):
            plan(candidates, stats, Preferences(), rng)
    with _Timer(f"[{count}] ModelIndex views (once per catalog load)", 3) as build:
        for _ in range(3):
            index = ModelIndex(candidates)
            for group in (index.online, index.degraded):
                views = (group.by_latency, group.by_cost, group.by_input, group.by_output)
                assert all(len(view) == len(group) for view in views)
    router = Router(catalog, state, rng=random.Random(1))
    await router.plan("llama3")  # warm: the catalog and its views
    state.asked = 0
    row = [f"{count:,}", f"{whole.cpu_us:,.0f}"]
    limited = Preferences(max_price_prompt=300_000)  # 3 prompt prices in 13
    for prefs in (Preferences(), Preferences(sort="price"), limited):
        kind = prefs.sort or ("max_price" if prefs is limited else "latency")
        label = f"[{count}] Router.plan, memory state, {kind}"
        with _Timer(label, plans) as t:
            for _ in range(plans):
                await router.plan("llama3", prefs)
        row.append(f"{t.cpu_us:,.0f}")
    row.append(f"{state.asked / (3 * plans):.0f}")
    row.append(f"{build.cpu_us / 1000:,.1f}")
    node_id = (await router.plan("llama3"))[0].node_id
    with _Timer(f"[{count}] acquire+release, memory state", plans):
        for _ in range(plans):
            await state.acquire(node_id)
            await state.release(node_id, ok=True, ttft_ms=100.0, tokens_per_second=50.0)
    if redis_url:
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url)
        prefix = f"bench-{uuid.uuid4().hex}"
        shared = RedisRouterState(client, prefix, autostart=False)  # syncs timed apart
        await _time_router(f"[{count}] Router.plan, Redis state", Router(catalog, shared), plans)
        await _time_sync(shared, [c.node_id for c in candidates][:100], max(plans // 10, 100))
        await shared.close()
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    return row


async def main(plans: int, sizes: list[int], redis_url: str | None) -> None:
    rows = []
    for count in sizes:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
            await asyncio.to_thread(upgrade_database, url)
            db = Database.from_url(url)
            await _seed_database(db, count)
            rows.append(await _one_size(db, count, plans, redis_url))
            await db.dispose()
    header = [
        "nodes serving the model",
        "scoring all (before)",
        "Router.plan, latency",
        "Router.plan, price",
        "Router.plan, max_price",
        "candidates scored per plan",
        "index views, ms per load",
    ]
    print()
    print("µs of CPU per plan (memory state) unless stated")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plans", type=int, default=10_000)
    parser.add_argument(
        "--candidates", default="10,100,1000,10000", help="market sizes, comma-separated"
    )
    parser.add_argument("--redis", default=None, help="also time the Redis-backed state")
    parser.add_argument("--uvloop", action="store_true", help="the loop uvicorn runs on")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    sizes = [int(size) for size in args.candidates.split(",")]
    asyncio.run(main(args.plans, sizes, args.redis))
