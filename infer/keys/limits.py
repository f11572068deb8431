"""Per-key rate limits: requests and tokens per minute, with OpenAI's x-ratelimit headers."""

from __future__ import annotations

from dataclasses import dataclass

from infer.accounts.principal import Principal
from infer.errors import RateLimited
from infer.ratelimit import RateLimiter


@dataclass(frozen=True)
class KeyLimits:
    requests_per_minute: int
    tokens_per_minute: int


async def admit(
    limiter: RateLimiter, principal: Principal, *, defaults: KeyLimits, tokens: int
) -> dict[str, str]:
    """Count one request and its expected tokens; the headers to send, or RateLimited."""
    rpm = principal.requests_per_minute or defaults.requests_per_minute
    tpm = principal.tokens_per_minute or defaults.tokens_per_minute
    key = str(principal.api_key_id or principal.user_id)
    requests_limit, tokens_limit = f"{rpm}/minute", f"{tpm}/minute"
    if not await limiter.hit(requests_limit, "key-requests", key):
        wait = await limiter.retry_after(requests_limit, "key-requests", key) or 1
        raise _limited("requests", rpm, wait)
    if not await limiter.hit(tokens_limit, "key-tokens", key, cost=min(tokens, tpm)):
        wait = await limiter.retry_after(tokens_limit, "key-tokens", key) or 1
        raise _limited("tokens", tpm, wait)
    # One more round trip for what is left of the requests; the tokens' remainder is not
    # worth a second one on every request.
    [requests_left] = await limiter.remaining((requests_limit, "key-requests", key))
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-remaining-requests": str(requests_left),
        "x-ratelimit-limit-tokens": str(tpm),
    }


def _limited(what: str, limit: int, wait: int) -> RateLimited:
    return RateLimited(
        f"rate limit of {limit} {what} per minute reached for this key; retry in {wait} s",
        retry_after=wait,
    )
