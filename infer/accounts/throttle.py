"""Log-in throttling that strangers cannot turn against an account's owner.

Failed log-ins are counted three ways (OWASP's authentication cheat sheet):

- per (account, address): a tight limit, the one an attacker guessing one account meets;
- per address, across accounts: looser, against one address spraying many accounts;
- per account, across addresses: high, against a guess spread over many addresses.
  Once it is over, the account is closed only to addresses it has never logged in
  from: an address with a session of this account (live or not) still gets in, so
  failures from strangers' addresses cannot lock the owner out of their own.

An IPv6 address counts by its /64, which one subscriber usually holds whole (so a
host cannot step around the limits by walking its own prefix).
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass

from sqlmodel import col, select

from infer.db import Database
from infer.errors import RateLimited
from infer.models import Session
from infer.ratelimit import RateLimiter

_THROTTLED = "too many failed log-in attempts; try again later"
# How many of the account's latest sessions are searched for the address.
_KNOWN_SESSIONS = 200


@dataclass(frozen=True)
class LoginLimits:
    """The three limits, as `limits` reads them ("10/15 minutes")."""

    pair: str
    address: str
    account: str


def address_key(ip: str | None) -> str:
    """The address as counted: IPv4 as it is, IPv6 as its /64, "-" when unknown."""
    if not ip:
        return "-"
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


async def is_known_address(db: Database, *, user_id: uuid.UUID, address: str) -> bool:
    """Whether the user has logged in (or signed up) from this address before."""
    async with db.session() as session:
        ips = await session.exec(
            select(Session.ip)
            .where(Session.user_id == user_id, col(Session.ip).is_not(None))
            .order_by(col(Session.created_at).desc())
            .limit(_KNOWN_SESSIONS)
        )
        return any(address_key(ip) == address for ip in ips)


async def refuse_when_throttled(
    db: Database,
    *,
    limiter: RateLimiter,
    limits: LoginLimits,
    email: str,
    address: str,
    user_id: uuid.UUID | None,
) -> None:
    """Raise RateLimited when this address may not try this account now."""
    waits = [
        await limiter.retry_after(limits.pair, "login-pair", email, address),
        await limiter.retry_after(limits.address, "login-address", address),
    ]
    wait = max((w for w in waits if w is not None), default=None)
    if wait is None:
        account_wait = await limiter.retry_after(limits.account, "login-account", email)
        if account_wait is not None and not (
            user_id is not None and await is_known_address(db, user_id=user_id, address=address)
        ):
            wait = account_wait
    if wait is not None:
        raise RateLimited(_THROTTLED, retry_after=wait)


async def count_failure(
    *, limiter: RateLimiter, limits: LoginLimits, email: str, address: str
) -> None:
    """Count one failed log-in against each limit on its own.

    Not all-or-none: a full account counter must not stop the pair counter, or a known
    address could guess without limit once strangers had filled the account's.
    """
    await limiter.hit(limits.pair, "login-pair", email, address)
    await limiter.hit(limits.address, "login-address", address)
    await limiter.hit(limits.account, "login-account", email)
