"""The router: candidates from the catalog, figures from the state, order from scoring."""

from __future__ import annotations

import random

from infer.errors import NoNodeAvailable, NotFound
from infer.routing import scoring
from infer.routing.catalog import Candidate, NodeCatalog
from infer.routing.preferences import Preferences
from infer.routing.state import RouterState

_NO_PREFERENCES = Preferences()


class Router:
    """Chooses the nodes to try for a request; no database query on this path."""

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

    async def plan(
        self,
        model: str,
        preferences: Preferences | None = None,
        *,
        expected_prompt_tokens: int = scoring.DEFAULT_PROMPT_TOKENS,
        expected_output_tokens: int = scoring.DEFAULT_OUTPUT_TOKENS,
    ) -> list[Candidate]:
        """The candidates to try in order; NotFound if nobody serves `model`, else
        NoNodeAvailable if none of them can take this request now."""
        preferences = preferences or _NO_PREFERENCES
        candidates = await self.catalog.candidates(model)
        if not candidates:
            raise NotFound(f"model {model!r} is not served by any node", param="model")
        stats = await self.state.snapshot(candidate.node_id for candidate in candidates)
        attempts = scoring.plan(
            candidates,
            stats,
            preferences,
            self._rng,
            max_attempts=self._max_attempts,
            expected_prompt_tokens=expected_prompt_tokens,
            expected_output_tokens=expected_output_tokens,
        )
        if not attempts:
            raise _none_available(model, candidates, preferences)
        return attempts


def _none_available(
    model: str, candidates: list[Candidate], preferences: Preferences
) -> NoNodeAvailable:
    if not any(scoring.affordable(candidate, preferences) for candidate in candidates):
        return NoNodeAvailable(f"no node serves {model!r} within max_price", param="provider")
    if preferences.order and not preferences.allow_fallbacks:
        message = f"none of the nodes in provider.order can serve {model!r} now"
        return NoNodeAvailable(message, param="provider")
    return NoNodeAvailable(f"every node serving {model!r} is busy; try again shortly")
