"""The health monitor: claims due nodes (once per interval across replicas) and checks them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence, Set
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.db import Database
from infer.errors import UpstreamError
from infer.models import HealthCheck, Node, NodeModel, NodeStatus, Notification, utcnow
from infer.nodes.clients import client_for
from infer.nodes.clients.base import Deadlines, ModelDetails, ModelInfo, Probe, RuntimeClient
from infer.nodes.health import Health, after_check, next_delay
from infer.nodes.history import DEFAULT_RAW_CHECKS, DEFAULT_RETENTION, prune_history, record_checks
from infer.nodes.registry import MAX_MODELS_PER_NODE, open_token
from infer.nodes.transport import NodeHTTP
from infer.security.crypto import Keyring
from infer.security.text import MAX_MODEL_NAME, MODEL_NAME_CHARACTERS, is_model_name

log = logging.getLogger(__name__)

MODEL_RETENTION = timedelta(days=7)  # a model gone from its runtime this long is deleted
LATENCY_WEIGHT = 0.3  # EWMA weight of the newest probe latency
DETAILS_MAX_AGE = timedelta(days=1)  # a model's details are read again after this
DETAILS_PER_CHECK = 3  # at most this many models described per check (one call each)


class HealthMonitor:
    """Checks every node once per interval; registrations can ask for a check at once."""

    def __init__(
        self,
        db: Database,
        http: NodeHTTP,
        *,
        interval: float,
        keyring: Keyring,
        deadlines: Deadlines,
        batch: int = 50,
        concurrency: int = 20,
        on_change: Callable[[], None] | None = None,
        raw_checks: int = DEFAULT_RAW_CHECKS,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self.db = db
        self.http = http
        self.interval = interval
        self.keyring = keyring
        self.deadlines = deadlines
        self.batch = batch
        self._limit = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._last_prune = 0.0
        self._on_change = on_change
        self.raw_checks = raw_checks
        self.retention = retention
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """End `run_forever` once the sweep in hand (if any) is recorded."""
        self._stopping = True
        self._wake.set()

    async def run_forever(self) -> None:
        while not self._stopping:
            try:
                await self.sweep()
                await self._prune()
                delay = await self._seconds_until_due()
            except Exception:  # the monitor must outlive any one bad sweep
                log.exception("health sweep failed")
                delay = self.interval
            if self._stopping:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.05))

    async def sweep(self) -> int:
        """Check every due node this replica manages to claim; returns how many."""
        async with self.db.session() as session:
            due = await session.exec(
                select(Node.id)
                .where(
                    Node.status != NodeStatus.DISABLED,
                    sa.or_(col(Node.next_check_at).is_(None), col(Node.next_check_at) <= utcnow()),
                )
                .order_by(col(Node.next_check_at))
                .limit(self.batch)
            )
            node_ids = list(due)
        results = await asyncio.gather(*(self.check_now(node_id) for node_id in node_ids))
        return sum(1 for checked in results if checked)

    async def check_now(self, node_id: uuid.UUID, *, force: bool = False) -> bool:
        """Claim the node and check it; False when another replica has it (or it is gone)."""
        if not await self._claim(node_id, force=force):
            return False
        async with self._limit:
            async with self.db.session() as session:
                node = await session.get(Node, node_id)
            if node is None:
                return False
            probe, error = await self._probe(node)
            await self._record(node_id, probe, error)
            if probe is not None:
                await self._describe(node)
        if self._on_change is not None:
            self._on_change()  # statuses, models or latency may have moved
        return True

    async def _claim(self, node_id: uuid.UUID, *, force: bool) -> bool:
        now = utcnow()
        # A lease: if this replica dies mid-check, the node is due again after one interval.
        statement = (
            sa.update(Node)
            .where(col(Node.id) == node_id, col(Node.status) != NodeStatus.DISABLED)
            .values(next_check_at=now + timedelta(seconds=self.interval))
        )
        if not force:
            statement = statement.where(
                sa.or_(col(Node.next_check_at).is_(None), col(Node.next_check_at) <= now)
            )
        async with self.db.transaction() as session:
            result = await session.exec(statement)
            return bool(result.rowcount == 1)

    def _client(self, node: Node) -> RuntimeClient:
        return client_for(
            node.runtime,
            self.http,
            base_url=node.endpoint,
            token=open_token(node, self.keyring),
            deadlines=self.deadlines,
        )

    async def _probe(self, node: Node) -> tuple[Probe | None, str | None]:
        try:
            return await self._client(node).probe(), None
        except UpstreamError as exc:
            return None, exc.message
        except Exception:  # a malformed answer must mark the node, never stop the monitor
            log.exception("health check of node %s failed unexpectedly", node.id)
            return None, "the runtime gave an answer that could not be understood"

    async def _describe(self, node: Node) -> None:
        """Read the details of a few models first seen or described more than a day ago."""
        async with self.db.session() as session:
            due = await session.exec(
                select(NodeModel.model)
                .where(
                    NodeModel.node_id == node.id,
                    col(NodeModel.available).is_(True),
                    sa.or_(
                        col(NodeModel.details_at).is_(None),
                        col(NodeModel.details_at) < utcnow() - DETAILS_MAX_AGE,
                    ),
                )
                .order_by(sa.nulls_first(col(NodeModel.details_at)), col(NodeModel.model))
                .limit(DETAILS_PER_CHECK)
            )
            names = tuple(due)
        if not names:
            return
        try:
            found = await self._client(node).describe(names)
        except UpstreamError as exc:  # tried again at the next check
            log.info("model details of node %s not read: %s", node.id, exc.message)
            return
        except Exception:  # details are a nicety: they must never stop the monitor
            log.exception("model details of node %s failed unexpectedly", node.id)
            return
        now = utcnow()
        async with self.db.transaction() as session:
            for name in names:
                # A model the runtime says nothing of is not asked again for a day.
                details = found.get(name, ModelDetails())
                await session.exec(
                    sa.update(NodeModel)
                    .where(col(NodeModel.node_id) == node.id, col(NodeModel.model) == name)
                    .values(
                        context_length=details.context_length,
                        parameter_size=details.parameter_size,
                        quantization=details.quantization,
                        family=details.family,
                        capabilities=",".join(details.capabilities) or None,
                        details_at=now,
                    )
                )

    async def _record(self, node_id: uuid.UUID, probe: Probe | None, error: str | None) -> None:
        now = utcnow()
        async with self.db.transaction() as session:
            node = await session.get(Node, node_id, with_for_update=True)
            if node is None or node.status == NodeStatus.DISABLED:
                return
            before = Health(node.status, node.consecutive_failures, node.consecutive_successes)
            health = after_check(before, ok=probe is not None)
            node.status = health.status
            node.consecutive_failures = health.failures
            node.consecutive_successes = health.successes
            node.status_reason = None if probe is not None else (error or "unreachable")[:500]
            node.last_checked_at = now
            node.next_check_at = now + timedelta(seconds=next_delay(health, self.interval))
            if probe is not None:
                node.latency_ms = (
                    probe.latency_ms
                    if node.latency_ms is None
                    else LATENCY_WEIGHT * probe.latency_ms + (1 - LATENCY_WEIGHT) * node.latency_ms
                )
                await _sync_models(session, node, probe)
            session.add(node)
            check = HealthCheck(
                node_id=node.id,
                checked_at=now,
                ok=probe is not None,
                latency_ms=probe.latency_ms if probe else None,
                model_count=len(probe.models) if probe else 0,
                error=None if probe else node.status_reason,
            )
            await record_checks(session, [check], keep=self.raw_checks)
            if health.status != before.status:
                session.add(_notification(node, health.status))

    async def _seconds_until_due(self) -> float:
        async with self.db.session() as session:
            result = await session.exec(
                select(sa.func.min(Node.next_check_at)).where(Node.status != NodeStatus.DISABLED)
            )
            earliest = result.one()
        if earliest is None:
            return self.interval
        return min(self.interval, max(0.0, (earliest - utcnow()).total_seconds()))

    async def _prune(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_prune < 60:
            return
        self._last_prune = loop.time()
        async with self.db.transaction() as session:
            await prune_history(session, now=utcnow(), retention=self.retention)


def listed_models(
    models: Sequence[ModelInfo], *, known: Set[str]
) -> tuple[dict[str, ModelInfo], str | None]:
    """The runtime's models INFER lists, and a note for the operator on what it left out.

    Names outside the model-name rule are ignored; past MAX_MODELS_PER_NODE the rest
    are. Models already listed keep their place, so a runtime that adds models never
    pushes out the ones its operator priced.
    """
    valid: dict[str, ModelInfo] = {}
    ignored = 0
    for info in models:
        if is_model_name(info.name):
            valid.setdefault(info.name, info)
        else:
            ignored += 1
    names = sorted(valid, key=lambda name: name not in known)  # stable: runtime's order
    notes = []
    if ignored:
        notes.append(
            f"{ignored} model name(s) ignored: a name is 1 to {MAX_MODEL_NAME} characters,"
            f" {MODEL_NAME_CHARACTERS}"
        )
    if len(names) > MAX_MODELS_PER_NODE:
        notes.append(
            f"the runtime offers {len(names)} models; the first {MAX_MODELS_PER_NODE} are listed"
        )
    listed = {name: valid[name] for name in names[:MAX_MODELS_PER_NODE]}
    return listed, "; ".join(notes) or None


async def _sync_models(session: AsyncSession, node: Node, probe: Probe) -> None:
    """Mark what the runtime offers now; a model gone for MODEL_RETENTION is deleted."""
    now = utcnow()
    rows: Sequence[NodeModel] = (
        await session.exec(select(NodeModel).where(NodeModel.node_id == node.id))
    ).all()
    known = {row.model for row in rows}
    offered, node.models_note = listed_models(probe.models, known=known)
    for row in rows:
        info = offered.get(row.model)
        if info is None and row.seen_at < now - MODEL_RETENTION:
            await session.delete(row)  # its prices go too: the runtime no longer has it
            continue
        row.available = info is not None
        row.loaded = bool(info and info.loaded)
        if info is not None:
            row.seen_at = now
        session.add(row)
    for name, info in offered.items():
        if name not in known:
            session.add(
                NodeModel(
                    node_id=node.id, model=name, available=True, loaded=info.loaded, seen_at=now
                )
            )


_MESSAGES = {
    NodeStatus.ONLINE: "is online",
    NodeStatus.DEGRADED: "is degraded: its last check failed or it is recovering",
    NodeStatus.OFFLINE: "is offline",
}


def _notification(node: Node, status: NodeStatus) -> Notification:
    reason = (
        f" ({node.status_reason})" if status == NodeStatus.OFFLINE and node.status_reason else ""
    )
    return Notification(
        user_id=node.operator_id,
        node_id=node.id,
        kind=f"node_{status.value}",
        message=f"Node {node.name} {_MESSAGES.get(status, status.value)}{reason}",
    )
