"""Setting a key's budget, expiry and allowed models; reading budgets for display."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer import audit
from infer.accounts.principal import Principal
from infer.audit import ClientInfo
from infer.billing.money import format_usd
from infer.db import Database
from infer.errors import BadInput, Conflict, NotFound
from infer.keys.budgets import BudgetState, period_start
from infer.models import ApiKey, BudgetReset, KeyBudget, UsageRecord, utcnow
from infer.security.text import check_name

MAX_ALLOWED_MODELS = 100


class Keep(enum.Enum):
    """An argument left out: that setting stays as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


async def set_budget(
    db: Database,
    *,
    principal: Principal,
    key_id: uuid.UUID,
    client: ClientInfo,
    spend_limit: int | Keep | None = KEEP,
    reset: BudgetReset | Keep | None = KEEP,
    expires_at: datetime | Keep | None = KEEP,
    models: Sequence[str] | Keep | None = KEEP,
) -> ApiKey:
    """Change what is given (None clears it). A new budget, or a new reset, counts what
    the key already spent in the current period.
    """
    if isinstance(spend_limit, int) and spend_limit <= 0:
        raise BadInput("spendLimit must be more than 0; null removes the limit", param="spendLimit")
    allowed = models if isinstance(models, Keep) or models is None else _clean_models(models)
    now = utcnow()
    if isinstance(expires_at, datetime) and expires_at <= now:
        raise BadInput("expiresAt must be in the future", param="expiresAt")
    async with db.transaction() as session:
        key = await session.get(ApiKey, key_id, with_for_update=True)
        if key is None or key.user_id != principal.user_id:
            raise NotFound("no such API key", param="id")
        if key.revoked_at is not None:
            raise Conflict("this API key is revoked")
        if not isinstance(expires_at, Keep):
            if await _rotated(session, key_id):
                raise Conflict(
                    "this key was rotated; its grace period cannot be changed",
                )
            key.expires_at = expires_at
        if not isinstance(allowed, Keep):
            key.allowed_models = None if allowed is None else list(allowed)
        session.add(key)
        await _set_limit(session, key, spend_limit=spend_limit, reset=reset, now=now)
        audit.record(
            session,
            action="api_key.budget_set",
            client=client,
            actor_id=principal.user_id,
            target=f"api_key:{key.id}",
            details={
                "spend_limit": None
                if not isinstance(spend_limit, int)
                else format_usd(spend_limit),
                "reset": None if not isinstance(reset, BudgetReset) else reset.value,
                "expires_at": None
                if not isinstance(expires_at, datetime)
                else expires_at.isoformat(),
                "models": None if not isinstance(allowed, tuple) else list(allowed),
            },
        )
    return key


async def _set_limit(
    session: AsyncSession,
    key: ApiKey,
    *,
    spend_limit: int | Keep | None,
    reset: BudgetReset | Keep | None,
    now: datetime,
) -> None:
    budget = await session.get(KeyBudget, key.id, with_for_update=True)
    if spend_limit is None:
        if budget is not None:
            await session.delete(budget)
        return
    chosen = None if isinstance(reset, Keep) else reset or BudgetReset.NEVER
    if budget is None:
        if isinstance(spend_limit, Keep):
            if chosen is not None:
                raise BadInput(
                    "this key has no spend limit to reset; give spendLimit", param="reset"
                )
            return
        chosen = chosen or BudgetReset.NEVER
        start = period_start(chosen, now)
        budget = KeyBudget(
            api_key_id=key.id,
            spend_limit=spend_limit,
            reset=chosen,
            period_start=start,
            spent=await _spent_since(session, key, start),
        )
    else:
        if isinstance(spend_limit, int):
            budget.spend_limit = spend_limit
        if chosen is not None and chosen != budget.reset:
            budget.reset = chosen
            budget.period_start = period_start(chosen, now)
            budget.spent = await _spent_since(session, key, budget.period_start)
    session.add(budget)


async def _spent_since(session: AsyncSession, key: ApiKey, since: datetime) -> int:
    result = await session.exec(
        select(sa.func.coalesce(sa.func.sum(UsageRecord.cost), 0)).where(
            UsageRecord.buyer_id == key.user_id,
            UsageRecord.api_key_id == key.id,
            col(UsageRecord.created_at) >= since,
        )
    )
    return int(result.one())


async def _rotated(session: AsyncSession, key_id: uuid.UUID) -> bool:
    result = await session.exec(select(ApiKey.id).where(ApiKey.rotated_from_id == key_id))
    return result.first() is not None


def _clean_models(models: Sequence[str]) -> tuple[str, ...]:
    if not models:
        raise BadInput("give at least one model, or null to allow any", param="models")
    if len(models) > MAX_ALLOWED_MODELS:
        raise BadInput(f"at most {MAX_ALLOWED_MODELS} models", param="models")
    names = [check_name(name, param="models", what="a model name") for name in models]
    return tuple(dict.fromkeys(names))


async def budgets_of(
    session: AsyncSession, key_ids: Sequence[uuid.UUID]
) -> list[BudgetState | None]:
    """Each key's budget as it stands now (None: no spend limit), in the order asked."""
    result = await session.exec(select(KeyBudget).where(col(KeyBudget.api_key_id).in_(key_ids)))
    now = utcnow()
    found = {row.api_key_id: BudgetState.of(row, now) for row in result}
    return [found.get(key_id) for key_id in key_ids]
