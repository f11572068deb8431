"""Embeddings: route to a node whose model embeds, hold, call it with failover, meter the
input tokens and settle, through the completions' own hold and settlement queues."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import anyio

from infer.accounts.principal import Principal
from infer.billing import settlement
from infer.billing.metering import meter, typical_prompt_tokens
from infer.billing.pricing import cost, estimate_prompt_tokens, split
from infer.billing.settlement import Settlement
from infer.completions.service import Completions
from infer.errors import BadInput, InferError, ModelNotAllowed, NotFound, UpstreamError
from infer.metrics import UNROUTED
from infer.models import UsageStatus
from infer.nodes.clients import client_for
from infer.nodes.clients.base import Usage
from infer.nodes.clients.embeddings import EmbeddingRequest, Embeddings, embed
from infer.routing.capabilities import EMBEDDING
from infer.routing.catalog import Candidate
from infer.routing.preferences import Preferences


@dataclass(frozen=True)
class EmbeddingResult:
    """The vectors in input order, the tokens billed and what they cost (micro-USD)."""

    vectors: list[list[float]]
    prompt_tokens: int
    cost: int
    estimated: bool
    rate_limits: dict[str, str]


async def create_embeddings(
    owner: Completions,
    *,
    buyer: Principal,
    request: EmbeddingRequest,
    preferences: Preferences,
    request_id: str,
) -> EmbeddingResult:
    """Embed `request.inputs` (below), counted in the metrics as a chat completion is."""
    began = time.perf_counter()
    try:
        result = await _embed(
            owner, buyer=buyer, request=request, preferences=preferences, request_id=request_id
        )
    except InferError as error:
        # Only a model some node serves may name a series (NotFound: none does).
        routed = not isinstance(error, NotFound | ModelNotAllowed)
        model = request.model if routed else UNROUTED
        owner.metrics.finished(model, error.status, time.perf_counter() - began)
        raise
    owner.metrics.series(request.model).tokens_in.inc(result.prompt_tokens)
    owner.metrics.finished(request.model, 200, time.perf_counter() - began)
    return result


async def _embed(
    owner: Completions,
    *,
    buyer: Principal,
    request: EmbeddingRequest,
    preferences: Preferences,
    request_id: str,
) -> EmbeddingResult:
    """Embed `request.inputs` on the best node whose model has the "embedding" capability.

    The hold covers the inputs' upper bound at the dearest node tried; what is charged
    is the node's own count of input tokens where plausible (billing/metering.py), else
    the platform's estimate. A node that fails is not charged for and the next is tried.
    """
    allowed = buyer.allowed_models
    if allowed is not None and request.model not in allowed:
        raise ModelNotAllowed(
            f"This API key may not use the model {request.model!r}; it may use"
            f" {', '.join(sorted(allowed)) or 'no model'}.",
            param="model",
        )
    inputs = request.inputs
    prompt_bound = estimate_prompt_tokens(inputs)
    prompt_typical = typical_prompt_tokens(inputs)
    # Each input is embedded on its own: the longest must fit the model's context.
    longest = max(typical_prompt_tokens([text]) for text in inputs)
    # At capacity, wait in the model's queue as a chat would (routing/waiting.py).
    attempts = await owner.capacity.plan(
        request.model,
        functools.partial(
            owner.router.plan,
            request.model,
            preferences,
            needs=EMBEDDING,
            expected_prompt_tokens=longest,
            expected_output_tokens=0,
            prompt_param="input",
        ),
    )
    worst_case = max(
        cost(
            prompt_tokens=prompt_bound,
            completion_tokens=0,
            input_per_million=c.input_price_per_million,
            output_per_million=c.output_price_per_million,
        )
        for c in attempts
    )
    reservation = await owner.reserve(
        buyer=buyer, amount=worst_case, tokens=prompt_bound, request_id=request_id
    )
    try:
        for operator_id in {c.operator_id for c in attempts}:
            await owner.accounts.of(operator_id)  # known before any node is called
        started = time.perf_counter()
        candidate, answer = await _first_answer(owner, attempts, request)
    except BaseException:
        if reservation.hold_id is not None:
            owner.release(reservation.hold_id)
        raise
    metered = meter(
        reported=None if answer.prompt_tokens is None else Usage(answer.prompt_tokens, 0),
        complete=True,
        prompt_bound=prompt_bound,
        prompt_typical=prompt_typical,
        prompt_bytes=sum(len(text.encode()) for text in inputs),
        relayed_chunks=0,
        relayed_bytes=0,
        max_tokens=0,
    )
    amount = cost(
        prompt_tokens=metered.prompt_tokens,
        completion_tokens=0,
        input_per_million=candidate.input_price_per_million,
        output_per_million=candidate.output_price_per_million,
    )
    parts = split(amount, fee_parts_per_million=owner.policy.fee_parts_per_million)
    duration_ms = (time.perf_counter() - started) * 1000
    usage = settlement.Usage(
        request_id=request_id,
        buyer_id=buyer.user_id,
        api_key_id=buyer.api_key_id,
        node_id=candidate.node_id,
        operator_id=candidate.operator_id,
        model=request.model,
        prompt_tokens=metered.prompt_tokens,
        completion_tokens=0,
        estimated=metered.estimated,
        cost=amount,
        earning=parts.earning,
        fee=parts.fee,
        status=UsageStatus.COMPLETED,
        ttft_ms=duration_ms,
        duration_ms=duration_ms,
    )
    owner.write(
        Settlement(
            hold_id=reservation.hold_id,
            buyer_account_id=reservation.account_id,
            operator_account_id=await owner.accounts.of(candidate.operator_id),
            usage=usage,
            budget_key_id=reservation.budget_key_id,
        )
    )
    return EmbeddingResult(
        vectors=answer.vectors,
        prompt_tokens=metered.prompt_tokens,
        cost=amount,
        estimated=metered.estimated,
        rate_limits=reservation.rate_limits,
    )


async def _first_answer(
    owner: Completions, attempts: list[Candidate], request: EmbeddingRequest
) -> tuple[Candidate, Embeddings]:
    """The first node in `attempts` to answer whole, trying the next on a node's failure."""
    state = owner.router.state
    last_error: UpstreamError | None = None
    for candidate in attempts:
        client = client_for(
            candidate.runtime,
            owner.http,
            base_url=candidate.endpoint,
            token=owner.token_of(candidate),
            deadlines=owner.deadlines,
        )
        await state.acquire(candidate.node_id)
        ok = False
        try:
            # The node's own name for the model (the buyer may have left out `:latest`).
            answer = await embed(client, _named(request, candidate.model))
            ok = True
        except UpstreamError as error:
            last_error = error
            continue
        except BadInput:
            ok = True  # the buyer's request, not the node's fault
            raise
        finally:
            with anyio.CancelScope(shield=True):
                # Embedding latency is not a chat's time to first token: no figures.
                await state.release(candidate.node_id, ok=ok, ttft_ms=None, tokens_per_second=None)
        return candidate, answer
    raise last_error or UpstreamError("no node could serve the request")


def _named(request: EmbeddingRequest, model: str) -> EmbeddingRequest:
    if request.model == model:
        return request
    return EmbeddingRequest(model=model, inputs=request.inputs, dimensions=request.dimensions)
