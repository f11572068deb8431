"""Microbenchmark of routing: µs per plan over 10 candidates (pure, memory state, Redis).

python bench/routing_micro.py [--plans 10000] [--candidates 10] [--redis redis://...]

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
from pathlib import Path

from infer.db import Database, upgrade_database
from infer.models import Node, NodeModel, NodeStatus, Runtime, User
from infer.routing import MemoryRouterState, NodeCatalog, Preferences, RedisRouterState, Router
from infer.routing.scoring import plan


async def _seed_database(db: Database, count: int) -> None:
    async with db.transaction() as session:
        for i in range(count):
            user = User(email=f"op{i}@example.com")
            session.add(user)
            await session.flush()
            node = Node(
                operator_id=user.id,
                name=f"node{i}",
                runtime=Runtime.OLLAMA,
                endpoint=f"http://node{i}.example:11434",
                status=NodeStatus.ONLINE,
                latency_ms=10.0 + i,
            )
            session.add(node)
            await session.flush()
            session.add(
                NodeModel(
                    node_id=node.id,
                    model="llama3",
                    available=True,
                    input_price_per_million=100_000 * (i + 1),
                    output_price_per_million=200_000 * (i + 1),
                )
            )


class _Timer:
    """Wall and CPU time of this process (a local Redis's own work is not in the CPU)."""

    def __init__(self, label: str, runs: int) -> None:
        self.label, self.runs = label, runs

    def __enter__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *_exc: object) -> None:
        wall = (time.perf_counter() - self.wall) / self.runs * 1e6
        cpu = (time.process_time() - self.cpu) / self.runs * 1e6
        print(f"{self.label:<46} {wall:8.1f} µs wall {cpu:8.1f} µs CPU")


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


async def main(plans: int, count: int, redis_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
        await asyncio.to_thread(upgrade_database, url)
        db = Database.from_url(url)
        await _seed_database(db, count)
        catalog = NodeCatalog(db, refresh_seconds=3600)
        candidates = await catalog.candidates("llama3")
        state = MemoryRouterState()
        for i, candidate in enumerate(candidates):
            for _ in range(i % 3):
                await state.acquire(candidate.node_id)
            await state.release(candidate.node_id, ok=True, ttft_ms=100.0 + i, tokens_per_second=50)
        stats = await state.snapshot(c.node_id for c in candidates)
        rng = random.Random(1)
        for prefs in (Preferences(), Preferences(sort="price")):
            with _Timer(f"scoring.plan, sort={prefs.sort}", plans):
                for _ in range(plans):
                    plan(candidates, stats, prefs, rng)
        await _time_router("Router.plan, memory state", Router(catalog, state), plans)
        if redis_url:
            from redis.asyncio import Redis

            client = Redis.from_url(redis_url)
            prefix = f"bench-{uuid.uuid4().hex}"
            shared = RedisRouterState(client, prefix, autostart=False)  # syncs timed apart
            router = Router(catalog, shared)
            await _time_router("Router.plan, Redis state", router, plans)
            await _time_sync(shared, [c.node_id for c in candidates], max(plans // 10, 100))
            await shared.close()
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plans", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--redis", default=None, help="also time the Redis-backed state")
    parser.add_argument("--uvloop", action="store_true", help="the loop uvicorn runs on")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main(args.plans, args.candidates, args.redis))
