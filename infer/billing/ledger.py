"""Double-entry ledger: balanced transactions, cached balances, idempotent postings."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.errors import Conflict, InsufficientFunds
from infer.models import AccountKind, LedgerAccount, LedgerEntry, LedgerTransaction

# System accounts, created by the first migration with these fixed ids.
FEES_ACCOUNT_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
GRANTS_ACCOUNT_ID = uuid.UUID("00000000-0000-4000-8000-000000000002")


@dataclass(frozen=True)
class Posting:
    """One leg of a transaction: a signed amount on one account."""

    account_id: uuid.UUID
    amount: int


async def open_user_account(session: AsyncSession, *, user_id: uuid.UUID) -> LedgerAccount:
    account = LedgerAccount(name=f"user:{user_id}", kind=AccountKind.USER, user_id=user_id)
    session.add(account)
    await session.flush()
    return account


async def user_account(session: AsyncSession, *, user_id: uuid.UUID) -> LedgerAccount:
    result = await session.exec(select(LedgerAccount).where(LedgerAccount.user_id == user_id))
    return result.one()


async def balances(session: AsyncSession, *, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Available balances (balance less reserved funds) of these users' accounts."""
    rows = await session.exec(
        select(LedgerAccount.user_id, LedgerAccount.balance - LedgerAccount.reserved).where(
            col(LedgerAccount.user_id).in_(user_ids)
        )
    )
    return {user_id: int(available) for user_id, available in rows if user_id is not None}


async def post_transaction(
    session: AsyncSession,
    *,
    kind: str,
    postings: Sequence[Posting],
    idempotency_key: str | None = None,
    memo: str | None = None,
    actor_id: uuid.UUID | None = None,
    release: Mapping[uuid.UUID, int] | None = None,
) -> tuple[LedgerTransaction, bool]:
    """Record a balanced transaction and move the balances, in the caller's transaction.

    Returns (transaction, created). With an idempotency key seen before, nothing moves
    and the earlier transaction is returned. `release` gives back reserved funds in the
    same update (settling a hold). A user account never goes below what it still has
    reserved: then InsufficientFunds, and the caller's transaction must roll back.
    """
    if not postings or any(p.amount == 0 for p in postings):
        raise ValueError("a transaction needs non-zero postings")
    if sum(p.amount for p in postings) != 0:
        raise ValueError("a transaction's postings must sum to zero")
    transaction = LedgerTransaction(
        kind=kind, idempotency_key=idempotency_key, memo=memo, actor_id=actor_id
    )
    if idempotency_key is None:
        session.add(transaction)
    else:
        earlier = await _by_idempotency_key(session, idempotency_key)
        if earlier is not None:
            return _same_kind(earlier, kind), False
        try:
            async with session.begin_nested():
                session.add(transaction)
                await session.flush()
        except IntegrityError:
            # A concurrent posting with the same key won the race.
            earlier = await _by_idempotency_key(session, idempotency_key)
            if earlier is None:
                raise
            return _same_kind(earlier, kind), False
    release = release or {}
    # A fixed lock order (by account id) keeps concurrent postings from deadlocking.
    for posting in sorted(postings, key=lambda p: p.account_id):
        await _move(session, posting, release.get(posting.account_id, 0))
    session.add_all(
        LedgerEntry(transaction_id=transaction.id, account_id=p.account_id, amount=p.amount)
        for p in postings
    )
    await session.flush()
    return transaction, True


async def _move(session: AsyncSession, posting: Posting, released: int) -> None:
    table = LedgerAccount.__table__  # type: ignore[attr-defined]
    values = {"balance": table.c.balance + posting.amount}
    if released:
        values["reserved"] = table.c.reserved - released
    statement = sa.update(table).where(table.c.id == posting.account_id).values(values)
    if posting.amount < 0:
        statement = statement.where(
            sa.or_(
                table.c.kind != AccountKind.USER.value,
                table.c.balance - (table.c.reserved - released) + posting.amount >= 0,
            )
        )
    result = await session.exec(statement)
    if result.rowcount != 1:
        raise InsufficientFunds("the balance is too low for this")


async def _by_idempotency_key(session: AsyncSession, key: str) -> LedgerTransaction | None:
    result = await session.exec(
        select(LedgerTransaction).where(LedgerTransaction.idempotency_key == key)
    )
    return result.first()


def _same_kind(transaction: LedgerTransaction, kind: str) -> LedgerTransaction:
    if transaction.kind != kind:
        raise Conflict("this idempotency key was already used for something else")
    return transaction


@dataclass(frozen=True)
class BooksReport:
    """What a full audit of the ledger found; `balanced` when there is nothing wrong."""

    unbalanced_transactions: list[uuid.UUID]
    drifted_accounts: list[uuid.UUID]
    negative_user_accounts: list[uuid.UUID]

    @property
    def balanced(self) -> bool:
        return not (
            self.unbalanced_transactions or self.drifted_accounts or self.negative_user_accounts
        )


async def check_books(session: AsyncSession) -> BooksReport:
    """Every transaction sums to zero; every cached balance equals the sum of its entries."""
    unbalanced = await session.exec(
        select(LedgerEntry.transaction_id)
        .group_by(col(LedgerEntry.transaction_id))
        .having(sa.func.sum(LedgerEntry.amount) != 0)
    )
    sums = (
        select(LedgerEntry.account_id, sa.func.sum(LedgerEntry.amount).label("total"))
        .group_by(col(LedgerEntry.account_id))
        .subquery()
    )
    drifted = await session.exec(
        select(LedgerAccount.id)
        .outerjoin(sums, sums.c.account_id == LedgerAccount.id)
        .where(sa.func.coalesce(sums.c.total, 0) != LedgerAccount.balance)
    )
    negative = await session.exec(
        select(LedgerAccount.id).where(
            LedgerAccount.kind == AccountKind.USER, LedgerAccount.balance < 0
        )
    )
    return BooksReport(list(unbalanced), list(drifted), list(negative))
