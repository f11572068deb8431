"""Per-key rate limits: requests and tokens per minute, with OpenAI's x-ratelimit headers."""

from __future__ import annotations

from dataclasses import dataclass

from infer.accounts.principal import Principal
from infer.errors import RateLimited
from infer.ratelimit import Limit, RateLimiter


@dataclass(frozen=True)
class KeyLimits:
    requests_per_minute: int
    tokens_per_minute: int


async def admit(
    limiter: RateLimiter, principal: Principal, *, defaults: KeyLimits, tokens: int
) -> dict[str, str]:
    """Count one request and its expected tokens, both or neither; the headers to send.

    Raises RateLimited when either would go over its limit. Nothing is counted then: a
    request refused for its tokens no longer uses up one of the key's requests as well.
    """
    rpm = principal.requests_per_minute or defaults.requests_per_minute
    tpm = principal.tokens_per_minute or defaults.tokens_per_minute
    key = str(principal.api_key_id or principal.user_id)
    requests_limit = Limit.parse(f"{rpm}/minute", "key-requests", key)
    tokens_limit = Limit.parse(f"{tpm}/minute", "key-tokens", key)
    # A request expecting more tokens than a minute allows still goes through on an idle key.
    verdict = await limiter.acquire((requests_limit, 1), (tokens_limit, min(tokens, tpm)))
    if verdict.refused is not None:
        if verdict.refused.limit == requests_limit:
            raise _limited("requests", rpm, verdict.refused.retry_after)
        raise _limited("tokens", tpm, verdict.refused.retry_after)
    requests, tokens_window = verdict.windows
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-remaining-requests": str(requests.remaining),
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-tokens": str(tokens_window.remaining),
    }


def _limited(what: str, limit: int, wait: int) -> RateLimited:
    return RateLimited(
        f"rate limit of {limit} {what} per minute reached for this key; retry in {wait} s",
        retry_after=wait,
    )
