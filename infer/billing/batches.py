"""Holds and settlements in batches: one transaction, few statements, many requests."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from infer.billing import pg_batches, settlement
from infer.billing.ledger import FEES_ACCOUNT_ID
from infer.billing.pg_batches import WriterConnection
from infer.db import Database
from infer.errors import InsufficientFunds
from infer.models import (
    AccountKind,
    Hold,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    UsageRecord,
    utcnow,
)

log = logging.getLogger(__name__)

_accounts = LedgerAccount.__table__  # type: ignore[attr-defined]
_holds = Hold.__table__  # type: ignore[attr-defined]
_NO_FUNDS = "your balance is too low for this request"

# Built once: constructing and compiling statements per request costs more than running
# them. Parameters: account, amount, hold ids, now, delta, release.
_RESERVE = (
    sa.update(_accounts)
    .where(
        _accounts.c.id == sa.bindparam("account"),
        _accounts.c.kind == AccountKind.USER.value,
        _accounts.c.balance - _accounts.c.reserved >= sa.bindparam("amount"),
    )
    .values(reserved=_accounts.c.reserved + sa.bindparam("amount"))
)
_RELEASE_HOLDS = (
    sa.update(_holds)
    .where(_holds.c.id.in_(sa.bindparam("holds", expanding=True)), _holds.c.released_at.is_(None))
    .values(released_at=sa.bindparam("now"))
    .returning(_holds.c.id, _holds.c.amount)
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
_INSERT_HOLDS = sa.insert(_holds)
_INSERT_TRANSACTIONS = sa.insert(LedgerTransaction.__table__)  # type: ignore[attr-defined]
_INSERT_ENTRIES = sa.insert(LedgerEntry.__table__)  # type: ignore[attr-defined]
_INSERT_USAGE = sa.insert(UsageRecord.__table__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class HoldRequest:
    account_id: uuid.UUID
    amount: int
    request_id: str
    expires_at: datetime


@dataclass(frozen=True)
class Settlement:
    hold_id: uuid.UUID | None
    buyer_account_id: uuid.UUID
    operator_account_id: uuid.UUID | None
    usage: settlement.Usage


class Writers:
    """On PostgreSQL, the connections of the hold and settlement writers (else None)."""

    def __init__(self, db: Database) -> None:
        postgres = db.engine.dialect.name == "postgresql"
        self.holds = (
            WriterConnection(db, session={"synchronous_commit": "off"}) if postgres else None
        )
        self.settlements = WriterConnection(db) if postgres else None

    async def close(self) -> None:
        for writer in (self.holds, self.settlements):
            if writer is not None:
                await writer.close()


async def _reserve(connection: AsyncConnection, account_id: uuid.UUID, amount: int) -> bool:
    result = await connection.execute(_RESERVE, {"account": account_id, "amount": amount})
    return bool(result.rowcount == 1)


async def place_holds(
    db: Database, requests: Sequence[HoldRequest], *, writer: WriterConnection | None = None
) -> list[uuid.UUID | BaseException]:
    """Reserve funds for many requests: one conditional update per account when all fit.

    With a PostgreSQL writer, one statement places the holds of every account that can
    cover all of its requests; the others go through the general path below.
    """
    granted: list[uuid.UUID | BaseException] = [InsufficientFunds(_NO_FUNDS)] * len(requests)
    pending = list(range(len(requests)))
    if writer is not None:
        ids = [uuid.uuid4() for _ in requests]
        rows = [
            (ids[i], r.account_id, r.amount, r.request_id, r.expires_at)
            for i, r in enumerate(requests)
        ]
        try:
            placed = await pg_batches.place_holds(writer, rows, utcnow())
        except Exception:
            log.warning("placing %d holds in one statement failed", len(rows), exc_info=True)
            placed = set()
        for i in pending:
            if ids[i] in placed:
                granted[i] = ids[i]
        pending = [i for i in pending if ids[i] not in placed]
        if not pending:
            return granted
    by_account: dict[uuid.UUID, list[int]] = defaultdict(list)
    for index in pending:
        by_account[requests[index].account_id].append(index)
    rows_to_insert = []
    # A hold lost in a crash dies with its request, so its commit need not wait for disk.
    async with db.core_transaction(durable=False) as connection:
        for account_id in sorted(by_account):
            indexes = by_account[account_id]
            total = sum(requests[i].amount for i in indexes)
            if await _reserve(connection, account_id, total):
                fitting = indexes
            else:  # not all of them fit: admit one at a time, in arrival order
                fitting = [
                    i for i in indexes if await _reserve(connection, account_id, requests[i].amount)
                ]
            for i in fitting:
                hold_id = uuid.uuid4()
                granted[i] = hold_id
                request = requests[i]
                rows_to_insert.append(
                    {
                        "id": hold_id,
                        "account_id": account_id,
                        "amount": request.amount,
                        "request_id": request.request_id,
                        "created_at": utcnow(),
                        "expires_at": request.expires_at,
                        "released_at": None,
                    }
                )
        if rows_to_insert:
            await connection.execute(_INSERT_HOLDS, rows_to_insert)
    return granted


async def settle_many(
    db: Database, items: Sequence[Settlement], *, writer: WriterConnection | None = None
) -> list[BaseException | None]:
    """Settle many requests in one transaction (one statement with a PostgreSQL writer);
    if that fails, each on its own (a usage record's unique request id stops a repeat).
    """
    try:
        plan = _plan(items, utcnow())
        if writer is not None:
            await pg_batches.settle(
                writer,
                now=plan.now,
                hold_ids=plan.hold_ids,
                deltas=plan.deltas,
                transactions=plan.transactions,
                entries=plan.entries,
                usages=plan.usages,
            )
        else:
            async with db.core_transaction() as connection:
                await _settle_together(connection, plan)
        return [None] * len(items)
    except Exception:
        if len(items) == 1:
            raise
        log.warning(
            "a settlement batch of %d failed; settling one by one", len(items), exc_info=True
        )
    results: list[BaseException | None] = []
    for item in items:
        try:
            await settlement.settle(
                db,
                hold_id=item.hold_id,
                buyer_account_id=item.buyer_account_id,
                operator_account_id=item.operator_account_id,
                usage=item.usage,
            )
            results.append(None)
        except Exception as exc:
            results.append(exc)
    return results


@dataclass
class _Plan:
    """What settling a batch writes: holds to release, balance moves, and the rows."""

    now: datetime
    hold_ids: list[uuid.UUID]
    deltas: dict[uuid.UUID, int]
    buyers: dict[uuid.UUID, uuid.UUID]  # hold id → the account it reserved on
    transactions: list[dict[str, object]]
    entries: list[dict[str, object]]
    usages: list[dict[str, object]]


def _plan(items: Sequence[Settlement], now: datetime) -> _Plan:
    plan = _Plan(now, [], defaultdict(int), {}, [], [], [])
    for item in items:
        usage = item.usage
        if item.hold_id is not None:
            plan.hold_ids.append(item.hold_id)
            plan.buyers[item.hold_id] = item.buyer_account_id
        transaction_id = None
        if usage.cost > 0:
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
            if usage.cost - operator_share:
                postings.append((FEES_ACCOUNT_ID, usage.cost - operator_share))
            for account_id, amount in postings:
                plan.deltas[account_id] += amount
                plan.entries.append(
                    {"transaction_id": transaction_id, "account_id": account_id, "amount": amount}
                )
        plan.usages.append(_usage_row(usage, transaction_id, now))
    plan.deltas = dict(plan.deltas)
    return plan


async def _settle_together(connection: AsyncConnection, plan: _Plan) -> None:
    unreserve: dict[uuid.UUID, int] = defaultdict(int)
    if plan.hold_ids:
        result = await connection.execute(_RELEASE_HOLDS, {"holds": plan.hold_ids, "now": plan.now})
        for hold_id, amount in result.all():
            unreserve[plan.buyers[hold_id]] += int(amount)
    # A fixed lock order (by account id) keeps concurrent batches from deadlocking.
    for account_id in sorted(set(plan.deltas) | set(unreserve)):
        delta, release = plan.deltas.get(account_id, 0), unreserve.get(account_id, 0)
        params = {"account": account_id, "delta": delta, "release": release}
        result = await connection.execute(_DEBIT if delta < 0 else _MOVE, params)
        if result.rowcount != 1:
            raise InsufficientFunds("the balance is too low for this")
    if plan.transactions:
        await connection.execute(_INSERT_TRANSACTIONS, plan.transactions)
        await connection.execute(_INSERT_ENTRIES, plan.entries)
    await connection.execute(_INSERT_USAGE, plan.usages)


def _usage_row(
    usage: settlement.Usage, transaction_id: uuid.UUID | None, now: datetime
) -> dict[str, object]:
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
        "status": usage.status,
        "ttft_ms": usage.ttft_ms,
        "duration_ms": usage.duration_ms,
        "transaction_id": transaction_id,
        "created_at": now,
    }
