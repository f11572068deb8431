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

from infer.billing import pg_batches
from infer.billing.pg_batches import WriterConnection
from infer.db import Database
from infer.errors import InsufficientFunds, Unavailable
from infer.models import AccountKind, Hold, LedgerAccount, utcnow

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
_INSERT_HOLDS = sa.insert(_holds)


@dataclass(frozen=True)
class HoldRequest:
    account_id: uuid.UUID
    amount: int
    request_id: str
    expires_at: datetime


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
