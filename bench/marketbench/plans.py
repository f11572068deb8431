"""One routing plan's cost, timed in this process over the market's catalog."""

from __future__ import annotations

import time

from gatewaybench.market import MODEL

from infer.db import Database
from infer.routing import MemoryRouterState, NodeCatalog, Router

BUDGET = 2.0  # seconds of plans at most per step: a slow plan still gives a figure


async def plan_microseconds(db: Database, plans: int) -> float:
    """Wall µs per `Router.plan` of the bench model: the platform's code and catalog query.

    The state is in memory, so the figure is the plan's own work (catalog lookup and
    scoring), without the Redis state's round trips.
    """
    router = Router(NodeCatalog(db, refresh_seconds=3600), MemoryRouterState())
    await router.plan(MODEL)  # loads the catalog
    done, started = 0, time.perf_counter()
    while done < plans and time.perf_counter() - started < BUDGET:
        await router.plan(MODEL)
        done += 1
    return (time.perf_counter() - started) / done * 1e6
