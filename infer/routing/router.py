"""The router: candidates from the catalog, figures from the state, order from scoring."""

from __future__ import annotations

import random
import time
import uuid

from infer.errors import BadInput, NodesBusy, NoNodeAvailable, NotFound
from infer.routing import capabilities, scoring
from infer.routing.catalog import Candidate, NodeCatalog
from infer.routing.index import ModelIndex
from infer.routing.preferences import Preferences, Sort
from infer.routing.sample import MEMORY, ROUNDS, SMALL, Sampler, ready_and_usable
from infer.routing.state import NodeStats, RouterState

_NO_PREFERENCES = Preferences()


class Router:
    """Chooses the nodes to try for a request; no database query on this path.

    A model served by up to `sample.SMALL` nodes has all of them scored; beyond that a
    plan scores a bounded sample of them (see `sample.Sampler`), so that its cost does
    not grow with the market. The nodes recent plans chose are kept per model and sort
    and scored again, so that a fast node once found keeps its traffic.
    """

    def __init__(
        self,
        catalog: NodeCatalog,
        state: RouterState,
        *,
        rng: random.Random | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.catalog = catalog
        self.state = state
        self._rng = rng or random.Random()  # noqa: S311 (load spreading, not secrets)
        self._max_attempts = max_attempts
        self._recent: dict[tuple[str, Sort | None], tuple[uuid.UUID, ...]] = {}

    async def plan(
        self,
        model: str,
        preferences: Preferences | None = None,
        *,
        needs: frozenset[str] = capabilities.COMPLETION,
        expected_prompt_tokens: int = scoring.DEFAULT_PROMPT_TOKENS,
        expected_output_tokens: int = scoring.DEFAULT_OUTPUT_TOKENS,
        prompt_param: str = "messages",
    ) -> list[Candidate]:
        """The candidates to try in order; NotFound if nobody serves `model`; BadInput if
        no node serving it has every one of `needs` with a context length (when known)
        that holds the expected prompt and output (a prompt too long for all is named
        by `prompt_param`); else NoNodeAvailable if none of them can take it now."""
        preferences = preferences or _NO_PREFERENCES
        served = await self.catalog.index(model)
        if served is None or not served.candidates:
            raise NotFound(f"model {model!r} is not served by any node", param="model")
        tokens = expected_prompt_tokens + expected_output_tokens
        index = served.able(needs, tokens)
        if not index.candidates:
            raise _unable(
                model,
                served,
                needs,
                prompt=(prompt_param, expected_prompt_tokens),
                output=expected_output_tokens,
            )
        if len(index) <= SMALL:
            candidates = list(index.candidates)
            stats = await self.state.snapshot(candidate.node_id for candidate in candidates)
        else:
            candidates, stats = await self._sample(model, index, preferences)
        attempts = scoring.plan(
            candidates,
            stats,
            preferences,
            self._rng,
            max_attempts=self._max_attempts,
            expected_prompt_tokens=expected_prompt_tokens,
            expected_output_tokens=expected_output_tokens,
        )
        if len(index) > SMALL:
            self._remember((model, preferences.sort), attempts)
        if not attempts:
            raise _none_available(model, index, preferences)
        return attempts

    async def _sample(
        self, model: str, index: ModelIndex, preferences: Preferences
    ) -> tuple[list[Candidate], dict[uuid.UUID, NodeStats]]:
        """A bounded sample with enough nodes ready to fill the attempts, when there are."""
        sampler = Sampler(index, preferences, self._rng)
        candidates = sampler.first(self._recent.get((model, preferences.sort), ()))
        stats = await self.state.snapshot(candidate.node_id for candidate in candidates)
        if not sampler.only_ordered:
            now = time.time()
            for round_ in range(ROUNDS + 1):
                ready, usable = ready_and_usable(candidates, stats, preferences, now)
                if ready >= self._max_attempts:
                    break
                # Too few online nodes can take it now: draw more, and after the last
                # round the degraded ones, which come after every online node anyway.
                if round_ < ROUNDS:
                    more = sampler.more()
                elif usable < self._max_attempts:
                    more = sampler.degraded()
                else:
                    break
                stats.update(await self.state.snapshot(c.node_id for c in more))
                candidates.extend(more)
        # Equal nodes tie on everything but their place in the list: make that random.
        self._rng.shuffle(candidates)
        return candidates, stats

    def _remember(self, key: tuple[str, Sort | None], attempts: list[Candidate]) -> None:
        recent = [candidate.node_id for candidate in attempts]
        recent.extend(node_id for node_id in self._recent.get(key, ()) if node_id not in recent)
        self._recent[key] = tuple(recent[:MEMORY])


def _unable(
    model: str,
    served: ModelIndex,
    needs: frozenset[str],
    *,
    prompt: tuple[str, int],
    output: int,
) -> BadInput:
    """Why no node serving `model` can take this request at all (not merely now)."""
    short = capabilities.shortfall(needs, {c.capabilities for c in served.candidates})
    if short is not None:
        message = f"no node serving {model!r} supports {short.feature}"
        return BadInput(message, param=short.param)
    param, tokens = prompt
    longest = max(c.context_length or 0 for c in served.candidates if needs <= c.capabilities)
    message = (
        f"the longest context of a node serving {model!r} is {longest} tokens; this request "
        f"needs about {tokens + output} ({tokens} in the prompt, {output} for the answer)"
    )
    return BadInput(message, param=param if tokens > longest else "max_tokens")


def _none_available(model: str, index: ModelIndex, preferences: Preferences) -> NoNodeAvailable:
    if not index.any_affordable(preferences.max_price_prompt, preferences.max_price_completion):
        return NoNodeAvailable(f"no node serves {model!r} within max_price", param="provider")
    if preferences.order and not preferences.allow_fallbacks:
        message = f"none of the nodes in provider.order can serve {model!r} now"
        return NoNodeAvailable(message, param="provider")
    return NodesBusy(f"every node serving {model!r} is busy; try again shortly")
