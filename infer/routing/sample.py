"""The bounded set of candidates one plan scores when many nodes serve the model."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping

from infer.routing.catalog import Candidate
from infer.routing.index import Group, ModelIndex, SortedView
from infer.routing.preferences import MAX_ORDER, Preferences
from infer.routing.scoring import NEAR, NEAR_MS, OVERLOAD, affordable, tier
from infer.routing.state import NodeStats

SMALL = 64  # a model served by at most this many nodes: every one is scored
HEAD = 4  # the best by static key (as many as scoring's POOL), and as many near-equal
SAMPLE = 12  # drawn at random from the nodes within max_price
MEMORY = 6  # nodes recent plans chose, kept per model and sort, scored again
ROUNDS = 3  # further samples while fewer than max_attempts nodes are ready
SCAN = 64  # a max_price range this short is taken whole
DRAWS = 4  # random positions tried per node wanted, when max_price rejects some
ORDERED = 8  # nodes per provider.order entry (names are unique per operator only)
PRICE_ENDS = 2  # cheapest by prompt and by completion price, for sort=price
# At most this many candidates are scored per plan, however many nodes serve the model:
# the ordered ones, the remembered ones, then per group (online, degraded) its head and
# its samples (a range of at most SCAN is taken whole once, so never more than that).
_PER_GROUP = 2 * HEAD + 3 * PRICE_ENDS + max(SCAN, SAMPLE * (ROUNDS + 1))
MAX_SCORED = MAX_ORDER * ORDERED + MEMORY + 2 * _PER_GROUP

_NO_STATS = NodeStats()


class Sampler:
    """Draws one plan's candidates from a model's index, each node at most once."""

    def __init__(self, index: ModelIndex, preferences: Preferences, rng: random.Random) -> None:
        self._index = index
        self._preferences = preferences
        self._rng = rng
        self._chosen: set[int] = set()  # node ids as ints: UUID's own hash is slow Python

    @property
    def only_ordered(self) -> bool:
        return bool(self._preferences.order) and not self._preferences.allow_fallbacks

    def first(self, remembered: Iterable[uuid.UUID]) -> list[Candidate]:
        """Nodes named in `order`, nodes recent plans chose, the best online by static key
        (health latency, or price for sort=price), and a random sample of the online ones."""
        found: list[Candidate] = []
        for key in self._preferences.order:
            for candidate in self._index.named(key)[:ORDERED]:
                self._offer(candidate, found)
        if self.only_ordered:
            return found
        for node_id in remembered:
            if (recent := self._index.get(node_id)) is not None:
                self._offer(recent, found)
        self._head(self._index.online, found)
        self._sample(self._index.online, found)
        return found

    def more(self) -> list[Candidate]:
        """Another random sample of online nodes (empty once there are none left to draw)."""
        found: list[Candidate] = []
        self._sample(self._index.online, found)
        return found

    def degraded(self) -> list[Candidate]:
        """Degraded nodes, drawn as the online ones were: only when those are too few."""
        found: list[Candidate] = []
        self._head(self._index.degraded, found)
        self._sample(self._index.degraded, found)
        return found

    def _fits(self, candidate: Candidate) -> bool:
        return candidate.node_id.int not in self._chosen and affordable(
            candidate, self._preferences
        )

    def _offer(self, candidate: Candidate, found: list[Candidate]) -> bool:
        if not self._fits(candidate):
            return False
        self._chosen.add(candidate.node_id.int)
        found.append(candidate)
        return True

    def _head(self, group: Group, found: list[Candidate]) -> None:
        if not group:
            return
        prices = self._preferences
        limited = prices.max_price_prompt is not None or prices.max_price_completion is not None
        if prices.sort == "price" or limited:
            # The cheapest ends, so that a max_price only a few meet finds them.
            self._walk(group.by_cost, PRICE_ENDS, found)
            self._walk(group.by_input, PRICE_ENDS, found)
            self._walk(group.by_output, PRICE_ENDS, found)
        self._best(group.by_cost if prices.sort == "price" else group.by_latency, found)

    def _best(self, view: SortedView, found: list[Candidate]) -> None:
        """The HEAD best of `view` (of those tied with the last of them, some at random),
        then HEAD more at random among the rest that are near-equal to the best, so that
        a thousand equal nodes share the work rather than the first few by node id."""
        budget = min(len(view), HEAD * DRAWS)
        start = next((i for i in range(budget) if self._fits(view.candidates[i])), None)
        if start is None:
            return
        best, cut = view.keys[start], view.keys[min(len(view), start + HEAD) - 1]
        tied = view.before(cut)
        self._walk(view, tied - start, found, start=start)
        self._draw(view, tied, view.upto(cut), HEAD - (tied - start), found)
        if self._preferences.sort == "price":
            near = view.upto(best)  # only an equal price is equal
        else:
            near = view.upto(max(best * (1.0 + NEAR), best + NEAR_MS))
        self._draw(view, view.upto(cut), near, HEAD, found)

    def _walk(self, view: SortedView, count: int, found: list[Candidate], start: int = 0) -> None:
        """`count` nodes from `start` on, in order, skipping those that do not fit."""
        wanted = len(found) + count
        for position in range(start, min(len(view), start + count * DRAWS)):
            if len(found) >= wanted:
                break
            self._offer(view.candidates[position], found)

    def _draw(
        self, view: SortedView, low: int, high: int, count: int, found: list[Candidate]
    ) -> None:
        """`count` nodes at random from positions [low, high), skipping those that do not
        fit: a batch of as many as are missing, at most DRAWS batches."""
        wanted = len(found) + count
        for _ in range(DRAWS):
            missing = min(wanted - len(found), high - low)
            if missing <= 0:
                return
            for position in self._rng.sample(range(low, high), missing):
                self._offer(view.candidates[position], found)

    def _sample(self, group: Group, found: list[Candidate]) -> None:
        """SAMPLE nodes at random among those within max_price (all of them, if few)."""
        view, within = self._within_max_price(group)
        if within <= SCAN:
            for candidate in view.candidates[:within]:
                self._offer(candidate, found)
            return
        self._draw(view, 0, within, SAMPLE, found)

    def _within_max_price(self, group: Group) -> tuple[SortedView, int]:
        """The view to draw from and how many of its first nodes can be within max_price:
        those under the prompt limit or those under the completion limit, the fewer."""
        prompt = self._preferences.max_price_prompt
        completion = self._preferences.max_price_completion
        if prompt is None and completion is None:
            return group.by_latency, len(group)
        by_prompt = len(group) if prompt is None else group.by_input.upto(prompt)
        by_completion = len(group) if completion is None else group.by_output.upto(completion)
        if by_prompt <= by_completion:
            return group.by_input, by_prompt
        return group.by_output, by_completion


def ready_and_usable(
    candidates: Iterable[Candidate],
    stats: Mapping[uuid.UUID, NodeStats],
    preferences: Preferences,
    now: float,
) -> tuple[int, int]:
    """How many of these the plan would keep, and how many of those are online and idle
    enough to take the request now (tier 0)."""
    usable = ready = 0
    for candidate in candidates:
        node_stats = stats.get(candidate.node_id, _NO_STATS)
        if not affordable(candidate, preferences):
            continue
        if node_stats.in_flight >= candidate.capacity * OVERLOAD:
            continue
        usable += 1
        if tier(candidate, node_stats, now) == 0:
            ready += 1
    return ready, usable
