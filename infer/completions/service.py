"""Completions for the whole process: route, hold funds, start one (completion.py), and
write what it used: the hold and settlement queues, and the settlements kept on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from infer.accounts.principal import Principal
from infer.batching import GroupCommit
from infer.billing import batches, settlement
from infer.billing.metering import typical_prompt_tokens
from infer.billing.pricing import cost, estimate_prompt_tokens
from infer.billing.settlement import Settlement
from infer.completions import spool
from infer.completions.completion import Completion
from infer.db import Database, is_transient
from infer.errors import InferError, ModelNotAllowed, NotFound
from infer.keys.limits import KeyLimits, admit
from infer.metrics import UNROUTED, Metrics
from infer.models import utcnow
from infer.nodes.clients.base import ChatRequest, Deadlines
from infer.nodes.transport import NodeHTTP
from infer.outages import database_unavailable
from infer.ratelimit import RateLimiter
from infer.routing.capabilities import chat_needs
from infer.routing.catalog import Candidate
from infer.routing.preferences import Preferences
from infer.routing.router import Router
from infer.routing.waiting import CapacityQueues
from infer.security.crypto import Keyring

log = logging.getLogger(__name__)

SETTLEMENT_LINGER_SECONDS = 0.02  # how long a small batch of settlements waits for others
# How long a reader waits for this process's own settlements before reading anyway.
READ_YOUR_WRITES_SECONDS = 2.0
# At shutdown, settlements still failing (the database away) are retried this long, then
# kept on disk (spool.py) and written at the next start.
SHUTDOWN_SETTLE_SECONDS = 10.0


@dataclass(frozen=True)
class BillingPolicy:
    fee_parts_per_million: int
    default_max_tokens: int
    hold_ttl: timedelta
    key_limits: KeyLimits


@dataclass(frozen=True)
class Reservation:
    """A request's funds held (`hold_id` None when it costs nothing) and the key's
    x-ratelimit-* headers as it left them."""

    account_id: uuid.UUID
    hold_id: uuid.UUID | None
    budget_key_id: uuid.UUID | None
    rate_limits: dict[str, str]


class AccountIds:
    """user id → ledger account id; the mapping never changes, so it is cached for good."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ids: dict[uuid.UUID, uuid.UUID] = {}

    async def of(self, user_id: uuid.UUID) -> uuid.UUID:
        account_id = self._ids.get(user_id)
        if account_id is None:
            account_id = self._ids[user_id] = await settlement.account_of(self._db, user_id)
        return account_id


