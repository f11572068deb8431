"""Creating, rotating and revoking API keys; the secret is shown once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer import audit
from infer.accounts.principal import Principal
from infer.audit import ClientInfo
from infer.db import Database, group_by
from infer.errors import BadInput, Conflict, NotFound
from infer.keys.budgets import period_start
from infer.keys.scopes import format_scopes, names, parse_scopes, requested_scopes
from infer.models import ApiKey, ApiKeyScope, KeyBudget, utcnow
from infer.security import apikeys
from infer.security.crypto import Keyring
from infer.security.text import check_name

MAX_ACTIVE_KEYS = 50
MAX_GRACE_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class KeyMaterial:
    """The platform secrets that protect stored keys."""

    lookup_key: str
    keyring: Keyring


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    secret: str


def _clean_name(name: str) -> str:
    return check_name(name, param="name", what="a key name")


def new_key(
    user_id: uuid.UUID,
    name: str,
    material: KeyMaterial,
    *,
    scopes: frozenset[ApiKeyScope],
) -> IssuedKey:
    """A key row (not yet added to a session) and its secret."""
    secret = apikeys.generate_key()
    key_id = uuid.uuid4()
    version, ciphertext = material.keyring.encrypt(secret.encode(), aad=key_id.bytes)
    row = ApiKey(
        id=key_id,
        user_id=user_id,
        name=name,
        prefix=apikeys.display_prefix(secret),
        digest=apikeys.lookup_digest(secret, material.lookup_key),
        ciphertext=ciphertext,
        key_version=version,
        scopes=format_scopes(scopes),
    )
    return IssuedKey(api_key=row, secret=secret)


async def active_count(session: AsyncSession, user_id: uuid.UUID) -> int:
    now = utcnow()
    result = await session.exec(
        select(sa.func.count())
        .select_from(ApiKey)
        .where(
            ApiKey.user_id == user_id,
            col(ApiKey.revoked_at).is_(None),
            sa.or_(col(ApiKey.expires_at).is_(None), col(ApiKey.expires_at) > now),
        )
    )
    return int(result.one())


async def _was_rotated(session: AsyncSession, key_id: uuid.UUID) -> bool:
    """Whether a replacement was issued for this key (it is retiring, or already gone)."""
    result = await session.exec(select(ApiKey.id).where(ApiKey.rotated_from_id == key_id).limit(1))
    return result.first() is not None


async def _owned_key(session: AsyncSession, principal: Principal, key_id: uuid.UUID) -> ApiKey:
    key = await session.get(ApiKey, key_id, with_for_update=True)
    if key is None or key.user_id != principal.user_id:
        raise NotFound("no such API key", param="id")
    return key


async def create_key(
    db: Database,
    *,
    principal: Principal,
    name: str,
    material: KeyMaterial,
    client: ClientInfo,
    scopes: frozenset[ApiKeyScope] | None = None,
) -> IssuedKey:
    """A new key with `scopes` (None: all), which must be within the caller's own."""
    name = _clean_name(name)
    chosen = requested_scopes(scopes, holder=principal.scopes)
    async with db.transaction() as session:
        if await active_count(session, principal.user_id) >= MAX_ACTIVE_KEYS:
            raise BadInput(f"at most {MAX_ACTIVE_KEYS} active keys; revoke one first")
        issued = new_key(principal.user_id, name, material, scopes=chosen)
        session.add(issued.api_key)
        audit.record(
            session,
            action="api_key.created",
            client=client,
            actor_id=principal.user_id,
            target=f"api_key:{issued.api_key.id}",
            details={"scopes": names(chosen)},
        )
    return issued


