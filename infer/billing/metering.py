"""Token metering: trust the runtime's figures within bounds, else count what was relayed.

Rules (also in docs/billing.md):
- prompt tokens: the runtime's count, clamped to the prompt's upper bound (UTF-8 bytes
  plus template overhead). When it reports none, or 0 (Ollama reports 0 for a cached
  prompt), the typical estimate is used (4 bytes a token) and the record is `estimated`.
- completion tokens: the runtime's count, clamped to max_tokens and to the bytes
  relayed (a token is at least one byte). When it reports none, or the stream ended
  early, the number of content chunks relayed (runtimes send one token per chunk),
  clamped to max_tokens, and the record is `estimated`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infer.billing.pricing import TOKENS_PER_MESSAGE
from infer.nodes.clients.base import Usage

BYTES_PER_TOKEN = 4  # a typical figure for English text with BPE tokenizers


def typical_prompt_tokens(contents: Iterable[str]) -> int:
    total = 0
    count = 0
    for content in contents:
        total += len(content.encode())
        count += 1
    return -(-total // BYTES_PER_TOKEN) + count * (TOKENS_PER_MESSAGE // 4)


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
) -> Metered:
    estimated = False
    if reported is not None and reported.prompt_tokens > 0:
        prompt = min(reported.prompt_tokens, prompt_bound)
    else:
        prompt, estimated = min(prompt_typical, prompt_bound), True
    if reported is not None and complete:
        ceiling = min(max_tokens, max(relayed_bytes, relayed_chunks))
        completion = max(0, min(reported.completion_tokens, ceiling))
    else:
        completion, estimated = min(relayed_chunks, max_tokens), True
    return Metered(prompt_tokens=prompt, completion_tokens=completion, estimated=estimated)
