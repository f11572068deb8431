"""One running completion: connect with failover, relay its chunks, meter and settle once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio

from infer.accounts.principal import Principal
from infer.billing import settlement
from infer.billing.metering import Metered, meter
from infer.billing.pricing import cost, split
from infer.billing.settlement import Settlement
from infer.errors import BadInput, UpstreamError
from infer.models import UsageStatus
from infer.nodes.clients import client_for
from infer.nodes.clients.base import ChatChunk, ChatRequest, ToolCall, Usage
from infer.nodes.clients.payloads import mint_call_id
from infer.nodes.clients.text import TextRequest, text_client_for
from infer.routing.catalog import Candidate
from infer.routing.scoring import throughput_sample

if TYPE_CHECKING:
    from infer.completions.service import Completions

log = logging.getLogger(__name__)

# An answer past these multiples of max_tokens is a flood, not an answer (see _count).
FLOOD_CHUNKS_PER_TOKEN = 4
FLOOD_BYTES_PER_TOKEN = 128
MAX_SETTLEMENT_BACKLOG = 256  # settlements queued before answers wait for the books


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
        tools = () if isinstance(request, TextRequest) else request.tools
        self._tool_names = frozenset(tool.name for tool in tools)
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
        self.budget_key_id: uuid.UUID | None = None  # the key budget its hold reserves against
        self._reported: Usage | None = None

    async def connect(self, attempts: list[Candidate]) -> None:
        """Try candidates in order until one sends its first chunk (failover before a byte)."""
        last_error: UpstreamError | None = None
        state = self.owner.router.state
        for candidate in attempts:
            # A legacy text completion goes to the runtime's text endpoint.
            text = isinstance(self.request, TextRequest)
            client = (text_client_for if text else client_for)(
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
                self._only_offered_tools(first)  # before a byte: the next node may do better
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

    def _only_offered_tools(self, batch: list[ChatChunk]) -> None:
        """A call of a function the buyer never offered is the node's failure: their code
        could not run it, or would run something it did not mean to."""
        for chunk in batch:
            for call in chunk.tool_calls:
                if call.name is not None and call.name not in self._tool_names:
                    raise UpstreamError("the node called a tool the request did not offer")

    def _count(self, batch: list[ChatChunk]) -> list[ChatChunk]:
        self._only_offered_tools(batch)
        for chunk in batch:
            if chunk.content:
                self.chunks_relayed += 1
                self.bytes_relayed += len(chunk.content.encode())
            for call in chunk.tool_calls:  # what the model wrote of a tool call is output too
                self.chunks_relayed += 1
                self.bytes_relayed += len(call.arguments.encode()) + len(call.name or "")
            if chunk.finish_reason:
                self.finish_reason = chunk.finish_reason
            if chunk.usage is not None:
                self._reported = chunk.usage
        if (
            self.chunks_relayed > FLOOD_CHUNKS_PER_TOKEN * self.max_tokens + 16
            or self.bytes_relayed > FLOOD_BYTES_PER_TOKEN * self.max_tokens + 1024
        ):
            # Far past max_tokens: no honest runtime sends this. The rest is not relayed
            # (nor held in memory), and it is not billed beyond max_tokens.
            raise UpstreamError("the node sent far more than max_tokens")
        return batch

    async def whole(self) -> Answer:
        """The whole answer, for a buyer who did not ask for a stream.

        Nothing reaches the buyer before the end, so a node that breaks off mid-way costs
        them nothing: the UpstreamError is raised and no token is charged.
        """
        parts: list[str] = []
        calls: dict[int, list[str]] = {}  # position → [id, name, arguments...]
        logprobs: list[Any] | None = None
        try:
            async for batch in self.batches():
                for piece in batch:
                    parts.append(piece.content)
                    for delta in piece.tool_calls:
                        call = calls.setdefault(delta.position, ["", ""])
                        call[0] = call[0] or delta.id or ""
                        call[1] = call[1] or delta.name or ""
                        call.append(delta.arguments)
                    if piece.logprobs is not None:
                        logprobs = logprobs or []
                        logprobs += piece.logprobs
        except UpstreamError:
            await self.finish(status=UsageStatus.UPSTREAM_ERROR, charge=False)
            raise
        await self.finish(status=UsageStatus.COMPLETED)
        tool_calls = tuple(
            ToolCall(id=call[0] or mint_call_id(), name=call[1], arguments="".join(call[2:]))
            for _, call in sorted(calls.items())
        )
        finish = self.finish_reason or "stop"
        return Answer("".join(parts), answer_finish(finish, bool(tool_calls)), tool_calls, logprobs)

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

    def _measure(self, metered: Metered, duration_ms: float) -> None:
        """Into the metrics: this answer (HTTP 200 once its headers went), its time and tokens."""
        metrics = self.owner.metrics
        series = metrics.series(self.request.model)
        if self._ttft_ms is not None:
            series.ttft.observe(self._ttft_ms / 1000)
        series.tokens_in.inc(metered.prompt_tokens)
        series.tokens_out.inc(metered.completion_tokens)
        metrics.finished(self.request.model, 200, duration_ms / 1000)

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
        self._measure(metered, duration_ms)
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
                budget_key_id=self.budget_key_id,
            )
        )
        settlements = self.owner.settlements
        if settlements.backlog > MAX_SETTLEMENT_BACKLOG and not settlements.retrying:
            # The books fall behind the answers: wait, so that load slows to their pace
            # (not while the database is away: shutdown would wait for these for ever).
            with contextlib.suppress(Exception):
                await asyncio.shield(written)
        return usage


@dataclasses.dataclass(frozen=True)
class Answer:
    """A whole answer: its text, why it ended, the tool calls it made, its logprobs."""

    text: str
    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: list[Any] | None = None


def answer_finish(reason: str, tool_calls: bool) -> str:
    """An answer that calls tools ends with "tool_calls", whatever the runtime said."""
    return "tool_calls" if tool_calls and reason == "stop" else reason


async def _close(stream: AsyncIterator[list[ChatChunk]]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(UpstreamError):
            await aclose()
