"""Usage and earnings reports: SQL aggregates by user, and keyset pages of records."""

from __future__ import annotations

import base64
import binascii
import enum
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.errors import BadInput
from infer.models import LedgerAccount, LedgerEntry, LedgerTransaction, UsageRecord

MAX_PAGE_SIZE = 100
T = TypeVar("T")
K = TypeVar("K")


class Side(enum.StrEnum):
    """Whose figures: what a buyer spent, or what an operator's nodes earned."""

    BUYER = "buyer"
    OPERATOR = "operator"


class Dimension(enum.StrEnum):
    """What a breakdown groups by."""

    DAY = "day"
    MODEL = "model"
    API_KEY = "api_key"
    NODE = "node"
    PROVIDER = "provider"


@dataclass(frozen=True)
class Period:
    """Which records a report counts: created in the half-open range [start, end) (either
    end may be open) and, when given, only of one model, API key or serving operator."""

    start: datetime | None = None
    end: datetime | None = None
    model: str | None = None
    api_key_id: uuid.UUID | None = None
    operator_id: uuid.UUID | None = None

    @classmethod
    def between(
        cls,
        start: datetime | None,
        end: datetime | None,
        *,
        model: str | None = None,
        api_key_id: uuid.UUID | None = None,
        operator_id: uuid.UUID | None = None,
    ) -> Period:
        """Validate the range; times without a zone are taken as UTC."""
        start, end = (t if t is None or t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))
        if start is not None and end is not None and start >= end:
            raise BadInput("`from` must be before `to`", param="from")
        return cls(start, end, model, api_key_id, operator_id)

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        """The WHERE clauses on usage records that this selection stands for."""
        wanted: list[sa.ColumnElement[bool]] = []
        if self.start is not None:
            wanted.append(col(UsageRecord.created_at) >= self.start)
        if self.end is not None:
            wanted.append(col(UsageRecord.created_at) < self.end)
        if self.model is not None:
            wanted.append(col(UsageRecord.model) == self.model)
        if self.api_key_id is not None:
            wanted.append(col(UsageRecord.api_key_id) == self.api_key_id)
        if self.operator_id is not None:
            wanted.append(col(UsageRecord.operator_id) == self.operator_id)
        return wanted


@dataclass(frozen=True)
class Figures:
    """Requests, tokens and money (micro-USD spent or earned) of a set of usage records."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    amount: int = 0


@dataclass(frozen=True)
class Bucket:
    """Figures of one day (ISO date), model, API key or node; `key` is None for a gone one."""

    key: str | None
    figures: Figures


@dataclass(frozen=True)
class Movement:
    """A ledger transaction as one account sees it: the signed sum of its entries there."""

    id: uuid.UUID
    kind: str
    memo: str | None
    amount: int
    created_at: datetime


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a newest-first list: items with their cursors, and whether more follow."""

    items: list[tuple[str, T]]
    has_next: bool

    @property
    def end_cursor(self) -> str | None:
        return self.items[-1][0] if self.items else None


class _UTCDate(FunctionElement[date]):
    """The UTC calendar day of a timestamp, on SQLite and PostgreSQL alike."""

    type = sa.Date()
    inherit_cache = True


@compiles(_UTCDate, "sqlite")
def _utc_date_sqlite(element: _UTCDate, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)})"  # stored as naive UTC text


