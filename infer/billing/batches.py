"""Holds in batches: one transaction, few statements, many requests (settlement.py settles)."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col

from infer.billing import pg_batches
from infer.billing.pg_batches import WriterConnection
from infer.db import Database
from infer.errors import InsufficientFunds, Unavailable
from infer.keys import budgets
from infer.models import AccountKind, Hold, KeyBudget, LedgerAccount, utcnow

log = logging.getLogger(__name__)

_accounts = LedgerAccount.__table__  # type: ignore[attr-defined]
_holds = Hold.__table__  # type: ignore[attr-defined]
_NO_FUNDS = "your balance is too low for this request"

# Built once: constructing and compiling statements per request costs more than running
# them. Parameters: account, amount.
_RESERVE = (
    sa.update(_accounts)
    .where(
        _accounts.c.id == sa.bindparam("account"),
        _accounts.c.kind == AccountKind.USER.value,
        _accounts.c.balance - _accounts.c.reserved >= sa.bindparam("amount"),
    )
    .values(reserved=_accounts.c.reserved + sa.bindparam("amount"))
)
_UNRESERVE = (
    sa.update(_accounts)
    .where(_accounts.c.id == sa.bindparam("account"))
    .values(reserved=_accounts.c.reserved - sa.bindparam("amount"))
)
_INSERT_HOLDS = sa.insert(_holds)

_budgets = KeyBudget.__table__  # type: ignore[attr-defined]
# A period that has ended counts as nothing spent; its first hold starts the new one.
_ended = _budgets.c.period_start < sa.bindparam("period", type_=_budgets.c.period_start.type)
_spent_now = sa.case((_ended, 0), else_=_budgets.c.spent)
# Parameters: key, period (the start of the current one), amount.
_RESERVE_BUDGET = (
    sa.update(_budgets)
    .where(
        _budgets.c.api_key_id == sa.bindparam("key"),
        _spent_now + _budgets.c.reserved + sa.bindparam("amount") <= _budgets.c.spend_limit,
    )
    .values(
        spent=_spent_now,
        period_start=sa.case((_ended, sa.bindparam("period")), else_=_budgets.c.period_start),
        reserved=_budgets.c.reserved + sa.bindparam("amount"),
    )
)
_BUDGET = sa.select(KeyBudget).where(col(KeyBudget.api_key_id) == sa.bindparam("key"))


@dataclass(frozen=True)
class HoldRequest:
    account_id: uuid.UUID
    amount: int
    request_id: str
    expires_at: datetime
    # The key whose budget must cover this hold too (None: no budget to check).
    budget_key_id: uuid.UUID | None = None


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


async def _reserve_budget(
    connection: AsyncConnection, request: HoldRequest, now: datetime
) -> BaseException | None:
    """Reserve the hold against its key's budget; the refusal when it does not fit."""
    if request.budget_key_id is None:
        return None
    row = (await connection.execute(_BUDGET, {"key": request.budget_key_id})).first()
    if row is None:  # the budget was removed since the key was read
        return None
    budget = KeyBudget.model_validate(row._mapping)
    params = {
        "key": request.budget_key_id,
        "period": budgets.period_start(budget.reset, now),
        "amount": request.amount,
    }
    if (await connection.execute(_RESERVE_BUDGET, params)).rowcount == 1:
        return None
    return budgets.exceeded(budgets.BudgetState.of(budget, now), request.amount)


async def place_holds(
    db: Database, requests: Sequence[HoldRequest], *, writer: WriterConnection | None = None
) -> list[uuid.UUID | BaseException]:
    """Reserve funds for many requests: one conditional update per account when all fit.

    With a PostgreSQL writer, one statement places the holds of every account that can
    cover all of its requests; the others go through the general path below.
    """
    granted: list[uuid.UUID | BaseException] = [InsufficientFunds(_NO_FUNDS)] * len(requests)
    pending = list(range(len(requests)))
    # Holds against a key budget take the general path: it checks both in one transaction.
    plain = [i for i in pending if requests[i].budget_key_id is None]
    if writer is not None and plain:
        ids = [uuid.uuid4() for _ in requests]
        rows = [
            (
                ids[i],
                requests[i].account_id,
                requests[i].amount,
                requests[i].request_id,
                requests[i].expires_at,
            )
            for i in plain
        ]
        try:
            placed = await pg_batches.place_holds(writer, rows, utcnow())
        except Unavailable:
            raise  # the general path would only wait for the same outage again
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
    now = utcnow()
    # A hold lost in a crash dies with its request, so its commit need not wait for disk.
    # Locks are taken account first, then its keys' budgets, as settlements take them.
    async with db.core_transaction(durable=False) as connection:
        for account_id in sorted(by_account):
            indexes = by_account[account_id]
            budgeted = any(requests[i].budget_key_id is not None for i in indexes)
            total = sum(requests[i].amount for i in indexes)
            if not budgeted and await _reserve(connection, account_id, total):
                fitting = indexes
            else:  # not all of them fit, or budgets to check: one at a time, in arrival order
                fitting = []
                for i in indexes:
                    request = requests[i]
                    if not await _reserve(connection, account_id, request.amount):
                        continue
                    refused = await _reserve_budget(connection, request, now)
                    if refused is None:
                        fitting.append(i)
                        continue
                    granted[i] = refused
                    await connection.execute(
                        _UNRESERVE, {"account": account_id, "amount": request.amount}
                    )
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
                        "budget_key_id": request.budget_key_id,
                    }
                )
        if rows_to_insert:
            await connection.execute(_INSERT_HOLDS, rows_to_insert)
    return granted
