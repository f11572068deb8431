"""Settlement: release holds, charge what was used, record it; one path for every case.

A batch of settlements is planned in memory (`_plan`) and written in one transaction:
one statement on PostgreSQL (`pg_batches.settle`), a few on SQLite (`_write`). A single
settlement, a hold released without a charge, an expired hold: each is a batch of one
through the same code. When a batch fails as a whole, the group commit
(`infer/batching.py`) runs its jobs one at a time through this same function, so one bad
job fails alone.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select

from infer.billing import pg_batches
from infer.billing.ledger import FEES_ACCOUNT_ID
from infer.billing.pg_batches import WriterConnection
from infer.db import Database
from infer.errors import InsufficientFunds
from infer.models import (
    AccountKind,
    Hold,
    KeyBudget,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Node,
    UsageRecord,
    UsageStatus,
    utcnow,
)

_accounts = LedgerAccount.__table__  # type: ignore[attr-defined]
_holds = Hold.__table__  # type: ignore[attr-defined]

# Built once: constructing and compiling statements per request costs more than running them.
_RELEASE_HOLDS = (
    sa.update(_holds)
    .where(_holds.c.id.in_(sa.bindparam("holds", expanding=True)), _holds.c.released_at.is_(None))
    .values(released_at=sa.bindparam("now"))
    .returning(_holds.c.account_id, _holds.c.amount, _holds.c.budget_key_id)
)
_MOVE = (
    sa.update(_accounts)
    .where(_accounts.c.id == sa.bindparam("account"))
    .values(
        balance=_accounts.c.balance + sa.bindparam("delta"),
        reserved=_accounts.c.reserved - sa.bindparam("release"),
    )
)
# A debit: never below what stays reserved on a user's account.
_DEBIT = _MOVE.where(
    sa.or_(
        _accounts.c.kind != AccountKind.USER.value,
        _accounts.c.balance
        - (_accounts.c.reserved - sa.bindparam("release"))
        + sa.bindparam("delta")
        >= 0,
    )
)
_budgets = KeyBudget.__table__  # type: ignore[attr-defined]
# What a key's settled requests spent moves into its count; what its holds reserved goes.
_MOVE_BUDGET = (
    sa.update(_budgets)
    .where(_budgets.c.api_key_id == sa.bindparam("key"))
    .values(
        spent=_budgets.c.spent + sa.bindparam("cost"),
        # Never below zero: a budget set again while older holds were open starts at 0.
        reserved=sa.case(
            (
                _budgets.c.reserved > sa.bindparam("release"),
                _budgets.c.reserved - sa.bindparam("release"),
            ),
            else_=0,
        ),
    )
)
_LIVE_NODES = sa.select(Node.__table__.c.id).where(  # type: ignore[attr-defined]
    Node.__table__.c.id.in_(sa.bindparam("nodes", expanding=True))  # type: ignore[attr-defined]
)
_INSERT_TRANSACTIONS = sa.insert(LedgerTransaction.__table__)  # type: ignore[attr-defined]
_INSERT_ENTRIES = sa.insert(LedgerEntry.__table__)  # type: ignore[attr-defined]
_INSERT_USAGE = sa.insert(UsageRecord.__table__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Usage:
    """What one request used, priced and split; `cost == earning + fee`."""

    request_id: str
    buyer_id: uuid.UUID
    api_key_id: uuid.UUID | None
    node_id: uuid.UUID | None
    operator_id: uuid.UUID | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    cost: int
    earning: int
    fee: int
    status: UsageStatus
    ttft_ms: float | None = None
    duration_ms: float | None = None


@dataclass(frozen=True)
class Settlement:
    """Release `hold_id` (if any) and, with `usage`, charge it: the buyer pays `cost`, the
    operator earns `earning` (the platform keeps it when there is no operator account)
    and the platform takes `fee`. Without `usage` it is a plain release.
    """

    hold_id: uuid.UUID | None
    buyer_account_id: uuid.UUID | None = None
    operator_account_id: uuid.UUID | None = None
    usage: Usage | None = None
    # The key whose budget counts this cost (its hold reserved against that budget).
    budget_key_id: uuid.UUID | None = None


async def account_of(db: Database, user_id: uuid.UUID) -> uuid.UUID:
    async with db.session() as session:
        result = await session.exec(
            select(LedgerAccount.id).where(LedgerAccount.user_id == user_id)
        )
        return result.one()


async def settle_many(
    db: Database, items: Sequence[Settlement], *, writer: WriterConnection | None = None
) -> list[None]:
    """Write the settlements in one transaction, all or none (one statement on PostgreSQL).

    A hold is released at most once (its `released_at` is set only while NULL, and only
    what that update returns is given back); a usage record's unique request id keeps a
    request from being charged twice: a settlement already written counts as written.
    Raises when the batch cannot be written whole.
    """
    plan = _plan(items, utcnow())
    try:
        await _write_plan(db, plan, writer)
    except (sa.exc.IntegrityError, asyncpg.UniqueViolationError) as exc:
        # Written before (a commit whose answer was lost, a replay): charged once already.
        if len(items) == 1 and _usage_exists(exc):
            return [None]
        raise
    return [None] * len(items)


def _usage_exists(error: Exception) -> bool:
    text = str(error)
    return "usage_records" in text and "request_id" in text


async def _write_plan(db: Database, plan: _Plan, writer: WriterConnection | None) -> None:
    if writer is not None:
        await pg_batches.settle(
            writer,
            now=plan.now,
            hold_ids=plan.hold_ids,
            deltas=plan.deltas,
            transactions=plan.transactions,
            entries=plan.entries,
            usages=plan.usages,
            key_costs=plan.key_costs,
        )
    else:
        async with db.core_transaction() as connection:
            await _write(connection, plan)


async def release_holds(
    db: Database, hold_ids: Sequence[uuid.UUID], *, writer: WriterConnection | None = None
) -> None:
    """Give reservations back without charging (the request failed before any token)."""
    await settle_many(db, [Settlement(hold_id) for hold_id in hold_ids], writer=writer)


async def expire_holds(db: Database, *, now: datetime | None = None, batch: int = 500) -> int:
    """Release holds past their expiry (left behind by a crash); returns how many."""
    async with db.session() as session:
        due = await session.exec(
            select(Hold.id)
            .where(col(Hold.released_at).is_(None), col(Hold.expires_at) <= (now or utcnow()))
            .limit(batch)
        )
        hold_ids = list(due)
    if hold_ids:
        await release_holds(db, hold_ids)
    return len(hold_ids)


@dataclass
class _Plan:
    """What settling a batch writes: holds to release, balance moves, and the rows."""

    now: datetime
    hold_ids: list[uuid.UUID]
    deltas: dict[uuid.UUID, int]
    transactions: list[dict[str, object]]
    entries: list[dict[str, object]]
    usages: list[dict[str, object]]
    key_costs: dict[uuid.UUID, int]


def _plan(items: Sequence[Settlement], now: datetime) -> _Plan:
    plan = _Plan(now, [], defaultdict(int), [], [], [], defaultdict(int))
    for item in items:
        if item.hold_id is not None:
            plan.hold_ids.append(item.hold_id)
        usage = item.usage
        if usage is None:
            continue
        transaction_id = None
        if item.budget_key_id is not None:
            plan.key_costs[item.budget_key_id] += usage.cost
        if usage.cost > 0:
            assert item.buyer_account_id is not None
            transaction_id = uuid.uuid4()
            plan.transactions.append(
                {
                    "id": transaction_id,
                    "kind": "usage",
                    "idempotency_key": None,
                    "memo": usage.model,
                    "actor_id": None,
                    "created_at": now,
                }
            )
            postings = [(item.buyer_account_id, -usage.cost)]
            operator_share = usage.earning if item.operator_account_id else 0
            if operator_share:
                postings.append((item.operator_account_id, operator_share))  # type: ignore[arg-type]
            # Without an operator account, the operator's share stays with the platform.
            if usage.cost - operator_share:
                postings.append((FEES_ACCOUNT_ID, usage.cost - operator_share))
            for account_id, amount in postings:
                plan.deltas[account_id] += amount
                plan.entries.append(
                    {"transaction_id": transaction_id, "account_id": account_id, "amount": amount}
                )
        plan.usages.append(_usage_row(usage, transaction_id, now))
    plan.deltas = dict(plan.deltas)
    plan.key_costs = dict(plan.key_costs)
    return plan


async def _write(connection: AsyncConnection, plan: _Plan) -> None:
    """The plan as a few statements in the caller's transaction (SQLite's path)."""
    unreserve: dict[uuid.UUID, int] = defaultdict(int)
    key_release: dict[uuid.UUID, int] = defaultdict(int)
    if plan.hold_ids:
        result = await connection.execute(_RELEASE_HOLDS, {"holds": plan.hold_ids, "now": plan.now})
        for account_id, amount, key_id in result.all():
            unreserve[account_id] += int(amount)
            if key_id is not None:
                key_release[key_id] += int(amount)
    # A fixed lock order (by account id) keeps concurrent batches from deadlocking.
    for account_id in sorted(set(plan.deltas) | set(unreserve)):
        delta, release = plan.deltas.get(account_id, 0), unreserve.get(account_id, 0)
        params = {"account": account_id, "delta": delta, "release": release}
        result = await connection.execute(_DEBIT if delta < 0 else _MOVE, params)
        if result.rowcount != 1:
            raise InsufficientFunds("the balance is too low for this")
    # After the accounts, as holds lock them: account rows first, then key budgets.
    for key_id in sorted(set(plan.key_costs) | set(key_release)):
        params = {
            "key": key_id,
            "cost": plan.key_costs.get(key_id, 0),
            "release": key_release.get(key_id, 0),
        }
        await connection.execute(_MOVE_BUDGET, params)
    if plan.transactions:
        await connection.execute(_INSERT_TRANSACTIONS, plan.transactions)
        await connection.execute(_INSERT_ENTRIES, plan.entries)
    if plan.usages:
        # A node deregistered while it answered is gone: its records keep no link to it.
        node_ids = list({u["node_id"] for u in plan.usages if u["node_id"] is not None})
        live = set()
        if node_ids:
            live = set((await connection.execute(_LIVE_NODES, {"nodes": node_ids})).scalars())
        usages = [u if u["node_id"] in live else {**u, "node_id": None} for u in plan.usages]
        await connection.execute(_INSERT_USAGE, usages)


def _usage_row(usage: Usage, transaction_id: uuid.UUID | None, now: datetime) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "request_id": usage.request_id,
        "buyer_id": usage.buyer_id,
        "api_key_id": usage.api_key_id,
        "node_id": usage.node_id,
        "operator_id": usage.operator_id,
        "model": usage.model,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "estimated": usage.estimated,
        "cost": usage.cost,
        "operator_earning": usage.earning,
        "platform_fee": usage.fee,
        "status": str(usage.status),
        "ttft_ms": usage.ttft_ms,
        "duration_ms": usage.duration_ms,
        "transaction_id": transaction_id,
        "created_at": now,
    }
