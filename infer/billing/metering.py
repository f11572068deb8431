"""Token metering: trust the runtime's figures within a plausible range, else count the relay.

Rules (also in docs/billing.md, "Metering"):
- Each reported count must lie in a range derived from what the platform itself saw.
  Prompt tokens: from the prompt's UTF-8 bytes / MAX_BYTES_PER_TOKEN (at least 1) up to
  its upper bound (bytes plus template overhead). Completion tokens: from the larger of
  relayed bytes / MAX_BYTES_PER_TOKEN and relayed chunks / MAX_CHUNKS_PER_TOKEN, up to
  the smaller of max_tokens and the relayed bytes (a token is at least one byte).
- Outside its range (0 included, whenever something was relayed), or missing, or when
  the stream ended early, a count is replaced by the platform's own estimate and the
  record is `estimated`: the prompt's typical size (4 bytes a token), or the content
  chunks relayed (runtimes send a token a chunk), each kept inside its range.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infer.billing.pricing import TOKENS_PER_MESSAGE
from infer.nodes.clients.base import Usage

BYTES_PER_TOKEN = 4  # a typical figure for English text with BPE tokenizers
# Generous on purpose: in Mistral's 131k-entry tekken vocabulary 67 of 150,000 tokens are
# longer (runs of "-", "*" or spaces, up to 78 bytes), and a whole answer averaging more
# than 32 bytes a token would have to be made of little else.
MAX_BYTES_PER_TOKEN = 32
# Runtimes stream a token a chunk, or several (batched output, speculative decoding), and
# hold back partial UTF-8: a chunk is at least one token. 2 leaves room for odd framing.
MAX_CHUNKS_PER_TOKEN = 2


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def typical_prompt_tokens(contents: Iterable[str]) -> int:
    total = 0
    count = 0
    for content in contents:
        total += len(content.encode())
        count += 1
    return _ceil_div(total, BYTES_PER_TOKEN) + count * (TOKENS_PER_MESSAGE // 4)


@dataclass(frozen=True)
class Plausible:
    """The token counts the platform's own evidence allows, both ends included."""

    low: int
    high: int

    def admits(self, tokens: int) -> bool:
        return self.low <= tokens <= self.high

    def clamp(self, tokens: int) -> int:
        # `high` wins when the range is empty: nothing is billed beyond what was held.
        return min(self.high, max(self.low, tokens))


def plausible_prompt(*, prompt_bytes: int | None, prompt_bound: int) -> Plausible:
    """Prompt tokens the runtime may report; without the prompt's size only 0 is refused."""
    low = 1 if prompt_bytes is None else max(1, _ceil_div(prompt_bytes, MAX_BYTES_PER_TOKEN))
    return Plausible(low=low, high=prompt_bound)


def plausible_completion(*, relayed_bytes: int, relayed_chunks: int, max_tokens: int) -> Plausible:
    """Completion tokens the runtime may report for the content the platform relayed."""
    low = max(
        _ceil_div(relayed_bytes, MAX_BYTES_PER_TOKEN),
        _ceil_div(relayed_chunks, MAX_CHUNKS_PER_TOKEN),
    )
    return Plausible(low=low, high=min(max_tokens, max(relayed_bytes, relayed_chunks)))


@dataclass(frozen=True)
class Metered:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool


def meter(
    *,
    reported: Usage | None,
    complete: bool,
    prompt_bound: int,
    prompt_typical: int,
    relayed_chunks: int,
    relayed_bytes: int,
    max_tokens: int,
    prompt_bytes: int | None = None,
) -> Metered:
    """The tokens billed: the runtime's counts where plausible, the platform's elsewhere.

    `prompt_bytes` is the UTF-8 size of the prompt's message contents; without it the
    prompt's lower bound is 1 token.
    """
    prompts = plausible_prompt(prompt_bytes=prompt_bytes, prompt_bound=prompt_bound)
    completions = plausible_completion(
        relayed_bytes=relayed_bytes, relayed_chunks=relayed_chunks, max_tokens=max_tokens
    )
    prompt: int | None = None
    completion: int | None = None
    if reported is not None and prompts.admits(reported.prompt_tokens):
        prompt = reported.prompt_tokens
    # A stream that ended early has no final count; a count sent before the end is not one.
    if reported is not None and complete and completions.admits(reported.completion_tokens):
        completion = reported.completion_tokens
    return Metered(
        prompt_tokens=prompts.clamp(prompt_typical) if prompt is None else prompt,
        completion_tokens=completions.clamp(relayed_chunks) if completion is None else completion,
        estimated=prompt is None or completion is None,
    )