async def rotate_key(
    db: Database,
    *,
    principal: Principal,
    key_id: uuid.UUID,
    material: KeyMaterial,
    client: ClientInfo,
    grace_seconds: int = 0,
) -> IssuedKey:
    """Issue a replacement; the old secret ends now, or after `grace_seconds`."""
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise BadInput("the grace period is 0 to 604800 seconds", param="gracePeriodSeconds")
    async with db.transaction() as session:
        old = await _owned_key(session, principal, key_id)
        now = utcnow()
        if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
            raise NotFound("no such API key", param="id")
        # Rotating a retiring key again would fork its line of replacements: two live
        # successors of one secret, and a grace period that could be stretched for ever.
        if await _was_rotated(session, old.id):
            raise Conflict("this key was already rotated; rotate its replacement", param="id")
        # With a grace period the old key stays active beside the new one for a while.
        if grace_seconds and await active_count(session, principal.user_id) >= MAX_ACTIVE_KEYS:
            raise BadInput(f"at most {MAX_ACTIVE_KEYS} active keys; revoke one first")
        # The replacement has the old key's scopes, which a narrower caller may not grant.
        requested_scopes(parse_scopes(old.scopes), holder=principal.scopes)
        issued = new_key(principal.user_id, old.name, material, scopes=parse_scopes(old.scopes))
        issued.api_key.rotated_from_id = old.id
        issued.api_key.requests_per_minute = old.requests_per_minute
        issued.api_key.tokens_per_minute = old.tokens_per_minute
        # The remedy for a leaked key must not lift its limits: the replacement keeps the
        # allow-list, the expiry and the budget (with what this period already spent).
        issued.api_key.allowed_models = old.allowed_models
        issued.api_key.expires_at = old.expires_at
        if grace_seconds:
            # A grace period shortens the old key's life, never lengthens it.
            ends = now + timedelta(seconds=grace_seconds)
            old.expires_at = ends if old.expires_at is None else min(old.expires_at, ends)
        else:
            old.revoked_at = now
        session.add_all([old, issued.api_key])
        await session.flush()  # the replacement's row, before its budget's
        budget = await session.get(KeyBudget, old.id)
        if budget is not None:
            session.add(_carried_budget(budget, issued.api_key.id, now))
        audit.record(
            session,
            action="api_key.rotated",
            client=client,
            actor_id=principal.user_id,
            target=f"api_key:{old.id}",
            details={"replacement": str(issued.api_key.id), "grace_seconds": grace_seconds},
        )
    return issued


def _carried_budget(budget: KeyBudget, key_id: uuid.UUID, now: datetime) -> KeyBudget:
    """A replacement's copy of its predecessor's budget: the same limit and period, and
    what the period spent so far (the predecessor's open requests settle on its own)."""
    start = period_start(budget.reset, now)
    return KeyBudget(
        api_key_id=key_id,
        spend_limit=budget.spend_limit,
        reset=budget.reset,
        period_start=start,
        spent=budget.spent if budget.period_start >= start else 0,
        reserved=0,
    )


async def revoke_key(
    db: Database, *, principal: Principal, key_id: uuid.UUID, client: ClientInfo
) -> ApiKey:
    async with db.transaction() as session:
        key = await _owned_key(session, principal, key_id)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            session.add(key)
            audit.record(
                session,
                action="api_key.revoked",
                client=client,
                actor_id=principal.user_id,
                target=f"api_key:{key.id}",
            )
    return key


MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_TOKENS_PER_MINUTE = 2_000_000_000  # GraphQL Int is 32 bits


async def set_limits(
    db: Database,
    *,
    principal: Principal,
    key_id: uuid.UUID,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
    client: ClientInfo,
) -> ApiKey:
    """Give a key its own rate limits; None returns it to the platform's defaults."""
    if requests_per_minute is not None and not 1 <= requests_per_minute <= MAX_REQUESTS_PER_MINUTE:
        raise BadInput("requestsPerMinute is 1 to 1000000", param="requestsPerMinute")
    if tokens_per_minute is not None and not 1 <= tokens_per_minute <= MAX_TOKENS_PER_MINUTE:
        raise BadInput("tokensPerMinute is 1 to 2000000000", param="tokensPerMinute")
    async with db.transaction() as session:
        key = await _owned_key(session, principal, key_id)
        key.requests_per_minute = requests_per_minute
        key.tokens_per_minute = tokens_per_minute
        session.add(key)
        audit.record(
            session,
            action="api_key.limits_set",
            client=client,
            actor_id=principal.user_id,
            target=f"api_key:{key.id}",
            details={"rpm": requests_per_minute, "tpm": tokens_per_minute},
        )
    return key


async def keys_of_users(
    session: AsyncSession, user_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[ApiKey]]:
    result = await session.exec(
        select(ApiKey)
        .where(col(ApiKey.user_id).in_(user_ids))
        .order_by(col(ApiKey.created_at).desc())
    )
    return group_by(result, user_ids, lambda key: key.user_id)
