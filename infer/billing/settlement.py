"""Holds and settlement: reserve the worst case, then charge exactly what was used."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.billing.ledger import FEES_ACCOUNT_ID, Posting, post_transaction
from infer.db import Database
from infer.errors import InsufficientFunds
from infer.models import AccountKind, Hold, LedgerAccount, UsageRecord, utcnow


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
    status: str
    ttft_ms: float | None = None
    duration_ms: float | None = None


async def account_of(db: Database, user_id: uuid.UUID) -> uuid.UUID:
    async with db.session() as session:
        result = await session.exec(
            select(LedgerAccount.id).where(LedgerAccount.user_id == user_id)
        )
        return result.one()


async def place_hold(
    db: Database, *, account_id: uuid.UUID, amount: int, request_id: str, expires_at: datetime
) -> uuid.UUID:
    """Reserve `amount` with one conditional update; InsufficientFunds when it can't."""
    hold = Hold(account_id=account_id, amount=amount, request_id=request_id, expires_at=expires_at)
    # A hold lost in a crash dies with its request, so its commit need not wait for disk.
    async with db.transaction(durable=False) as session:
        result = await session.exec(
            sa.update(LedgerAccount)
            .where(
                col(LedgerAccount.id) == account_id,
                col(LedgerAccount.kind) == AccountKind.USER,
                col(LedgerAccount.balance) - col(LedgerAccount.reserved) >= amount,
            )
            .values(reserved=col(LedgerAccount.reserved) + amount)
        )
        if result.rowcount != 1:
            raise InsufficientFunds("your balance is too low for this request")
        session.add(hold)
    return hold.id


async def _release(session: AsyncSession, hold_id: uuid.UUID) -> int:
    """Mark the hold released and give back its reservation; 0 if it was already gone."""
    hold = await session.get(Hold, hold_id)
    if hold is None:
        return 0
    released = await session.exec(
        sa.update(Hold)
        .where(col(Hold.id) == hold_id, col(Hold.released_at).is_(None))
        .values(released_at=utcnow())
    )
    if released.rowcount != 1:
        return 0
    await session.exec(
        sa.update(LedgerAccount)
        .where(col(LedgerAccount.id) == hold.account_id)
        .values(reserved=col(LedgerAccount.reserved) - hold.amount)
    )
    return hold.amount


async def release_hold(db: Database, *, hold_id: uuid.UUID) -> None:
    """Give the reservation back without charging (the request failed before any token)."""
    async with db.transaction() as session:
        await _release(session, hold_id)


async def settle(
    db: Database,
    *,
    hold_id: uuid.UUID | None,
    buyer_account_id: uuid.UUID,
    operator_account_id: uuid.UUID | None,
    usage: Usage,
) -> None:
    """In one transaction: release the hold, record usage, debit, credit, take the fee.

    The buyer's debit and the hold's release are one update of the buyer's account.
    The unique request id of the usage record keeps a request from being settled twice.
    """
    async with db.transaction() as session:
        released = 0
        if hold_id is not None:
            result = await session.exec(
                sa.update(Hold)
                .where(col(Hold.id) == hold_id, col(Hold.released_at).is_(None))
                .values(released_at=utcnow())
                .returning(col(Hold.amount))
            )
            released = result.scalar_one_or_none() or 0
        transaction_id = None
        if usage.cost > 0:
            postings = [Posting(buyer_account_id, -usage.cost)]
            if operator_account_id is not None and usage.earning:
                postings.append(Posting(operator_account_id, usage.earning))
            # Without an operator account (a deleted node's), its share stays with the platform.
            platform_share = usage.cost - (usage.earning if operator_account_id else 0)
            if platform_share:
                postings.append(Posting(FEES_ACCOUNT_ID, platform_share))
            transaction, _ = await post_transaction(
                session,
                kind="usage",
                postings=postings,
                memo=usage.model,
                release={buyer_account_id: released},
            )
            transaction_id = transaction.id
        elif released:
            await session.exec(
                sa.update(LedgerAccount)
                .where(col(LedgerAccount.id) == buyer_account_id)
                .values(reserved=col(LedgerAccount.reserved) - released)
            )
        session.add(
            UsageRecord(
                request_id=usage.request_id,
                buyer_id=usage.buyer_id,
                api_key_id=usage.api_key_id,
                node_id=usage.node_id,
                operator_id=usage.operator_id,
                model=usage.model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                estimated=usage.estimated,
                cost=usage.cost,
                operator_earning=usage.earning,
                platform_fee=usage.fee,
                status=usage.status,
                ttft_ms=usage.ttft_ms,
                duration_ms=usage.duration_ms,
                transaction_id=transaction_id,
            )
        )


async def expire_holds(db: Database, *, now: datetime | None = None, batch: int = 500) -> int:
    """Release holds past their expiry (left behind by a crash); returns how many."""
    async with db.session() as session:
        due = await session.exec(
            select(Hold.id)
            .where(col(Hold.released_at).is_(None), col(Hold.expires_at) <= (now or utcnow()))
            .limit(batch)
        )
        hold_ids = list(due)
    for hold_id in hold_ids:
        await release_hold(db, hold_id=hold_id)
    return len(hold_ids)
