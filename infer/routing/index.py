"""One model's candidates, grouped online/degraded and pre-sorted by cheap static keys."""

from __future__ import annotations

import math
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from functools import cached_property
from itertools import accumulate
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the catalog builds indexes, so this module may not import it at run time
    from infer.routing.catalog import Candidate

UNCHECKED_LATENCY_MS = 500.0  # a node never health-checked, as scoring assumes it
COST_PROMPT_TOKENS = 1_000  # the static price key's weights: scoring's default request
COST_OUTPUT_TOKENS = 256


def health_latency(candidate: Candidate) -> float:
    latency = candidate.health_latency_ms
    return UNCHECKED_LATENCY_MS if latency is None else latency


def static_cost(candidate: Candidate) -> int:
    """What a default request costs on this node: the price key the index is sorted by."""
    return (
        candidate.input_price_per_million * COST_PROMPT_TOKENS
        + candidate.output_price_per_million * COST_OUTPUT_TOKENS
    )


class SortedView:
    """Candidates sorted by one key, with the keys alongside for bisection."""

    def __init__(self, candidates: Sequence[Candidate], keys: Sequence[float]) -> None:
        self.candidates = candidates
        self.keys = keys

    def __len__(self) -> int:
        return len(self.candidates)

    def upto(self, key: float) -> int:
        """How many candidates have a key of at most `key`."""
        return bisect_right(self.keys, key)

    def before(self, key: float) -> int:
        """How many candidates have a key below `key`."""
        return bisect_left(self.keys, key)


def _view(candidates: Sequence[Candidate], key: Callable[[Candidate], float]) -> SortedView:
    # A stable sort of the catalog's rows, which come by node id: ties stay in that order.
    ordered = sorted(candidates, key=key)
    return SortedView(ordered, [key(c) for c in ordered])


class Group:
    """The candidates of one static tier (online, or degraded), each view made on first use."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = tuple(candidates)

    def __len__(self) -> int:
        return len(self.candidates)

    @cached_property
    def by_latency(self) -> SortedView:
        return _view(self.candidates, health_latency)

    @cached_property
    def by_cost(self) -> SortedView:
        return _view(self.candidates, static_cost)

    @cached_property
    def by_input(self) -> SortedView:
        return _view(self.candidates, lambda c: c.input_price_per_million)

    @cached_property
    def by_output(self) -> SortedView:
        return _view(self.candidates, lambda c: c.output_price_per_million)

    @cached_property
    def _cheapest_output(self) -> list[int]:
        """The lowest completion price among the first i+1 nodes by prompt price."""
        outputs = (c.output_price_per_million for c in self.by_input.candidates)
        return list(accumulate(outputs, min))

    def any_affordable(self, max_prompt: int | None, max_completion: int | None) -> bool:
        """Whether a node is within both limits: two bisections, not a scan."""
        within = len(self) if max_prompt is None else self.by_input.upto(max_prompt)
        if within == 0:
            return False
        return max_completion is None or self._cheapest_output[within - 1] <= max_completion


class ModelIndex:
    """A model's candidates as the catalog loaded them, plus the views a plan samples from.

    Built once per catalog load; the sorted views are made by the first plan that needs
    them (O(n log n) once per load, not per plan), so a model served by a few nodes,
    whose plans score every candidate, never pays for them.
    """

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = tuple(candidates)
        self._able: dict[tuple[frozenset[str], float], ModelIndex] = {}

    def __len__(self) -> int:
        return len(self.candidates)

    def able(self, needs: frozenset[str], tokens: int) -> ModelIndex:
        """The candidates offering every one of `needs` whose context length (when known)
        holds `tokens`: this index itself when all do (the usual case: two comparisons),
        else a sub-index made once per catalog load and kept, like the sorted views.

        Which nodes fit a length depends only on the shortest known context length that
        holds it, so the sub-indexes are at most one per distinct length and need set.
        """
        if needs <= self._shared and tokens <= self._shortest:
            return self
        lengths = self._lengths
        floor = lengths[bisect_left(lengths, tokens)] if tokens > self._shortest else 0.0
        found = self._able.get((needs, floor))
        if found is None:
            found = self._able[(needs, floor)] = ModelIndex(
                [
                    c
                    for c in self.candidates
                    if needs <= c.capabilities
                    and (c.context_length is None or c.context_length >= floor)
                ]
            )
        return found

    @cached_property
    def _shared(self) -> frozenset[str]:
        """The capabilities every candidate offers."""
        if not self.candidates:
            return frozenset()
        return frozenset.intersection(*(c.capabilities for c in self.candidates))

    @cached_property
    def _lengths(self) -> list[float]:
        """The distinct known context lengths, ascending, then infinity (unknown)."""
        known = {c.context_length for c in self.candidates if c.context_length is not None}
        return [*sorted(known), math.inf]

    @cached_property
    def _shortest(self) -> float:
        """The shortest context length (infinity when none is known): what always fits."""
        return self._lengths[0]

    @cached_property
    def online(self) -> Group:
        return Group([c for c in self.candidates if not c.degraded])

    @cached_property
    def degraded(self) -> Group:
        return Group([c for c in self.candidates if c.degraded])

    @cached_property
    def _named(self) -> dict[str, tuple[Candidate, ...]]:
        found: dict[str, list[Candidate]] = {}
        for candidate in self.candidates:
            found.setdefault(candidate.name, []).append(candidate)
            found.setdefault(str(candidate.node_id), []).append(candidate)
        return {key: tuple(value) for key, value in found.items()}

    @cached_property
    def _by_id(self) -> dict[uuid.UUID, Candidate]:
        return {candidate.node_id: candidate for candidate in self.candidates}

    def named(self, key: str) -> tuple[Candidate, ...]:
        """The candidates whose name or node id is `key` (as `provider.order` names them)."""
        return self._named.get(key, ())

    def get(self, node_id: uuid.UUID) -> Candidate | None:
        return self._by_id.get(node_id)

    def any_affordable(self, max_prompt: int | None, max_completion: int | None) -> bool:
        return any(
            group.any_affordable(max_prompt, max_completion)
            for group in (self.online, self.degraded)
        )
