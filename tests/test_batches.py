"""Group-committed holds and settlements keep every guarantee of the one-by-one path."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from infer.audit import ClientInfo
from infer.batching import GroupCommit
from infer.billing import ledger
from infer.billing.batches import HoldRequest, Writers, place_holds
from infer.billing.credits import grant_credits
from infer.billing.settlement import Settlement, Usage, settle_many
from infer.db import Database
from infer.errors import InsufficientFunds
from infer.models import Hold, LedgerAccount, UsageRecord, User, utcnow


@pytest.fixture(params=["general path", "one statement"])
async def writers(request: pytest.FixtureRequest, db: Database) -> AsyncIterator[Writers]:
    """The general path, and on PostgreSQL also the one-statement writers."""
    writers = Writers(db)
    if request.param == "general path":
        writers.holds = writers.settlements = None
    elif writers.holds is None:
        pytest.skip("one-statement writers exist on PostgreSQL only")
    yield writers
    await writers.close()


async def _buyer(db: Database, email: str, credits: int) -> tuple[uuid.UUID, uuid.UUID]:
    async with db.transaction() as session:
        user = User(email=email)
        session.add(user)
        await session.flush()
        account = await ledger.open_user_account(session, user_id=user.id)
    if credits:
        await grant_credits(db, email=email, amount=credits, client=ClientInfo.cli())
    return user.id, account.id


def _hold(account_id: uuid.UUID, amount: int) -> HoldRequest:
    return HoldRequest(account_id, amount, uuid.uuid4().hex, utcnow() + timedelta(minutes=5))


def _usage(buyer_id: uuid.UUID, cost: int) -> Usage:
    return Usage(
        request_id=uuid.uuid4().hex,
        buyer_id=buyer_id,
        api_key_id=None,
        node_id=None,
        operator_id=None,
        model="m",
        prompt_tokens=1,
        completion_tokens=1,
        estimated=False,
        cost=cost,
        earning=cost - cost // 10,
        fee=cost // 10,
        status="completed",
    )


async def _account(db: Database, account_id: uuid.UUID) -> LedgerAccount:
    async with db.session() as session:
        account = await session.get(LedgerAccount, account_id)
        assert account is not None
        return account


async def test_holds_that_do_not_all_fit_are_admitted_in_arrival_order(
    db: Database, writers: Writers
) -> None:
    _, account_id = await _buyer(db, "ann@example.com", 100)
    requests = [_hold(account_id, a) for a in (40, 50, 30, 10)]
    granted = await place_holds(db, requests, writer=writers.holds)
    assert [isinstance(g, uuid.UUID) for g in granted] == [True, True, False, True]
    assert isinstance(granted[2], InsufficientFunds)
    assert (await _account(db, account_id)).reserved == 100


async def test_a_batch_settles_exactly_and_releases_its_holds(
    db: Database, writers: Writers
) -> None:
    user_id, account_id = await _buyer(db, "ann@example.com", 1_000)
    _, operator_account = await _buyer(db, "op@example.com", 0)
    holds = await place_holds(db, [_hold(account_id, 300) for _ in range(3)], writer=writers.holds)
    items = [
        Settlement(hold, account_id, operator_account, _usage(user_id, cost))
        for hold, cost in zip(holds, (100, 250, 0), strict=True)
        if isinstance(hold, uuid.UUID)
    ]
    assert await settle_many(db, items, writer=writers.settlements) == [None, None, None]
    buyer = await _account(db, account_id)
    assert (buyer.balance, buyer.reserved) == (650, 0)
    assert (await _account(db, operator_account)).balance == 90 + 225
    async with db.session() as session:
        assert len((await session.exec(select(UsageRecord))).all()) == 3
        assert all(h.released_at for h in (await session.exec(select(Hold))).all())
        assert (await ledger.check_books(session)).balanced


async def test_one_bad_settlement_does_not_sink_the_rest_of_its_batch(
    db: Database, writers: Writers
) -> None:
    user_id, account_id = await _buyer(db, "ann@example.com", 100)
    good = Settlement(None, account_id, None, _usage(user_id, 60))
    # More than the balance, with no hold behind it: it cannot be charged.
    bad = Settlement(None, account_id, None, _usage(user_id, 500))
    group: GroupCommit[Settlement, None] = GroupCommit(
        lambda items: settle_many(db, items, writer=writers.settlements)
    )
    results = await asyncio.gather(group.enqueue(good), group.enqueue(bad), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], InsufficientFunds)
    assert (await _account(db, account_id)).balance == 40
    async with db.session() as session:
        assert (await ledger.check_books(session)).balanced


async def test_a_poisoned_hold_fails_alone_and_its_batch_is_served(
    db: Database, writers: Writers
) -> None:
    accounts = [(await _buyer(db, f"b{i}@example.com", 1_000))[1] for i in range(4)]
    group: GroupCommit[HoldRequest, uuid.UUID] = GroupCommit(
        lambda r: place_holds(db, r, writer=writers.holds)
    )
    # One batch (queued before its worker runs): good holds around one no column can carry.
    futures = [group.enqueue(_hold(a, 100)) for a in accounts[:2]]
    futures.append(group.enqueue(_hold(accounts[2], 2**63)))
    futures += [group.enqueue(_hold(a, 100)) for a in accounts[3:]]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [isinstance(r, uuid.UUID) for r in results] == [True, True, False, True]
    assert isinstance(results[2], Exception)
    for account_id, held in zip(accounts, (100, 100, 0, 100), strict=True):
        assert (await _account(db, account_id)).reserved == held


async def test_a_settlement_retries_transient_failures_in_order_until_it_commits() -> None:
    written: list[int] = []
    failures = [ConnectionRefusedError("database away")] * 3

    async def run(jobs: Sequence[int]) -> list[BaseException | None]:
        if failures:
            raise failures.pop()
        written.extend(jobs)
        return [None] * len(jobs)

    group: GroupCommit[int, None] = GroupCommit(run, retry=lambda e: isinstance(e, OSError))
    futures = [group.enqueue(i) for i in range(3)]
    await asyncio.sleep(0)
    futures += [group.enqueue(i) for i in range(3, 6)]
    assert await asyncio.gather(*futures) == [None] * 6
    assert written == [0, 1, 2, 3, 4, 5]


async def test_closing_gives_up_on_a_database_that_stays_away() -> None:
    async def run(jobs: Sequence[int]) -> list[BaseException | None]:
        raise ConnectionRefusedError("database away")

    group: GroupCommit[int, None] = GroupCommit(run, retry=lambda e: isinstance(e, OSError))
    future = group.enqueue(1)
    await asyncio.wait_for(group.close(deadline=0.3), timeout=10)
    assert isinstance(future.exception(), ConnectionRefusedError)


async def test_concurrent_jobs_share_batches_and_get_their_own_results() -> None:
    batches: list[int] = []

    async def run(jobs: Sequence[int]) -> list[int | BaseException]:
        batches.append(len(jobs))
        await asyncio.sleep(0.01)
        return [ValueError("odd") if job % 2 else job * 10 for job in jobs]

    group: GroupCommit[int, int] = GroupCommit(run)
    first = asyncio.ensure_future(group.submit(0))
    await asyncio.sleep(0.002)  # the first batch is running: the rest queue for the next
    rest = await asyncio.gather(*(group.submit(i) for i in range(1, 20)), return_exceptions=True)
    results = [await first, *rest]
    assert [r if isinstance(r, int) else "error" for r in results] == [
        i * 10 if i % 2 == 0 else "error" for i in range(20)
    ]
    assert batches == [1, 19]


@pytest.mark.parametrize("concurrency", [40])
async def test_concurrent_holds_through_group_commit_never_overdraw(
    db: Database, writers: Writers, concurrency: int
) -> None:
    _, account_id = await _buyer(db, "ann@example.com", 1_000)
    group: GroupCommit[HoldRequest, uuid.UUID] = GroupCommit(
        lambda r: place_holds(db, r, writer=writers.holds)
    )
    results = await asyncio.gather(
        *(group.submit(_hold(account_id, 75)) for _ in range(concurrency)), return_exceptions=True
    )
    granted = [r for r in results if isinstance(r, uuid.UUID)]
    assert len(granted) == 1_000 // 75
    assert all(isinstance(r, (uuid.UUID, InsufficientFunds)) for r in results)
    assert (await _account(db, account_id)).reserved == 75 * len(granted)


async def test_two_replicas_settling_the_same_accounts_at_once_keep_the_books(
    db: Database, writers: Writers
) -> None:
    _, operator_account = await _buyer(db, "op@example.com", 0)
    buyers = [await _buyer(db, f"b{i}@example.com", 10_000) for i in range(4)]
    other = Writers(db)  # a second replica's writers
    if writers.settlements is None:
        other.holds = other.settlements = None

    async def replica(own: Writers, order: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        for _ in range(10):
            items = [
                Settlement(None, account_id, operator_account, _usage(user_id, 10))
                for user_id, account_id in order
            ]
            assert await settle_many(db, items, writer=own.settlements) == [None] * len(items)

    try:
        await asyncio.gather(replica(writers, buyers), replica(other, buyers[::-1]))
    finally:
        await other.close()
    for _, account_id in buyers:
        assert (await _account(db, account_id)).balance == 10_000 - 2 * 10 * 10
    assert (await _account(db, operator_account)).balance == 8 * 10 * 9
    async with db.session() as session:
        assert (await ledger.check_books(session)).balanced


async def test_reserved_funds_can_never_exceed_the_balance(db: Database) -> None:
    _, account_id = await _buyer(db, "ann@example.com", 100)
    with pytest.raises(sa.exc.IntegrityError):
        async with db.transaction() as session:
            await session.exec(  # type: ignore[call-overload]
                sa.update(LedgerAccount).where(LedgerAccount.id == account_id).values(reserved=101)
            )


async def test_queued_jobs_show_as_backlog_until_the_running_batch_ends() -> None:
    release = asyncio.Event()

    async def run(jobs: Sequence[int]) -> list[int | BaseException]:
        await release.wait()
        return list(jobs)

    group: GroupCommit[int, int] = GroupCommit(run)
    first = group.enqueue(0)
    await asyncio.sleep(0)  # the first batch starts and waits
    rest = [group.enqueue(i) for i in range(1, 4)]
    assert (group.pending, group.backlog) == (True, 3)
    release.set()
    await group.drained()
    assert (group.pending, group.backlog) == (False, 0)
    assert [f.result() for f in (first, *rest)] == [0, 1, 2, 3]


async def test_a_lingering_group_commit_batches_jobs_that_come_a_little_apart() -> None:
    batches: list[int] = []

    async def run(jobs: Sequence[int]) -> list[int | BaseException]:
        batches.append(len(jobs))
        return list(jobs)

    group: GroupCommit[int, int] = GroupCommit(run, linger=0.2)
    futures = []
    for i in range(3):
        futures.append(group.enqueue(i))
        await asyncio.sleep(0.01)
    await group.drained()
    assert batches == [3]
    assert [f.result() for f in futures] == [0, 1, 2]
