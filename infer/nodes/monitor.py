"""The health monitor: claims due nodes in batches, once per interval across replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
import sqlalchemy.exc
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.db import Database, group_by, is_transient
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
# A model still offered has its seen_at moved on at most this often: the retention above
# is then exact to within it, and a routine check writes no node_models row at all.
SEEN_AT_STEP = timedelta(hours=1)
LATENCY_WEIGHT = 0.3  # EWMA weight of the newest probe latency
DETAILS_MAX_AGE = timedelta(days=1)  # a model's details are read again after this
DETAILS_PER_CHECK = 3  # at most this many models described per check (one call each)
RECORD_BATCH = 100  # check results written per transaction
RECORD_WITHIN = 1.0  # seconds a result may wait for its batch to fill before it is written
CHECK_GRACE = 1.0  # seconds past the health deadline before a check is abandoned
MIN_BACKOFF = 1.0  # first wait after a sweep the database refused


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome, waiting to be recorded with the others of its batch."""

    node_id: uuid.UUID
    checked_at: datetime
    probe: Probe | None
    error: str | None


@dataclass(frozen=True)
class DetailsJob:
    """Models of a node whose details are due, read after its check is recorded."""

    node: Node
    names: tuple[str, ...]


@dataclass(frozen=True)
class Described:
    node_id: uuid.UUID
    details: dict[str, ModelDetails]


Outcome = CheckResult | Described | None


@dataclass
class _Sweep:
    """A sweep's work in hand: the checks and descriptions running, results to record."""

    running: set[asyncio.Task[Outcome]] = field(default_factory=set)
    results: list[CheckResult] = field(default_factory=list)
    described: list[Described] = field(default_factory=list)
    checked: int = 0
    first_at: float | None = None  # when the oldest result not yet written came in

    def collect(self, outcome: Outcome) -> None:
        if self.first_at is None and outcome is not None:
            self.first_at = asyncio.get_running_loop().time()
        if isinstance(outcome, CheckResult):
            self.results.append(outcome)
            self.checked += 1
        elif outcome is not None:
            self.described.append(outcome)


