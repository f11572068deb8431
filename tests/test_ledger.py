"""The ledger: balanced transactions, idempotent grants, no overdraft under concurrency."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlmodel import select

from infer.audit import ClientInfo
from infer.billing import ledger
from infer.billing.credits import grant_credits
from infer.billing.ledger import FEES_ACCOUNT_ID, GRANTS_ACCOUNT_ID, Posting, post_transaction
from infer.db import Database
from infer.errors import Conflict, InsufficientFunds, NotFound
from infer.models import AuditLog, LedgerAccount, User

CLIENT = ClientInfo.cli()


async def _user(db: Database, email: str = "ann@example.com") -> uuid.UUID:
    async with db.transaction() as session:
        user = User(email=email)
        session.add(user)
        await session.flush()
        account = await ledger.open_user_account(session, user_id=user.id)
        return account.id


async def _balance(db: Database, account_id: uuid.UUID) -> int:
    async with db.session() as session:
        account = await session.get(LedgerAccount, account_id)
        assert account is not None
        return account.balance


async def _assert_books_balance(db: Database) -> None:
    async with db.session() as session:
        report = await ledger.check_books(session)
        total = sum((await session.exec(select(LedgerAccount.balance))).all())
    assert report.balanced, report
    assert total == 0


async def test_a_grant_moves_funds_from_the_grants_account(db: Database) -> None:
    account = await _user(db)
    balance = await grant_credits(db, email="ANN@example.com", amount=12_500_000, client=CLIENT)
    assert balance == 12_500_000
    assert await _balance(db, account) == 12_500_000
    assert await _balance(db, GRANTS_ACCOUNT_ID) == -12_500_000
    await _assert_books_balance(db)
    async with db.session() as session:
        audit = (await session.exec(select(AuditLog))).one()
    assert audit.action == "credits.granted"
    assert audit.details == {
        "amount_micros": 12_500_000,
        "transaction": audit.details["transaction"],
    }  # type: ignore[index]


async def test_a_grant_with_a_seen_idempotency_key_moves_nothing(db: Database) -> None:
    account = await _user(db)
    for _ in range(3):
        await grant_credits(
            db,
            email="ann@example.com",
            amount=5_000_000,
            client=CLIENT,
            idempotency_key="invoice-42",
        )
    assert await _balance(db, account) == 5_000_000
    await _assert_books_balance(db)


async def test_an_idempotency_key_cannot_be_reused_for_another_kind(db: Database) -> None:
    account = await _user(db)
    await grant_credits(
        db, email="ann@example.com", amount=1_000_000, client=CLIENT, idempotency_key="k"
    )
    with pytest.raises(Conflict):
        async with db.transaction() as session:
            await post_transaction(
                session,
                kind="adjustment",
                idempotency_key="k",
                postings=[Posting(account, -1), Posting(FEES_ACCOUNT_ID, 1)],
            )


async def test_a_grant_to_an_unknown_email_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound):
        await grant_credits(db, email="nobody@example.com", amount=1, client=CLIENT)
    await _assert_books_balance(db)


async def test_unbalanced_postings_are_refused(db: Database) -> None:
    account = await _user(db)
    with pytest.raises(ValueError, match="sum to zero"):
        async with db.transaction() as session:
            await post_transaction(
                session,
                kind="grant",
                postings=[Posting(GRANTS_ACCOUNT_ID, -5), Posting(account, 4)],
            )
    await _assert_books_balance(db)


async def test_a_debit_beyond_the_balance_is_refused_and_leaves_nothing_behind(
    db: Database,
) -> None:
    account = await _user(db)
    await grant_credits(db, email="ann@example.com", amount=1_000, client=CLIENT)
    with pytest.raises(InsufficientFunds):
        async with db.transaction() as session:
            await post_transaction(
                session,
                kind="adjustment",
                postings=[Posting(account, -1_001), Posting(FEES_ACCOUNT_ID, 1_001)],
            )
    assert await _balance(db, account) == 1_000
    await _assert_books_balance(db)


async def test_concurrent_grants_and_debits_never_overdraw_and_keep_the_books(
    db: Database,
) -> None:
    """50 grants and 50 debits race; the balance never goes negative, the sums hold."""
    account = await _user(db)
    grant, debit = 1_000, 1_500

    async def one_grant(i: int) -> bool:
        await grant_credits(
            db, email="ann@example.com", amount=grant, client=CLIENT, idempotency_key=f"g-{i}"
        )
        return True

    async def one_debit() -> bool:
        try:
            async with db.transaction() as session:
                await post_transaction(
                    session,
                    kind="adjustment",
                    postings=[Posting(account, -debit), Posting(FEES_ACCOUNT_ID, debit)],
                )
        except InsufficientFunds:
            return False
        return True

    results = await asyncio.gather(
        *(one_grant(i) for i in range(50)), *(one_debit() for _ in range(50))
    )
    debits_done = sum(results[50:])
    assert await _balance(db, account) == 50 * grant - debits_done * debit
    assert await _balance(db, account) >= 0
    assert await _balance(db, FEES_ACCOUNT_ID) == debits_done * debit
    await _assert_books_balance(db)


async def test_concurrent_duplicate_grants_with_one_key_pay_once(db: Database) -> None:
    account = await _user(db)
    await asyncio.gather(
        *(
            grant_credits(
                db, email="ann@example.com", amount=7, client=CLIENT, idempotency_key="same"
            )
            for _ in range(20)
        )
    )
    assert await _balance(db, account) == 7
    await _assert_books_balance(db)
