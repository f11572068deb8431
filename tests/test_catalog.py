"""The node catalog on a real database: what is routable, refresh, invalidate, one query."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import event, text, update
from sqlmodel import col

from infer.db import Database
from infer.models import Node, NodeModel, NodeStatus, Runtime, User
from infer.routing import NodeCatalog
from infer.routing.catalog import THREADED_ROWS


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def add_node(
    db: Database,
    name: str,
    *,
    status: NodeStatus = NodeStatus.ONLINE,
    models: dict[str, bool] | None = None,
    price: tuple[int, int] = (100, 200),
) -> uuid.UUID:
    """An operator with one node serving `models` (name -> available)."""
    async with db.transaction() as session:
        user = User(email=f"{name}-{uuid.uuid4().hex[:8]}@example.com")
        session.add(user)
        await session.flush()
        node = Node(
            operator_id=user.id,
            name=name,
            runtime=Runtime.OLLAMA,
            endpoint=f"http://{name}.example:11434",
            status=status,
            capacity=6,
            latency_ms=12.5,
        )
        session.add(node)
        await session.flush()
        for model, available in (models or {"llama3": True}).items():
            session.add(
                NodeModel(
                    node_id=node.id,
                    model=model,
                    available=available,
                    input_price_per_million=price[0],
                    output_price_per_million=price[1],
                )
            )
        return node.id


async def set_status(db: Database, node_id: uuid.UUID, status: NodeStatus) -> None:
    async with db.transaction() as session:
        await session.exec(update(Node).where(col(Node.id) == node_id).values(status=status))


async def test_online_nodes_are_candidates_with_their_prices(db: Database) -> None:
    node_id = await add_node(db, "alpha", price=(150_000, 600_000))
    catalog = NodeCatalog(db)
    [candidate] = await catalog.candidates("llama3")
    assert (candidate.node_id, candidate.name, candidate.degraded) == (node_id, "alpha", False)
    assert (candidate.input_price_per_million, candidate.output_price_per_million) == (
        150_000,
        600_000,
    )
    assert (candidate.capacity, candidate.health_latency_ms) == (6, 12.5)
    assert candidate.runtime is Runtime.OLLAMA
    assert await catalog.candidates("mistral") == []


@pytest.mark.parametrize("status", [NodeStatus.OFFLINE, NodeStatus.PENDING, NodeStatus.DISABLED])
async def test_nodes_that_are_not_up_are_left_out(db: Database, status: NodeStatus) -> None:
    await add_node(db, "down", status=status)
    catalog = NodeCatalog(db)
    assert await catalog.candidates("llama3") == []
    assert await catalog.models() == []


async def test_unavailable_models_are_left_out(db: Database) -> None:
    await add_node(db, "alpha", models={"llama3": True, "gone": False})
    catalog = NodeCatalog(db)
    assert await catalog.candidates("gone") == []
    assert await catalog.models() == ["llama3"]


async def test_degraded_nodes_are_candidates_but_do_not_list_a_model(db: Database) -> None:
    await add_node(db, "shaky", status=NodeStatus.DEGRADED, models={"qwen": True})
    await add_node(db, "alpha")
    catalog = NodeCatalog(db)
    [candidate] = await catalog.candidates("qwen")
    assert candidate.degraded
    assert await catalog.models() == ["llama3"]


async def test_unpriced_models_are_not_for_sale(db: Database) -> None:
    await add_node(db, "discovered", price=(0, 0))
    await add_node(db, "priced", models={"qwen": True}, price=(0, 1))
    catalog = NodeCatalog(db)
    assert await catalog.candidates("llama3") == []
    assert [c.name for c in await catalog.candidates("qwen")] == ["priced"]
    assert await catalog.models() == ["qwen"]


async def test_changes_show_after_the_refresh_period(db: Database) -> None:
    clock = Clock()
    catalog = NodeCatalog(db, refresh_seconds=1.0, clock=clock)
    first = await add_node(db, "alpha")
    assert len(await catalog.candidates("llama3")) == 1
    await set_status(db, first, NodeStatus.OFFLINE)
    await add_node(db, "beta", models={"mistral": True})
    clock.now = 0.5
    assert len(await catalog.candidates("llama3")) == 1
    clock.now = 1.5
    assert await catalog.candidates("llama3") == []
    assert await catalog.models() == ["mistral"]


async def test_invalidate_forces_a_reload(db: Database) -> None:
    catalog = NodeCatalog(db, refresh_seconds=3600)
    assert await catalog.models() == []
    await add_node(db, "alpha")
    assert await catalog.models() == []
    catalog.invalidate()
    assert await catalog.models() == ["llama3"]


async def test_concurrent_callers_share_one_query(db: Database) -> None:
    for name in ("a", "b", "c"):
        await add_node(db, name, models={"llama3": True, "qwen": True})
    catalog = NodeCatalog(db)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        results = await asyncio.gather(*(catalog.candidates("llama3") for _ in range(20)))
        await catalog.candidates("qwen")
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    assert all(len(found) == 3 for found in results)
    assert len(statements) == 1


async def test_a_failed_refresh_keeps_the_last_catalog(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await add_node(db, "alpha")
    clock = Clock()
    catalog = NodeCatalog(db, refresh_seconds=1.0, clock=clock)
    assert len(await catalog.candidates("llama3")) == 1
    async with db.transaction() as session:
        await session.exec(text("DROP TABLE node_models"))  # type: ignore[call-overload]
    clock.now = 2.0
    assert len(await catalog.candidates("llama3")) == 1
    assert "serving the previous one" in caplog.text


async def test_an_untagged_model_name_finds_the_latest_tag(db: Database) -> None:
    await add_node(db, "alpha", models={"llama3.2:latest": True, "qwen2.5:7b": True})
    catalog = NodeCatalog(db)
    assert [c.model for c in await catalog.candidates("llama3.2")] == ["llama3.2:latest"]
    assert await catalog.candidates("qwen2.5") == []


async def test_a_large_market_loads_off_the_event_loop_and_serves_every_node(
    db: Database,
) -> None:
    count = THREADED_ROWS + 50
    async with db.transaction() as session:
        user = User(email="big-operator@example.com")
        session.add(user)
        await session.flush()
        nodes = [
            Node(
                operator_id=user.id,
                name=f"n{i}",
                runtime=Runtime.OLLAMA,
                endpoint=f"http://n{i}.example:11434",
                status=NodeStatus.ONLINE if i % 10 else NodeStatus.DEGRADED,
                capacity=4,
                latency_ms=float(i % 97),
            )
            for i in range(count)
        ]
        session.add_all(nodes)
        await session.flush()
        session.add_all(
            NodeModel(
                node_id=node.id,
                model="llama3",
                available=True,
                input_price_per_million=100,
                output_price_per_million=200,
            )
            for node in nodes
        )
    catalog = NodeCatalog(db)
    found = await catalog.candidates("llama3")
    assert len(found) == count
    assert sum(c.degraded for c in found) == count // 10
    assert await catalog.models() == ["llama3"]
    index = await catalog.index("llama3")
    assert index is not None