class HealthMonitor:
    """Checks every node once per interval; registrations can ask for a check at once.

    A sweep claims due nodes in one statement as probe slots free up (never more than
    `concurrency` checks or descriptions in flight), probes them on the shared client
    and records the results `record_batch` at a time, one transaction per batch.
    It runs on one event loop: in a platform process, its own thread's
    (infer/nodes/monitor_thread.py), with its own database pool.
    """

    def __init__(
        self,
        db: Database,
        http: NodeHTTP,
        *,
        interval: float,
        keyring: Keyring,
        deadlines: Deadlines,
        concurrency: int = 64,
        record_batch: int = RECORD_BATCH,
        on_change: Callable[[], None] | None = None,
        raw_checks: int = DEFAULT_RAW_CHECKS,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self.db = db
        self.http = http
        self.interval = interval
        self.keyring = keyring
        self.deadlines = deadlines
        self.concurrency = concurrency
        self.record_batch = record_batch
        self._wake = asyncio.Event()
        self._details: deque[DetailsJob] = deque()
        self._last_prune = 0.0
        self._backoff = 0.0
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
            self._wake.clear()  # a wake during the sweep below starts another at once
            try:
                await self.sweep()
                await self._prune()
                delay = await self._seconds_until_due()
                self._backoff = 0.0
            except Exception as exc:  # the monitor must outlive any one bad sweep
                delay = self._after_failure(exc)
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.05))

    def _after_failure(self, exc: Exception) -> float:
        """Seconds to wait after a failed sweep: doubling while the database refuses."""
        if isinstance(exc, sqlalchemy.exc.TimeoutError) or is_transient(exc):
            self._backoff = min(self.interval, max(MIN_BACKOFF, self._backoff * 2))
            log.warning(
                "health sweep paused for %g s: the database is unavailable or its pool is"
                " exhausted (%s)",
                self._backoff,
                type(exc).__name__,
            )
            return self._backoff
        log.exception("health sweep failed")
        return self.interval

    async def wait_until_stopped(self) -> None:
        """Sweep nothing, only answer `check_now`, until `stop` (another process sweeps)."""
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    async def sweep(self) -> int:
        """Check every due node this replica manages to claim; returns how many."""
        work = _Sweep()
        exhausted = False
        try:
            while True:
                self._start_details(work)
                free = self.concurrency - len(work.running)
                # Claim once a quarter of the slots is free: few claims, each of many nodes.
                step = max(1, self.concurrency // 4) if work.running else 1
                if not exhausted and not self._stopping and free >= step:
                    claimed = await self._claim(limit=free)
                    exhausted = len(claimed) < free
                    for node in claimed:
                        work.running.add(asyncio.create_task(self._check(node)))
                if not work.running:
                    await self._flush(work)  # may find models to describe
                    if self._stopping or not self._details:
                        break
                    continue
                done, work.running = await asyncio.wait(
                    work.running, timeout=RECORD_WITHIN, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    work.collect(task.result())
                if self._batch_ready(work):
                    await self._flush(work)
        finally:
            for task in work.running:  # only after a failure: their nodes' leases lapse
                task.cancel()
        return work.checked

    def _batch_ready(self, work: _Sweep) -> bool:
        """A full batch, or results kept waiting (behind slow checks) for RECORD_WITHIN."""
        if len(work.results) + len(work.described) >= self.record_batch:
            return True
        waited = work.first_at is not None and (
            asyncio.get_running_loop().time() - work.first_at >= RECORD_WITHIN
        )
        return waited

    async def check_now(self, node_id: uuid.UUID, *, force: bool = False) -> bool:
        """Claim the node and check it; False when another replica has it (or it is gone)."""
        claimed = await self._claim(limit=1, node_id=node_id, force=force)
        if not claimed:
            return False
        jobs, _ = await self._record([await self._check(claimed[0])])
        described = await asyncio.gather(*(self._describe(job) for job in jobs))
        await self._write_details([d for d in described if d is not None])
        self._notify()
        return True

    async def _claim(
        self, *, limit: int, node_id: uuid.UUID | None = None, force: bool = False
    ) -> Sequence[Node]:
        """Take up to `limit` due nodes in one statement and return them, ready to probe.

        The claim is a lease: next_check_at moves one interval on, so a replica that dies
        mid-check leaves its nodes due again then. Rows another replica is claiming are
        skipped, not waited for; a forced check waits its turn instead.
        """
        now = utcnow()
        due = select(Node.id).where(col(Node.status) != NodeStatus.DISABLED)
        if node_id is not None:
            due = due.where(col(Node.id) == node_id)
        if not force:
            due = due.where(
                sa.or_(col(Node.next_check_at).is_(None), col(Node.next_check_at) <= now)
            )
        due = (
            due.order_by(sa.nulls_first(col(Node.next_check_at)), col(Node.id))
            .limit(limit)
            .with_for_update(skip_locked=not force)
        )
        statement = (
            sa.update(Node)
            .where(col(Node.id).in_(due.scalar_subquery()))
            .values(next_check_at=now + timedelta(seconds=self.interval))
            .returning(Node)
            .execution_options(synchronize_session=False)
        )
        async with self.db.transaction() as session:
            claimed: Sequence[Node] = (await session.exec(statement)).scalars().all()
            return claimed

    def _client(self, node: Node) -> RuntimeClient:
        return client_for(
            node.runtime,
            self.http,
            base_url=node.endpoint,
            token=open_token(node, self.keyring),
            deadlines=self.deadlines,
        )

    async def _check(self, node: Node) -> CheckResult:
        probe, error = await self._probe(node)
        return CheckResult(node.id, utcnow(), probe, error)

    async def _probe(self, node: Node) -> tuple[Probe | None, str | None]:
        try:
            # The client keeps its own deadline; this one holds even if it does not.
            async with asyncio.timeout(self.deadlines.health + CHECK_GRACE):
                return await self._client(node).probe(), None
        except UpstreamError as exc:
            return None, exc.message
        except TimeoutError:
            return None, f"the health check took longer than {self.deadlines.health:g} s"
        except Exception:  # a malformed answer must mark the node, never stop the monitor
            log.exception("health check of node %s failed unexpectedly", node.id)
            return None, "the runtime gave an answer that could not be understood"

    def _start_details(self, work: _Sweep) -> None:
        while self._details and len(work.running) < self.concurrency:
            job = self._details.popleft()
            work.running.add(asyncio.create_task(self._describe(job)))

    async def _describe(self, job: DetailsJob) -> Described | None:
        """Read the details of a few models first seen or described more than a day ago."""
        try:
            async with asyncio.timeout(self.deadlines.health + CHECK_GRACE):
                found = await self._client(job.node).describe(job.names)
        except UpstreamError as exc:  # tried again at the next check
            log.info("model details of node %s not read: %s", job.node.id, exc.message)
            return None
        except Exception:  # details are a nicety: they must never stop the monitor
            log.exception("model details of node %s failed unexpectedly", job.node.id)
            return None
        # A model the runtime says nothing of is not asked again for a day.
        return Described(job.node.id, {name: found.get(name, ModelDetails()) for name in job.names})

    async def _flush(self, work: _Sweep) -> None:
        """Record what the sweep has gathered; the router hears of it once per batch."""
        if not work.results and not work.described:
            return
        results, work.results = work.results, []
        described, work.described = work.described, []
        work.first_at = None
        changed = False
        if results:
            jobs, changed = await self._record(results)
            self._details.extend(jobs)
        await self._write_details(described)
        if changed or described:
            self._notify()

    def _notify(self) -> None:
        # Only for what routing must see at once (a status, the models on offer, their
        # details); a latency that moved reaches the router with its next catalog load.
        # At 10,000 nodes every batch moves some latency, and a reload per batch costs
        # the gateway a walk over the whole market twice a second.
        if self._on_change is not None:
            self._on_change()

    async def _write_details(self, described: Sequence[Described]) -> None:
        rows = [
            {
                "b_node": item.node_id,
                "b_model": name,
                "context_length": details.context_length,
                "parameter_size": details.parameter_size,
                "quantization": details.quantization,
                "family": details.family,
                "capabilities": ",".join(details.capabilities) or None,
                "details_at": utcnow(),
            }
            for item in described
            for name, details in item.details.items()
        ]
        if not rows:
            return
        table = NodeModel.__table__  # type: ignore[attr-defined]
        statement = table.update().where(
            table.c.node_id == sa.bindparam("b_node"), table.c.model == sa.bindparam("b_model")
        )
        async with self.db.core_transaction() as connection:
            await connection.execute(statement, rows)

    async def _record(self, results: Sequence[CheckResult]) -> tuple[list[DetailsJob], bool]:
        """Write a batch of results in one transaction: the models to describe, and
        whether a node's status or the models it offers changed."""
        ids = sorted({result.node_id for result in results})
        async with self.db.transaction() as session:
            # Locked in id order, so that two writers of overlapping batches cannot deadlock.
            nodes = await session.exec(
                select(Node).where(col(Node.id).in_(ids)).order_by(col(Node.id)).with_for_update()
            )
            live = {node.id: node for node in nodes if node.status != NodeStatus.DISABLED}
            answered = [r.node_id for r in results if r.probe is not None and r.node_id in live]
            rows = await session.exec(select(NodeModel).where(col(NodeModel.node_id).in_(answered)))
            models = group_by(rows, answered, key=lambda row: row.node_id)
            jobs = []
            recorded = []
            changed = False
            for result in results:
                node = live.get(result.node_id)
                if node is None:  # deleted or disabled while it was probed
                    continue
                names, moved = await _apply(
                    session, node, result, models.get(node.id, []), interval=self.interval
                )
                changed = changed or moved
                recorded.append(result)
                if names:
                    jobs.append(DetailsJob(node, names))
            await record_checks(session, _history(recorded, live), keep=self.raw_checks)
        return jobs, changed

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


async def _apply(
    session: AsyncSession,
    node: Node,
    result: CheckResult,
    rows: Sequence[NodeModel],
    *,
    interval: float,
) -> tuple[tuple[str, ...], bool]:
    """Move the node's health, latency and models by one check: the models to describe,
    and whether its status or the models it offers changed."""
    probe = result.probe
    before = Health(node.status, node.consecutive_failures, node.consecutive_successes)
    offered_before = {row.model for row in rows if row.available}
    offered_after = offered_before if probe is None else set()
    health = after_check(before, ok=probe is not None)
    node.status = health.status
    node.consecutive_failures = health.failures
    node.consecutive_successes = health.successes
    node.status_reason = None if probe is not None else (result.error or "unreachable")[:500]
    node.last_checked_at = result.checked_at
    node.next_check_at = result.checked_at + timedelta(seconds=next_delay(health, interval))
    names: tuple[str, ...] = ()
    if probe is not None:
        node.latency_ms = (
            probe.latency_ms
            if node.latency_ms is None
            else LATENCY_WEIGHT * probe.latency_ms + (1 - LATENCY_WEIGHT) * node.latency_ms
        )
        offered = await _sync_models(session, node, probe, rows, result.checked_at)
        offered_after = {row.model for row in offered}
        names = _due_for_details(offered)
    session.add(node)
    if health.status != before.status:
        session.add(_notification(node, health.status))
    return names, health.status != before.status or offered_after != offered_before


def _history(results: Iterable[CheckResult], nodes: dict[uuid.UUID, Node]) -> list[HealthCheck]:
    return [
        HealthCheck(
            node_id=result.node_id,
            checked_at=result.checked_at,
            ok=result.probe is not None,
            latency_ms=result.probe.latency_ms if result.probe else None,
            model_count=len(result.probe.models) if result.probe else 0,
            error=None if result.probe else nodes[result.node_id].status_reason,
        )
        for result in results
    ]


def _due_for_details(rows: Iterable[NodeModel]) -> tuple[str, ...]:
    """Up to DETAILS_PER_CHECK offered models never described or described over a day ago."""
    stale = utcnow() - DETAILS_MAX_AGE
    due = [row for row in rows if row.details_at is None or row.details_at < stale]
    due.sort(key=lambda row: (row.details_at is not None, row.details_at or stale, row.model))
    return tuple(row.model for row in due[:DETAILS_PER_CHECK])


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


async def _sync_models(
    session: AsyncSession, node: Node, probe: Probe, rows: Sequence[NodeModel], now: datetime
) -> list[NodeModel]:
    """Mark what the runtime offers now (returned); a model gone for MODEL_RETENTION is deleted."""
    known = {row.model for row in rows}
    offered, node.models_note = listed_models(probe.models, known=known)
    available = []
    for row in rows:
        info = offered.get(row.model)
        if info is None and row.seen_at < now - MODEL_RETENTION:
            await session.delete(row)  # its prices go too: the runtime no longer has it
            continue
        row.available = info is not None
        row.loaded = bool(info and info.loaded)
        if info is not None:
            if row.seen_at < now - SEEN_AT_STEP:
                row.seen_at = now
            available.append(row)
        session.add(row)
    for name, info in offered.items():
        if name not in known:
            row = NodeModel(
                node_id=node.id, model=name, available=True, loaded=info.loaded, seen_at=now
            )
            session.add(row)
            available.append(row)
    return available


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
