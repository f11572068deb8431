"""Usage, earnings, usage records and ledger transactions: the signed-in user's own."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

import strawberry
from strawberry.types import Info

from infer.billing import reports
from infer.billing.reports import Bucket, Dimension, Figures, Movement, Page, Period, Side
from infer.errors import BadInput, Forbidden
from infer.marketplace.figures import tokens_per_second
from infer.models import UsageRecord as UsageRecordRow
from infer.schema.context import Context
from infer.schema.offer_provider import OfferProvider, offer_provider
from infer.schema.permissions import require_principal
from infer.schema.scalars import Money

if TYPE_CHECKING:
    from infer.schema.user import User

T = TypeVar("T")
R = TypeVar("R")

From = Annotated[
    datetime | None,
    strawberry.argument(name="from", description="Start, inclusive (UTC if no offset is given)."),
]
To = Annotated[datetime | None, strawberry.argument(description="End, exclusive.")]
First = Annotated[int, strawberry.argument(description="How many, 1 to 100.")]
After = Annotated[
    str | None, strawberry.argument(description="The `endCursor` of the previous page.")
]
ModelFilter = Annotated[str | None, strawberry.argument(description="Only this model.")]
KeyFilter = Annotated[
    strawberry.ID | None, strawberry.argument(description="Only requests made with this key.")
]
ProviderFilter = Annotated[
    strawberry.ID | None,
    strawberry.argument(description="Only requests served by this provider (its user id)."),
]


@strawberry.type
class UsageBucket:
    key: str | None = strawberry.field(
        description="The UTC day (YYYY-MM-DD), model, API key id or provider id; null for"
        " no key or an unknown provider."
    )
    total_requests: int
    prompt_tokens: int
    completion_tokens: int
    spent: Money

    @classmethod
    def from_bucket(cls, bucket: Bucket) -> UsageBucket:
        f = bucket.figures
        return cls(
            key=bucket.key,
            total_requests=f.requests,
            prompt_tokens=f.prompt_tokens,
            completion_tokens=f.completion_tokens,
            spent=Money(f.amount),
        )


@strawberry.type
class EarningsBucket:
    key: str | None = strawberry.field(
        description="The UTC day (YYYY-MM-DD), model, or node id; null for a removed node."
    )
    earned: Money
    requests_served: int
    prompt_tokens: int
    completion_tokens: int
    tokens_served: int

    @classmethod
    def from_bucket(cls, bucket: Bucket) -> EarningsBucket:
        f = bucket.figures
        return cls(
            key=bucket.key,
            earned=Money(f.amount),
            requests_served=f.requests,
            prompt_tokens=f.prompt_tokens,
            completion_tokens=f.completion_tokens,
            tokens_served=f.prompt_tokens + f.completion_tokens,
        )


Report = tuple[Side, uuid.UUID, Period]


async def _buckets(info: Info[Context, Any], report: Report, by: Dimension) -> list[Bucket]:
    side, user_id, period = report
    return await info.context.loaders.usage_buckets.load((side, user_id, period, by))


def _spending(by: Dimension) -> Callable[[Usage, Info[Context, Any]], Awaitable[list[UsageBucket]]]:
    async def resolve(root: Usage, info: Info[Context, Any]) -> list[UsageBucket]:
        return [UsageBucket.from_bucket(b) for b in await _buckets(info, root.report, by)]

    return resolve


def _earning(
    by: Dimension,
) -> Callable[[Earnings, Info[Context, Any]], Awaitable[list[EarningsBucket]]]:
    async def resolve(root: Earnings, info: Info[Context, Any]) -> list[EarningsBucket]:
        return [EarningsBucket.from_bucket(b) for b in await _buckets(info, root.report, by)]

    return resolve


@strawberry.type(description="What you spent on inference over a period.")
class Usage:
    total_requests: int
    prompt_tokens: int
    completion_tokens: int
    spent: Money
    report: strawberry.Private[Report]
    by_day: list[UsageBucket] = strawberry.field(
        resolver=_spending(Dimension.DAY),
        description="By UTC day, oldest first; days without usage are left out.",
    )
    by_model: list[UsageBucket] = strawberry.field(
        resolver=_spending(Dimension.MODEL), description="By model, in name order."
    )
    by_key: list[UsageBucket] = strawberry.field(
        resolver=_spending(Dimension.API_KEY), description="By API key (its id), in id order."
    )
    by_provider: list[UsageBucket] = strawberry.field(
        resolver=_spending(Dimension.PROVIDER),
        description="By the provider that served it (its user id), in id order.",
    )


@strawberry.type(description="What your nodes earned serving requests over a period.")
class Earnings:
    earned: Money
    requests_served: int
    prompt_tokens: int
    completion_tokens: int
    tokens_served: int
    report: strawberry.Private[Report]
    by_day: list[EarningsBucket] = strawberry.field(
        resolver=_earning(Dimension.DAY),
        description="By UTC day, oldest first; days without requests are left out.",
    )
    by_model: list[EarningsBucket] = strawberry.field(
        resolver=_earning(Dimension.MODEL), description="By model, in name order."
    )
    by_node: list[EarningsBucket] = strawberry.field(
        resolver=_earning(Dimension.NODE), description="By node (its id), in id order."
    )


async def _provider(root: UsageRecord, info: Info[Context, Any]) -> OfferProvider | None:
    if root.operator_id is None:
        return None
    return await offer_provider(info, root.operator_id)


@strawberry.type(name="UsageRecord", description="One request you made, and what it cost.")
class UsageRecord:
    id: strawberry.ID
    request_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: Money
    status: str
    estimated: bool = strawberry.field(description="The token counts are estimates.")
    ttft_ms: float | None = strawberry.field(description="Time to the first token.")
    duration_ms: float | None
    created_at: datetime
    api_key_id: strawberry.ID | None
    node_id: strawberry.ID | None = strawberry.field(description="The node that served it.")
    tokens_per_second: float | None = strawberry.field(
        description="Completion tokens per second after the first; null when not measured."
    )
    operator_id: strawberry.Private[uuid.UUID | None]

    provider: OfferProvider | None = strawberry.field(
        resolver=_provider, description="Who served it, as the storefront names them; or null."
    )

    @classmethod
    def from_model(cls, row: UsageRecordRow) -> UsageRecord:
        # The operator only as the storefront shows it; never the node's endpoint.
        return cls(
            id=strawberry.ID(str(row.id)),
            request_id=row.request_id,
            model=row.model,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cost=Money(row.cost),
            status=row.status,
            estimated=row.estimated,
            ttft_ms=row.ttft_ms,
            duration_ms=row.duration_ms,
            created_at=row.created_at,
            api_key_id=_id(row.api_key_id),
            node_id=_id(row.node_id),
            tokens_per_second=tokens_per_second(
                row.completion_tokens, row.ttft_ms, row.duration_ms
            ),
            operator_id=row.operator_id,
        )


@strawberry.type(name="LedgerTransaction", description="A movement of money on your account.")
class LedgerTransaction:
    id: strawberry.ID
    kind: str = strawberry.field(description="grant, usage, …")
    memo: str | None
    amount: Money = strawberry.field(description="Signed: what it added to your account.")
    created_at: datetime

    @classmethod
    def from_movement(cls, movement: Movement) -> LedgerTransaction:
        return cls(
            id=strawberry.ID(str(movement.id)),
            kind=movement.kind,
            memo=movement.memo,
            amount=Money(movement.amount),
            created_at=movement.created_at,
        )


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type(description="A page of a newest-first list; pass `endCursor` as `after`.")
class Connection(Generic[T]):
    edges: list[Edge[T]]
    nodes: list[T]
    page_info: PageInfo


def _id(value: uuid.UUID | None) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))


def connection(page: Page[R], convert: Callable[[R], T]) -> Connection[T]:
    edges = [Edge(cursor=cursor, node=convert(item)) for cursor, item in page.items]
    return Connection(
        edges=edges,
        nodes=[edge.node for edge in edges],
        page_info=PageInfo(has_next_page=page.has_next, end_cursor=page.end_cursor),
    )


def own_id(root: User, info: Info[Context, Any]) -> uuid.UUID:
    """The user's id, if they are the one asking: these figures are nobody else's business."""
    user_id = uuid.UUID(root.id)
    if require_principal(info).user_id != user_id:
        raise Forbidden("only the user may see this of their account")
    return user_id


def _filter_id(value: str | None, *, param: str) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise BadInput(f"`{param}` is not an id", param=param) from exc


def _selection(
    start: datetime | None,
    end: datetime | None,
    model: str | None,
    api_key_id: str | None,
    provider_id: str | None,
) -> Period:
    return Period.between(
        start,
        end,
        model=model,
        api_key_id=_filter_id(api_key_id, param="apiKeyId"),
        operator_id=_filter_id(provider_id, param="providerId"),
    )


async def usage(
    root: User,
    info: Info[Context, Any],
    from_: From = None,
    to: To = None,
    model: ModelFilter = None,
    api_key_id: KeyFilter = None,
    provider_id: ProviderFilter = None,
) -> Usage:
    period = _selection(from_, to, model, api_key_id, provider_id)
    key: Report = (Side.BUYER, own_id(root, info), period)
    f: Figures = await info.context.loaders.usage_figures.load(key)
    return Usage(
        total_requests=f.requests,
        prompt_tokens=f.prompt_tokens,
        completion_tokens=f.completion_tokens,
        spent=Money(f.amount),
        report=key,
    )


async def earnings(root: User, info: Info[Context, Any]) -> Money:
    key: Report = (Side.OPERATOR, own_id(root, info), Period())
    return Money((await info.context.loaders.usage_figures.load(key)).amount)


async def earnings_report(
    root: User, info: Info[Context, Any], from_: From = None, to: To = None
) -> Earnings:
    key: Report = (Side.OPERATOR, own_id(root, info), Period.between(from_, to))
    f = await info.context.loaders.usage_figures.load(key)
    return Earnings(
        earned=Money(f.amount),
        requests_served=f.requests,
        prompt_tokens=f.prompt_tokens,
        completion_tokens=f.completion_tokens,
        tokens_served=f.prompt_tokens + f.completion_tokens,
        report=key,
    )


async def usage_records(
    root: User,
    info: Info[Context, Any],
    first: First = 20,
    after: After = None,
    from_: From = None,
    to: To = None,
    model: ModelFilter = None,
    api_key_id: KeyFilter = None,
    provider_id: ProviderFilter = None,
) -> Connection[UsageRecord]:
    buyer_id = own_id(root, info)
    period = _selection(from_, to, model, api_key_id, provider_id)
    async with info.context.resources.db.session() as session:
        page = await reports.usage_records(
            session, buyer_id=buyer_id, period=period, first=first, after=after
        )
    return connection(page, UsageRecord.from_model)


async def transactions(
    root: User, info: Info[Context, Any], first: First = 20, after: After = None
) -> Connection[LedgerTransaction]:
    user_id = own_id(root, info)
    async with info.context.resources.db.session() as session:
        page = await reports.account_movements(session, user_id=user_id, first=first, after=after)
    return connection(page, LedgerTransaction.from_movement)
