"""One chat completion: route, hold funds, forward with failover, meter, settle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio

from infer.accounts.principal import Principal
from infer.batching import GroupCommit
from infer.billing import batches, settlement
from infer.billing.metering import Metered, meter, typical_prompt_tokens
from infer.billing.pricing import cost, estimate_prompt_tokens, split
from infer.billing.settlement import Settlement
from infer.completions import spool
from infer.db import Database, is_transient
from infer.errors import BadInput, UpstreamError
from infer.keys.limits import KeyLimits, admit
from infer.models import UsageStatus, utcnow
from infer.nodes.clients import client_for
from infer.nodes.clients.base import ChatChunk, ChatRequest, Deadlines, Usage
from infer.nodes.transport import NodeHTTP
from infer.outages import database_unavailable
from infer.ratelimit import RateLimiter
from infer.routing.catalog import Candidate
from infer.routing.preferences import Preferences
from infer.routing.router import Router
from infer.routing.scoring import throughput_sample
from infer.security.crypto import Keyring

log = logging.getLogger(__name__)

# An answer past these multiples of max_tokens is a flood, not an answer (see _count).
MAX_CHUNKS_PER_TOKEN = 4
MAX_BYTES_PER_TOKEN = 128
MAX_SETTLEMENT_BACKLOG = 256  # settlements queued before answers wait for the books
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
    ) -> None:
        self.db = db
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
        return written

    def _written(self, item: Settlement, written: asyncio.Future[None]) -> None:
        if written.cancelled() or written.exception() is None:
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
    ) -> Completion:
        """Check the key's limits, hold the worst case, and get the first chunk from the
        best node that answers.

        The limits are counted while the hold is being placed, so their round trips
        overlap; both must pass before any node is called, and a refused request gives
        its hold back.
        """
        max_tokens = request.max_tokens or self.policy.default_max_tokens
        contents = [m.content for m in request.messages]
        prompt_bound = estimate_prompt_tokens(contents)
        attempts = await self.router.plan(
            request.model,
            preferences,
            expected_prompt_tokens=typical_prompt_tokens(contents),
            expected_output_tokens=max_tokens,
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
        account_id = await self.accounts.of(buyer.user_id)
        held: asyncio.Future[uuid.UUID] | None = None
        if worst_case > 0:
            held = self.holds.enqueue(
                batches.HoldRequest(
                    account_id=account_id,
                    amount=worst_case,
                    request_id=request_id,
                    expires_at=utcnow() + self.policy.hold_ttl,
                )
            )
        try:
            rate_limits = await admit(
                self.limiter,
                buyer,
                defaults=self.policy.key_limits,
                tokens=prompt_bound + max_tokens,
            )
        except BaseException:
            if held is not None:
                held.add_done_callback(self._give_back)
            raise
        hold_id = None if held is None else await asyncio.shield(held)
        completion = Completion(
            self,
            buyer=buyer,
            request=request,
            request_id=request_id,
            hold_id=hold_id,
            account_id=account_id,
            prompt_bound=prompt_bound,
            prompt_typical=typical_prompt_tokens(contents),
            prompt_bytes=sum(len(content.encode()) for content in contents),
            max_tokens=max_tokens,
        )
        completion.rate_limits = rate_limits
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

    def release(self, hold_id: uuid.UUID) -> None:
        """Give a hold back without charging; written with the settlements, never lost."""
        self.write(Settlement(hold_id))

    def _give_back(self, held: asyncio.Future[uuid.UUID]) -> None:
        """Release a hold placed for a request that was refused meanwhile (before answering)."""
        if not held.cancelled() and held.exception() is None:
            self.release(held.result())

    def token_of(self, candidate: Candidate) -> str | None:
        if candidate.token_ciphertext is None or candidate.token_key_version is None:
            return None
        return self.keyring.decrypt(
            candidate.token_key_version, candidate.token_ciphertext, aad=candidate.node_id.bytes
        ).decode()


class Completion:
    """A running completion: its chunks, then `finish()` to meter and settle exactly once.

    `finish()` returns the final usage at once; the settlement is written right after.
    `rate_limits` are the key's x-ratelimit-* headers as this request left them.
    """

    def __init__(
        self,
        owner: Completions,
        *,
        buyer: Principal,
        request: ChatRequest,
        request_id: str,
        hold_id: uuid.UUID | None,
        account_id: uuid.UUID,
        prompt_bound: int,
        prompt_typical: int,
        prompt_bytes: int,
        max_tokens: int,
    ) -> None:
        self.owner = owner
        self.buyer = buyer
        self.request = dataclasses.replace(request, max_tokens=max_tokens)
        self.request_id = request_id
        self.hold_id = hold_id
        self.account_id = account_id
        self.prompt_bound = prompt_bound
        self.prompt_typical = prompt_typical
        self.prompt_bytes = prompt_bytes
        self.max_tokens = max_tokens
        self.candidate: Candidate | None = None
        self._stream: AsyncIterator[list[ChatChunk]] | None = None
        self._first: list[ChatChunk] | None = None
        self._started = time.perf_counter()
        self.started_at = time.monotonic()
        self._ttft_ms: float | None = None
        self.chunks_relayed = 0
        self.bytes_relayed = 0
        self.finish_reason: str | None = None
        self.usage: settlement.Usage | None = None
        self.rate_limits: dict[str, str] = {}
        self._reported: Usage | None = None

    async def connect(self, attempts: list[Candidate]) -> None:
        """Try candidates in order until one sends its first chunk (failover before a byte)."""
        last_error: UpstreamError | None = None
        state = self.owner.router.state
        for candidate in attempts:
            client = client_for(
                candidate.runtime,
                self.owner.http,
                base_url=candidate.endpoint,
                token=self.owner.token_of(candidate),
                deadlines=self.owner.deadlines,
            )
            await state.acquire(candidate.node_id)
            # The node's own name for the model (the buyer may have left out `:latest`).
            stream = client.stream_batches(dataclasses.replace(self.request, model=candidate.model))
            try:
                first = await anext(stream)
            except (UpstreamError, StopAsyncIteration) as exc:
                await state.release(
                    candidate.node_id, ok=False, ttft_ms=None, tokens_per_second=None
                )
                await _close(stream)
                last_error = (
                    exc
                    if isinstance(exc, UpstreamError)
                    else UpstreamError("the node ended the answer before it began")
                )
                log.info("node %s failed before the first byte: %s", candidate.node_id, last_error)
                continue
            except BaseException as exc:
                # A request the buyer made unsendable is not the node's failure.
                await state.release(
                    candidate.node_id,
                    ok=isinstance(exc, BadInput),
                    ttft_ms=None,
                    tokens_per_second=None,
                )
                with anyio.CancelScope(shield=True):
                    await _close(stream)
                raise
            self.candidate, self._stream, self._first = candidate, stream, first
            self._ttft_ms = (time.perf_counter() - self._started) * 1000
            return
        raise last_error or UpstreamError("no node could serve the request")

    async def batches(self) -> AsyncIterator[list[ChatChunk]]:
        """The answer's chunks in the groups they arrived in, counted as they are relayed."""
        assert self._stream is not None
        assert self._first is not None
        yield self._count(self._first)
        async for batch in self._stream:
            yield self._count(batch)

    def _count(self, batch: list[ChatChunk]) -> list[ChatChunk]:
        for chunk in batch:
            if chunk.content:
                self.chunks_relayed += 1
                self.bytes_relayed += len(chunk.content.encode())
            if chunk.finish_reason:
                self.finish_reason = chunk.finish_reason
            if chunk.usage is not None:
                self._reported = chunk.usage
        if (
            self.chunks_relayed > MAX_CHUNKS_PER_TOKEN * self.max_tokens + 16
            or self.bytes_relayed > MAX_BYTES_PER_TOKEN * self.max_tokens + 1024
        ):
            # Far past max_tokens: no honest runtime sends this. The rest is not relayed
            # (nor held in memory), and it is not billed beyond max_tokens.
            raise UpstreamError("the node sent far more than max_tokens")
        return batch

    async def whole(self) -> tuple[str, str]:
        """The whole answer and its finish reason, for a buyer who did not ask for a stream.

        Nothing reaches the buyer before the end, so a node that breaks off mid-way costs
        them nothing: the UpstreamError is raised and no token is charged.
        """
        parts: list[str] = []
        try:
            async for batch in self.batches():
                parts += (piece.content for piece in batch)
        except UpstreamError:
            await self.finish(status=UsageStatus.UPSTREAM_ERROR, charge=False)
            raise
        await self.finish(status=UsageStatus.COMPLETED)
        return "".join(parts), self.finish_reason or "stop"

    async def finish(self, *, status: UsageStatus, charge: bool = True) -> settlement.Usage:
        """Close the upstream, meter, and settle; safe to call more than once (the first
        call decides). `charge=False`: nothing was delivered, so nothing is billed.
        """
        usage = self.usage
        if usage is None:
            with anyio.CancelScope(shield=True):
                if self._stream is not None:
                    await _close(self._stream)
                usage = await self._settle(status, charge)
                self.usage = usage
        assert usage is not None  # a shield scope is never cancelled, so it was set
        return usage

    async def _settle(self, status: UsageStatus, charge: bool) -> settlement.Usage:
        candidate = self.candidate
        assert candidate is not None
        complete = status == UsageStatus.COMPLETED and self.finish_reason is not None
        metered = meter(
            reported=self._reported,
            complete=complete,
            prompt_bound=self.prompt_bound,
            prompt_typical=self.prompt_typical,
            prompt_bytes=self.prompt_bytes,
            relayed_chunks=self.chunks_relayed,
            relayed_bytes=self.bytes_relayed,
            max_tokens=self.max_tokens,
        )
        if not charge:
            metered = Metered(prompt_tokens=0, completion_tokens=0, estimated=False)
        duration_ms = (time.perf_counter() - self._started) * 1000
        amount = cost(
            prompt_tokens=metered.prompt_tokens,
            completion_tokens=metered.completion_tokens,
            input_per_million=candidate.input_price_per_million,
            output_per_million=candidate.output_price_per_million,
        )
        parts = split(amount, fee_parts_per_million=self.owner.policy.fee_parts_per_million)
        usage = settlement.Usage(
            request_id=self.request_id,
            buyer_id=self.buyer.user_id,
            api_key_id=self.buyer.api_key_id,
            node_id=candidate.node_id,
            operator_id=candidate.operator_id,
            model=self.request.model,
            prompt_tokens=metered.prompt_tokens,
            completion_tokens=metered.completion_tokens,
            estimated=metered.estimated,
            cost=amount,
            earning=parts.earning,
            fee=parts.fee,
            status=status,
            ttft_ms=self._ttft_ms,
            duration_ms=duration_ms,
        )
        generation_s = (duration_ms - (self._ttft_ms or 0)) / 1000
        await self.owner.router.state.release(
            candidate.node_id,
            ok=status != UsageStatus.UPSTREAM_ERROR,
            ttft_ms=self._ttft_ms,
            tokens_per_second=(
                throughput_sample(metered.completion_tokens, generation_s) if complete else None
            ),
        )
        # Written after the answer goes out (the caller does not wait): the figures are
        # final now. Transient failures are retried until the write commits.
        written = self.owner.write(
            Settlement(
                hold_id=self.hold_id,
                buyer_account_id=self.account_id,
                operator_account_id=await self.owner.accounts.of(candidate.operator_id),  # cached
                usage=usage,
            )
        )
        settlements = self.owner.settlements
        if settlements.backlog > MAX_SETTLEMENT_BACKLOG and not settlements.retrying:
            # The books fall behind the answers: wait, so that load slows to their pace
            # (not while the database is away: shutdown would wait for these for ever).
            with contextlib.suppress(Exception):
                await asyncio.shield(written)
        return usage


def _one_jobs_fault(error: BaseException) -> bool:
    """A failed batch is run job by job, unless the database itself is away."""
    return not database_unavailable(error)


async def _close(stream: AsyncIterator[list[ChatChunk]]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(UpstreamError):
            await aclose()
