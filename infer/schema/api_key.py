"""The ApiKey type and the mutations that create, rotate and revoke keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from infer.errors import NotFound
from infer.keys import budget_service, service
from infer.keys.budgets import BudgetState
from infer.keys.scopes import parse_scopes
from infer.models import ApiKey as ApiKeyRow
from infer.models import ApiKeyScope as ApiKeyScopeValue
from infer.models import BudgetReset as BudgetResetValue
from infer.schema.context import Context
from infer.schema.permissions import require_principal
from infer.schema.scalars import Money

ApiKeyScope = strawberry.enum(
    ApiKeyScopeValue,
    name="ApiKeyScope",
    description=(
        "What a key may do: GATEWAY calls /api/v1; NODES registers, updates and pauses"
        " your nodes; ACCOUNT does everything else (keys, money, reviews, settings)."
    ),
)

BudgetReset = strawberry.enum(
    BudgetResetValue,
    name="BudgetReset",
    description="When a key's spend count starts again: UTC midnight; weeks start on Monday.",
)


@strawberry.type(name="KeyBudget")
class KeyBudget:
    spend_limit: Money
    reset: BudgetReset  # type: ignore[valid-type]
    spent: Money = strawberry.field(
        description="Settled spend in the current period (open requests are not in it)."
    )
    remaining: Money = strawberry.field(
        description="What may still be spent this period: the limit less spent and held."
    )
    resets_at: datetime | None = strawberry.field(
        description="When the current period ends; null for a budget that never resets."
    )

    @classmethod
    def from_state(cls, state: BudgetState) -> KeyBudget:
        return cls(
            spend_limit=Money(state.spend_limit),
            reset=state.reset,
            spent=Money(state.spent),
            remaining=Money(state.remaining),
            resets_at=state.resets_at,
        )


@strawberry.type(name="ApiKey")
class ApiKey:
    id: strawberry.ID
    name: str
    prefix: str = strawberry.field(description="The first characters of the key, for display.")
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None = strawberry.field(
        description=(
            "When the key stops working: set by setApiKeyBudget, or the end of a rotated"
            " key's grace period."
        )
    )
    revoked_at: datetime | None
    rotated_from_id: strawberry.ID | None = strawberry.field(
        description="The key this one replaced, when rotateApiKey issued it."
    )
    requests_per_minute: int | None = strawberry.field(
        description="This key's own request limit; null means the platform's default."
    )
    tokens_per_minute: int | None
    scopes: list[ApiKeyScope]  # type: ignore[valid-type]
    allowed_models: list[str] | None = strawberry.field(
        description="The models this key may call; null: any."
    )

    @strawberry.field
    async def budget(self, info: Info[Context, Any]) -> KeyBudget | None:
        """The key's spend limit and what remains; null: no limit."""
        state = await info.context.loaders.key_budgets.load(uuid.UUID(self.id))
        return None if state is None else KeyBudget.from_state(state)

    @classmethod
    def from_model(cls, row: ApiKeyRow, *, last_used_at: datetime | None = None) -> ApiKey:
        used = max(filter(None, (row.last_used_at, last_used_at)), default=None)
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            prefix=row.prefix,
            created_at=row.created_at,
            last_used_at=used,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            rotated_from_id=strawberry.ID(str(row.rotated_from_id))
            if row.rotated_from_id
            else None,
            requests_per_minute=row.requests_per_minute,
            tokens_per_minute=row.tokens_per_minute,
            scopes=[scope for scope in ApiKeyScopeValue if scope in parse_scopes(row.scopes)],
            allowed_models=row.allowed_models,
        )


@strawberry.type
class IssuedApiKey:
    api_key: ApiKey
    secret: str = strawberry.field(description="The whole key. It is shown this once only.")


def parse_id(value: str, *, param: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound("no such API key", param=param) from exc


def _issued(issued: service.IssuedKey) -> IssuedApiKey:
    return IssuedApiKey(api_key=ApiKey.from_model(issued.api_key), secret=issued.secret)


async def create_api_key(
    info: Info[Context, Any],
    name: str,
    scopes: Annotated[
        list[ApiKeyScope] | None,  # type: ignore[valid-type]
        strawberry.argument(description="What the key may do; null or absent: all three."),
    ] = None,
) -> IssuedApiKey:
    ctx = info.context
    issued = await service.create_key(
        ctx.resources.db,
        principal=require_principal(info),
        name=name,
        material=ctx.resources.key_material,
        client=ctx.client,
        scopes=None if scopes is None else frozenset(ApiKeyScopeValue(s) for s in scopes),
    )
    return _issued(issued)


async def rotate_api_key(
    info: Info[Context, Any],
    id: strawberry.ID,
    grace_period_seconds: Annotated[
        int,
        strawberry.argument(
            description="Keep the old secret working this long (default: end it now)."
        ),
    ] = 0,
) -> IssuedApiKey:
    ctx = info.context
    key_id = parse_id(id)
    issued = await service.rotate_key(
        ctx.resources.db,
        principal=require_principal(info),
        key_id=key_id,
        material=ctx.resources.key_material,
        client=ctx.client,
        grace_seconds=grace_period_seconds,
    )
    await ctx.resources.key_changes.changed(key_id)
    return _issued(issued)


async def revoke_api_key(
    info: Info[Context, Any],
    id: strawberry.ID,
) -> ApiKey:
    ctx = info.context
    key_id = parse_id(id)
    row = await service.revoke_key(
        ctx.resources.db, principal=require_principal(info), key_id=key_id, client=ctx.client
    )
    await ctx.resources.key_changes.changed(key_id)
    return ApiKey.from_model(row)


async def set_api_key_limits(
    info: Info[Context, Any],
    id: strawberry.ID,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> ApiKey:
    ctx = info.context
    key_id = parse_id(id)
    row = await service.set_limits(
        ctx.resources.db,
        principal=require_principal(info),
        key_id=key_id,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        client=ctx.client,
    )
    await ctx.resources.key_changes.changed(key_id)
    return ApiKey.from_model(row)


def _given(value: Any) -> Any:
    return budget_service.KEEP if value is strawberry.UNSET else value


async def set_api_key_budget(
    info: Info[Context, Any],
    id: strawberry.ID,
    spend_limit: Annotated[
        Money | None,
        strawberry.argument(description="USD per period; null removes the limit."),
    ] = strawberry.UNSET,
    reset: Annotated[
        BudgetReset | None,  # type: ignore[valid-type]
        strawberry.argument(description="When the count starts again; null: NEVER."),
    ] = strawberry.UNSET,
    expires_at: Annotated[
        datetime | None,
        strawberry.argument(description="When the key stops working; null: never."),
    ] = strawberry.UNSET,
    models: Annotated[
        list[str] | None,
        strawberry.argument(description="The only models the key may call; null: any."),
    ] = strawberry.UNSET,
) -> ApiKey:
    ctx = info.context
    key_id = parse_id(id)
    reset_value = _given(reset)
    row = await budget_service.set_budget(
        ctx.resources.db,
        principal=require_principal(info),
        key_id=key_id,
        client=ctx.client,
        spend_limit=_given(spend_limit),
        reset=reset_value
        if reset_value in (None, budget_service.KEEP)
        else BudgetResetValue(reset_value),
        expires_at=_given(expires_at),
        models=_given(models),
    )
    await ctx.resources.key_changes.changed(key_id)
    return ApiKey.from_model(row)
