"""The routable nodes and their models, loaded in one query and served from memory."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from infer.db import Database
from infer.models import Node, NodeModel, NodeStatus, Runtime
from infer.routing import capabilities
from infer.routing.index import ModelIndex

log = logging.getLogger(__name__)

THREADED_ROWS = 2_000  # above this, a load builds its snapshot on a worker thread
MAX_REFRESH_SECONDS = 5.0  # however costly a load, the catalog is at most this old


@dataclass(frozen=True, slots=True)
class Candidate:
    """One node serving one model at its prices (micro-USD per 1M tokens).

    `capabilities` and `context_length` are what routing assumes of the model there
    (routing/capabilities.py): declared by its operator, else told by its runtime.
    """

    node_id: uuid.UUID
    operator_id: uuid.UUID
    name: str
    runtime: Runtime
    endpoint: str
    token_ciphertext: bytes | None
    token_key_version: int | None
    model: str
    input_price_per_million: int
    output_price_per_million: int
    capacity: int
    health_latency_ms: float | None
    degraded: bool = False
    capabilities: frozenset[str] = capabilities.COMPLETION
    context_length: int | None = None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    by_model: dict[str, ModelIndex]
    models: tuple[str, ...]


_COLUMNS = (
    col(Node.id),
    col(Node.operator_id),
    col(Node.name),
    col(Node.runtime),
    col(Node.endpoint),
    col(Node.token_ciphertext),
    col(Node.token_key_version),
    col(Node.capacity),
    col(Node.latency_ms),
    col(Node.status),
    col(NodeModel.model),
    col(NodeModel.input_price_per_million),
    col(NodeModel.output_price_per_million),
    col(NodeModel.capabilities),
    col(NodeModel.declared_capabilities),
    col(NodeModel.context_length),
    col(NodeModel.declared_context_length),
)


class NodeCatalog:
    """Candidates per model, at most `refresh_seconds` old; no query on the request path.

    A stale catalog is refreshed by the first caller that notices; callers arriving
    meanwhile wait for that same refresh (single flight). If a refresh fails, the last
    good catalog keeps being served and the next attempt waits another period.
    """

    def __init__(
        self,
        db: Database,
        refresh_seconds: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._snapshot: _Snapshot | None = None
        self._expires_at = 0.0
        self._generation = 0
        self._refreshing: asyncio.Task[_Snapshot] | None = None

    async def candidates(self, model: str) -> list[Candidate]:
        """Online and degraded nodes whose runtime offers `model` now."""
        found = _find(await self._current(), model)
        return [] if found is None else list(found.candidates)

    async def index(self, model: str) -> ModelIndex | None:
        """The same candidates, indexed for sampling (None if nobody serves `model`)."""
        if type(self).candidates is not NodeCatalog.candidates:
            # A catalog that supplies its own candidates (a test double): index them now.
            return ModelIndex(found) if (found := await self.candidates(model)) else None
        return _find(await self._current(), model)

    async def models(self) -> list[str]:
        """Models served by at least one online node, sorted by name."""
        snapshot = await self._current()
        return list(snapshot.models)

    def invalidate(self) -> None:
        """Make the next access load afresh (after a change this process made)."""
        self._generation += 1
        self._expires_at = 0.0
        self._refreshing = None

    async def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is not None and self._clock() < self._expires_at:
            return snapshot  # the hot path: no await, no I/O
        task = self._refreshing
        if task is None:
            task = asyncio.ensure_future(self._load(self._generation))
            task.add_done_callback(self._refresh_done)
            self._refreshing = task
        try:
            # shield: a caller that gives up does not cancel the refresh the others await
            return await asyncio.shield(task)
        except Exception:
            if self._snapshot is None:
                raise
            log.warning("node catalog refresh failed; serving the previous one", exc_info=True)
            return self._snapshot

    def _refresh_done(self, task: asyncio.Task[_Snapshot]) -> None:
        if self._refreshing is task:
            self._refreshing = None
        if not task.cancelled() and task.exception() is not None and self._snapshot is not None:
            self._expires_at = self._clock() + self._refresh_seconds  # back off, keep serving

    async def _load(self, generation: int) -> _Snapshot:
        statement = (
            sa.select(*_COLUMNS)
            .join(NodeModel, col(NodeModel.node_id) == col(Node.id))
            .where(
                col(Node.status).in_([NodeStatus.ONLINE, NodeStatus.DEGRADED]),
                col(Node.paused).is_(False),  # paused: drained, no new requests
                col(NodeModel.available).is_(True),
                # Never priced (a model the monitor found): not for sale, not free.
                (col(NodeModel.input_price_per_million) + col(NodeModel.output_price_per_million))
                > 0,
            )
            .order_by(col(NodeModel.model), col(Node.id))
        )
        started = time.perf_counter()
        async with self._db.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        # A large market's rows are turned into candidates and indexes on a worker thread:
        # the event loop keeps serving between the interpreter's switches (5 ms), where
        # building 10,000 candidates in one go would stall every request for tens of ms.
        period = self._refresh_seconds
        if len(rows) > THREADED_ROWS:
            snapshot = await asyncio.to_thread(_snapshot_of, rows)
            # And it reloads less often, for at most ~2 % of a core: a load that cost
            # 40 ms comes every 2 s. Changes this process makes still show at once.
            cost = time.perf_counter() - started
            period = min(MAX_REFRESH_SECONDS, max(period, 50 * cost))
        else:
            snapshot = _snapshot_of(rows)
        if generation == self._generation:  # an invalidate() meanwhile makes this one stale
            self._snapshot = snapshot
            self._expires_at = self._clock() + period
        return snapshot


def _snapshot_of(rows: Sequence[Sequence[Any]]) -> _Snapshot:
    by_model: dict[str, list[Candidate]] = {}
    online: set[str] = set()
    # Few distinct (runtime, detected, declared) triples: each set is made once and shared.
    sets: dict[tuple[str, str | None, str | None], frozenset[str]] = {}
    for row in rows:
        status = NodeStatus(row[9])
        able = sets.get((row[3], row[13], row[14]))
        if able is None:
            able = sets[(row[3], row[13], row[14])] = capabilities.effective(
                Runtime(row[3]), detected=row[13], declared=row[14]
            )
        candidate = Candidate(
            node_id=row[0],
            operator_id=row[1],
            name=row[2],
            runtime=Runtime(row[3]),
            endpoint=row[4],
            token_ciphertext=row[5],
            token_key_version=row[6],
            capacity=max(1, row[7]),
            health_latency_ms=row[8],
            degraded=status == NodeStatus.DEGRADED,
            model=row[10],
            input_price_per_million=row[11],
            output_price_per_million=row[12],
            capabilities=able,
            context_length=row[16] if row[16] is not None else row[15],
        )
        by_model.setdefault(candidate.model, []).append(candidate)
        if not candidate.degraded:
            online.add(candidate.model)
    return _Snapshot(
        by_model={model: ModelIndex(found) for model, found in by_model.items()},
        models=tuple(sorted(online)),
    )


def _find(snapshot: _Snapshot, model: str) -> ModelIndex | None:
    found = snapshot.by_model.get(model)
    if found is None and ":" not in model:
        # Ollama lists `llama3.2:latest`; buyers (and Ollama itself) say `llama3.2`.
        found = snapshot.by_model.get(f"{model}:latest")
    return found