class Completions:
    """Starts completions; everything a request needs lives for the whole process."""

    def __init__(
        self,
        *,
        db: Database,
        router: Router,
        http: NodeHTTP,
        keyring: Keyring,
        deadlines: Deadlines,
        policy: BillingPolicy,
        limiter: RateLimiter,
        spool_dir: Path,
        metrics: Metrics,
        capacity: CapacityQueues,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.capacity = capacity
        self.router = router
        self.http = http
        self.keyring = keyring
        self.limiter = limiter
        self.spool_dir = spool_dir
        self._unsettled: list[Settlement] = []  # given up on at shutdown: kept on disk
        self.settle_deadline = SHUTDOWN_SETTLE_SECONDS
        self.deadlines = deadlines
        self.policy = policy
        self.accounts = AccountIds(db)
        self.writers = batches.Writers(db)
        # Concurrent requests share hold and settlement transactions (group commit).
        self.holds: GroupCommit[batches.HoldRequest, uuid.UUID] = GroupCommit(
            lambda requests: batches.place_holds(db, requests, writer=self.writers.holds),
            split=_one_jobs_fault,
            name="hold batch",
        )
        # Nobody waits for a settlement (it follows the answer), so a small batch waits
        # a moment for others: light load shares transactions too. A delivered answer
        # must be charged: while the database is away, settlements wait and try again.
        self.settlements: GroupCommit[Settlement, None] = GroupCommit(
            lambda items: settlement.settle_many(db, items, writer=self.writers.settlements),
            linger=SETTLEMENT_LINGER_SECONDS,
            retry=is_transient,
            split=_one_jobs_fault,
            name="settlement batch",
        )

    async def close(self) -> None:
        """Let the holds and settlements already submitted reach the database; what the
        database still refuses after SHUTDOWN_SETTLE_SECONDS is kept for the next start.
        """
        await self.holds.drained()
        await self.settlements.close(deadline=self.settle_deadline)
        await self.writers.close()
        if self._unsettled:
            path = spool.save(self.spool_dir, self._unsettled)
            log.error(
                "%d settlements could not be written; kept in %s for the next start",
                len(self._unsettled),
                path,
            )

    async def replay(self) -> None:
        """Write the settlements an earlier shutdown kept (a background task at start)."""
        for path, items, whole in spool.claim(self.spool_dir):
            written = [self.write(item) for item in items]
            if written:
                # Not gather: cancelling this task must not cancel the writes themselves.
                await asyncio.wait(written)
            log.warning("replayed %d settlements kept in %s", len(items), path)
            if whole:
                path.unlink()

    def write(self, item: Settlement) -> asyncio.Future[None]:
        """Queue a settlement (or a plain release); it is retried until it commits, and
        what shutdown gives up on is kept on disk.
        """
        written = self.settlements.enqueue(item)
        written.add_done_callback(functools.partial(self._written, item))
        self.metrics.settlement_queue.set(self.settlements.backlog)
        return written

    def _written(self, item: Settlement, written: asyncio.Future[None]) -> None:
        self.metrics.settlement_queue.set(self.settlements.backlog)
        if written.cancelled():
            return
        if written.exception() is None:
            if item.hold_id is not None:
                self.metrics.holds_open.dec()
            if item.usage is not None and item.usage.cost:
                self.metrics.settled.inc(item.usage.cost)
            return
        error = written.exception()
        assert error is not None
        if is_transient(error):  # shutdown's deadline passed with the database away
            self._unsettled.append(item)
        else:
            request = item.usage.request_id if item.usage else f"hold {item.hold_id}"
            log.error("could not settle %s", request, exc_info=error)

    async def settled(self) -> None:
        """Wait until every completion this process finished is in the books.

        Settlements are written after the answer is sent; a reader who wants to see
        its own completions (a balance, usage) waits here first, usually not at all.
        """
        # Bounded: while the database is away settlements retry, and readers must not hang.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READ_YOUR_WRITES_SECONDS):
                await self.holds.flushed()  # a refused request's hold is given back once placed
                await self.settlements.flushed()

    async def start(
        self,
        *,
        buyer: Principal,
        request: ChatRequest,
        preferences: Preferences,
        request_id: str,
        gone: Callable[[], Awaitable[None]] | None = None,
    ) -> Completion:
        """Start a completion (below); a refusal is counted in the metrics as it leaves.

        `gone` returns when the buyer disconnects: watched only while waiting at capacity
        (BuyerGone then).
        """
        began = time.perf_counter()
        try:
            return await self._start(
                buyer=buyer,
                request=request,
                preferences=preferences,
                request_id=request_id,
                gone=gone,
            )
        except InferError as error:
            # Only a model some node serves may name a series (NotFound: none does).
            routed = not isinstance(error, NotFound | ModelNotAllowed)
            model = request.model if routed else UNROUTED
            self.metrics.finished(model, error.status, time.perf_counter() - began)
            raise

    async def _start(
        self,
        *,
        buyer: Principal,
        request: ChatRequest,
        preferences: Preferences,
        request_id: str,
        gone: Callable[[], Awaitable[None]] | None,
    ) -> Completion:
        """Check the key's limits, hold the worst case, and get the first chunk from the
        best node that answers.

        The limits are counted while the hold is being placed, so their round trips
        overlap; both must pass before any node is called, and a refused request gives
        its hold back.
        """
        allowed = buyer.allowed_models
        if allowed is not None and request.model not in allowed:
            raise ModelNotAllowed(
                f"This API key may not use the model {request.model!r}; it may use"
                f" {', '.join(sorted(allowed)) or 'no model'}.",
                param="model",
            )
        max_tokens = request.max_tokens or self.policy.default_max_tokens
        contents = request.prompt_texts()  # tools and tool calls are prompt too
        image_bound, image_typical = request.image_tokens()
        prompt_bound = estimate_prompt_tokens(contents) + image_bound
        prompt_typical = typical_prompt_tokens(contents) + image_typical
        # At capacity, wait for a free slot in the model's queue (routing/waiting.py).
        attempts = await self.capacity.plan(
            request.model,
            functools.partial(
                self.router.plan,
                request.model,
                preferences,
                needs=chat_needs(request.needs),
                expected_prompt_tokens=prompt_typical,
                expected_output_tokens=max_tokens,
            ),
            gone=gone,
        )
        worst_case = max(
            cost(
                prompt_tokens=prompt_bound,
                completion_tokens=max_tokens,
                input_per_million=c.input_price_per_million,
                output_per_million=c.output_price_per_million,
            )
            for c in attempts
        )
        reserved = await self.reserve(
            buyer=buyer,
            amount=worst_case,
            tokens=prompt_bound + max_tokens,
            request_id=request_id,
        )
        hold_id = reserved.hold_id
        completion = Completion(
            self,
            buyer=buyer,
            request=request,
            request_id=request_id,
            hold_id=hold_id,
            account_id=reserved.account_id,
            prompt_bound=prompt_bound,
            prompt_typical=prompt_typical,
            prompt_bytes=sum(len(content.encode()) for content in contents),
            max_tokens=max_tokens,
        )
        completion.rate_limits = reserved.rate_limits
        completion.budget_key_id = reserved.budget_key_id
        try:
            # Whoever answers is paid even if the database goes away meanwhile: their
            # ledger accounts are known (and cached) before any node is called.
            for operator_id in {c.operator_id for c in attempts}:
                await self.accounts.of(operator_id)
            await completion.connect(attempts)
        except BaseException:
            if hold_id is not None:
                self.release(hold_id)
            raise
        return completion

    async def reserve(
        self, *, buyer: Principal, amount: int, tokens: int, request_id: str
    ) -> Reservation:
        """Hold `amount` (against the key's budget too, if it has one) while the key's rate
        limits count the request and its `tokens`; both must pass. A request the limits
        refuse gives its hold back once placed. Chat, text and embeddings alike.
        """
        account_id = await self.accounts.of(buyer.user_id)
        held: asyncio.Future[uuid.UUID] | None = None
        budget_key_id = buyer.api_key_id if buyer.has_budget else None
        if amount > 0:
            held = self.holds.enqueue(
                batches.HoldRequest(
                    account_id=account_id,
                    amount=amount,
                    request_id=request_id,
                    expires_at=utcnow() + self.policy.hold_ttl,
                    budget_key_id=budget_key_id,
                )
            )
        try:
            rate_limits = await admit(
                self.limiter, buyer, defaults=self.policy.key_limits, tokens=tokens
            )
        except BaseException:
            if held is not None:
                held.add_done_callback(self._give_back)
            raise
        hold_id = None if held is None else await asyncio.shield(held)
        if hold_id is not None:
            self.metrics.holds_open.inc()
        return Reservation(
            account_id=account_id,
            hold_id=hold_id,
            budget_key_id=budget_key_id if hold_id is not None else None,
            rate_limits=rate_limits,
        )

    def release(self, hold_id: uuid.UUID) -> None:
        """Give a hold back without charging; written with the settlements, never lost."""
        self.write(Settlement(hold_id))

    def _give_back(self, held: asyncio.Future[uuid.UUID]) -> None:
        """Release a hold placed for a request that was refused meanwhile (before answering)."""
        if not held.cancelled() and held.exception() is None:
            self.metrics.holds_open.inc()  # it was open; its release counts it back
            self.release(held.result())

    def token_of(self, candidate: Candidate) -> str | None:
        if candidate.token_ciphertext is None or candidate.token_key_version is None:
            return None
        return self.keyring.decrypt(
            candidate.token_key_version, candidate.token_ciphertext, aad=candidate.node_id.bytes
        ).decode()


def _one_jobs_fault(error: BaseException) -> bool:
    """A failed batch is run job by job, unless the database itself is away."""
    return not database_unavailable(error)