@compiles(_UTCDate, "postgresql")
def _utc_date_postgresql(element: _UTCDate, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC' AS DATE)"


def _owner(side: Side) -> sa.SQLColumnExpression[uuid.UUID | None]:
    return col(UsageRecord.buyer_id) if side is Side.BUYER else col(UsageRecord.operator_id)


def _dimension(by: Dimension) -> sa.SQLColumnExpression[Any]:
    return {
        Dimension.DAY: _UTCDate(col(UsageRecord.created_at)),
        Dimension.MODEL: col(UsageRecord.model),
        Dimension.API_KEY: col(UsageRecord.api_key_id),
        Dimension.NODE: col(UsageRecord.node_id),
        Dimension.PROVIDER: col(UsageRecord.operator_id),
    }[by]


def _figures_query(
    side: Side, period: Period, *columns: sa.ColumnElement[Any]
) -> sa.Select[*tuple[Any, ...]]:
    amount = col(UsageRecord.cost) if side is Side.BUYER else col(UsageRecord.operator_earning)
    statement = sa.select(
        *columns,
        sa.func.count().label("requests"),
        sa.func.sum(col(UsageRecord.prompt_tokens)).label("prompt_tokens"),
        sa.func.sum(col(UsageRecord.completion_tokens)).label("completion_tokens"),
        sa.func.sum(amount).label("amount"),
    ).group_by(*columns)
    return statement.where(*period.conditions())


async def _rows(
    session: AsyncSession, statement: sa.Select[*tuple[Any, ...]]
) -> Sequence[sa.Row[*tuple[Any, ...]]]:
    # Core rows, named by label: sqlmodel's exec() would type them as bare tuples.
    connection: AsyncConnection = await session.connection()
    return (await connection.execute(statement)).all()


def _figures(row: sa.Row[*tuple[Any, ...]]) -> Figures:
    # PostgreSQL sums integers into NUMERIC; int() brings them back.
    return Figures(
        int(row.requests), int(row.prompt_tokens), int(row.completion_tokens), int(row.amount)
    )


async def usage_figures(
    session: AsyncSession, *, side: Side, user_ids: Sequence[uuid.UUID], period: Period
) -> dict[uuid.UUID, Figures]:
    """Totals for each of these users over the period, in one query (zeros when none)."""
    owner = _owner(side)
    statement = _figures_query(side, period, owner.label("owner")).where(owner.in_(user_ids))
    rows = await _rows(session, statement)
    found = {row.owner: _figures(row) for row in rows}
    return {user_id: found.get(user_id, Figures()) for user_id in user_ids}


async def usage_buckets(
    session: AsyncSession,
    *,
    side: Side,
    user_ids: Sequence[uuid.UUID],
    period: Period,
    by: Dimension,
) -> dict[uuid.UUID, list[Bucket]]:
    """Each user's figures grouped by day, model, key or node, in one query; sorted by key."""
    owner = _owner(side)
    statement = _figures_query(
        side, period, owner.label("owner"), _dimension(by).label("key")
    ).where(owner.in_(user_ids))
    grouped: dict[uuid.UUID, list[Bucket]] = {user_id: [] for user_id in user_ids}
    for row in await _rows(session, statement):
        key = None if row.key is None else str(row.key)  # date and UUID print as ISO / hex-dashed
        grouped[row.owner].append(Bucket(key, _figures(row)))
    for buckets in grouped.values():
        buckets.sort(key=lambda bucket: (bucket.key is None, bucket.key or ""))
    return grouped


def encode_cursor(created_at: datetime, row_id: uuid.UUID | int) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, parse_id: Callable[[str], K]) -> tuple[datetime, K]:
    """The position a cursor names; BadInput for anything this module did not make."""
    try:
        moment, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        created_at, position_id = datetime.fromisoformat(moment), parse_id(row_id)
        if created_at.tzinfo is None:
            raise ValueError("a cursor's time has a zone")
        created_at = created_at.astimezone(UTC)  # out of range near year 1 or 9999
    except (binascii.Error, ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise BadInput("`after` is not a cursor from this list", param="after") from exc
    return created_at, position_id


def check_first(first: int) -> None:
    if not 1 <= first <= MAX_PAGE_SIZE:
        raise BadInput(f"`first` must be between 1 and {MAX_PAGE_SIZE}", param="first")


def before(
    created: sa.SQLColumnExpression[datetime],
    row_id: sa.SQLColumnExpression[Any],
    cursor: str,
    parse_id: Callable[[str], Any] = uuid.UUID,
) -> sa.ColumnElement[bool]:
    """Rows after the cursor in newest-first order: older, or as old with a smaller id."""
    at, after_id = decode_cursor(cursor, parse_id)
    return sa.or_(created < at, sa.and_(created == at, row_id < after_id))


async def usage_records(
    session: AsyncSession,
    *,
    buyer_id: uuid.UUID,
    period: Period = Period(),
    first: int = 20,
    after: str | None = None,
) -> Page[UsageRecord]:
    """A buyer's usage records of the period, newest first, `first` at a time after the cursor."""
    check_first(first)
    created, row_id = col(UsageRecord.created_at), col(UsageRecord.id)
    statement = select(UsageRecord).where(
        col(UsageRecord.buyer_id) == buyer_id, *period.conditions()
    )
    if after is not None:
        statement = statement.where(before(created, row_id, after))
    statement = statement.order_by(created.desc(), row_id.desc()).limit(first + 1)
    rows = list(await session.exec(statement))
    items = [(encode_cursor(row.created_at, row.id), row) for row in rows[:first]]
    return Page(items, has_next=len(rows) > first)


async def account_movements(
    session: AsyncSession, *, user_id: uuid.UUID, first: int = 20, after: str | None = None
) -> Page[Movement]:
    """Ledger transactions that touch the user's account, newest first, with signed amounts."""
    check_first(first)
    created, row_id = col(LedgerTransaction.created_at), col(LedgerTransaction.id)
    statement = (
        sa.select(
            row_id,
            col(LedgerTransaction.kind),
            col(LedgerTransaction.memo),
            created,
            sa.func.sum(col(LedgerEntry.amount)).label("amount"),
        )
        .join(LedgerEntry, col(LedgerEntry.transaction_id) == row_id)
        .join(LedgerAccount, col(LedgerAccount.id) == col(LedgerEntry.account_id))
        .where(col(LedgerAccount.user_id) == user_id)
        # One transaction may post to an account twice (buying from your own node).
        .group_by(row_id, col(LedgerTransaction.kind), col(LedgerTransaction.memo), created)
    )
    if after is not None:
        statement = statement.where(before(created, row_id, after))
    statement = statement.order_by(created.desc(), row_id.desc()).limit(first + 1)
    rows = await _rows(session, statement)
    items = [
        (
            encode_cursor(row.created_at, row.id),
            Movement(row.id, row.kind, row.memo, int(row.amount), row.created_at),
        )
        for row in rows[:first]
    ]
    return Page(items, has_next=len(rows) > first)
