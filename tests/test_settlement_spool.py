"""A delivered answer is charged exactly once, even across a database outage and a restart."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from conftest import started
from runtimes import FakeRuntime
from sqlmodel import col, select
from test_outages import MODEL, database_outage, platform

from infer.billing import ledger
from infer.billing.settlement import Settlement, Usage, settle_many
from infer.completions import spool
from infer.config import Settings
from infer.db import Database
from infer.models import Hold, LedgerAccount, UsageRecord, UsageStatus, User
from infer.simulator import serve_in_thread


async def _buyer_balance(db: Database) -> int:
    async with db.session() as session:
        user = (await session.exec(select(User).where(User.email == "buyer@example.com"))).one()
        return (await ledger.user_account(session, user_id=user.id)).balance


async def test_settlements_the_database_refuses_at_shutdown_are_written_at_the_next_start(
    settings: Settings, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    runtime = FakeRuntime(
        dialect="ollama", models=(MODEL,), pieces=tuple(f" w{i}" for i in range(20)), interval=0.05
    )
    settings = settings.model_copy(update={"spool_dir": spool_dir})
    with serve_in_thread(runtime) as node:
        async with database_outage(settings) as (outage_settings, cut, restore):
            async with platform(outage_settings, node) as market:
                before = await _buyer_balance(market.resources.db)
                market.resources.completions.settle_deadline = 0.5
                answer = asyncio.ensure_future(
                    market.http.post(
                        "/api/v1/chat/completions",
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": f"Bearer {market.buyer_key}"},
                    )
                )
                await asyncio.sleep(0.4)  # mid-answer (1 s): its settlement finds no database
                await cut()
                response = await answer
                assert response.status_code == 200
                content = response.json()["choices"][0]["message"]["content"]
                assert content == "".join(runtime.pieces)
            # Shut down with the database away: the settlement was kept on disk.
            [kept] = list(spool_dir.glob("unsettled-*.jsonl"))
            assert kept.stat().st_mode & 0o077 == 0
            await restore()
            async with started(outage_settings) as (_, resources):
                await asyncio.wait_for(_until_written(resources.db), timeout=20)
                assert not list(spool_dir.iterdir())
                db = resources.db
                [record] = await _records(db)
                assert (record.status, record.completion_tokens) == ("completed", 20)
                assert await _buyer_balance(db) == before - record.cost
                async with db.session() as session:
                    assert (await ledger.check_books(session)).balanced
                    open_holds = select(Hold).where(col(Hold.released_at).is_(None))
                    assert not (await session.exec(open_holds)).all()
                    assert sum((await session.exec(select(LedgerAccount.reserved))).all()) == 0


async def _records(db: Database) -> list[UsageRecord]:
    async with db.session() as session:
        return list((await session.exec(select(UsageRecord))).all())


async def _until_written(db: Database) -> None:
    for _ in range(400):
        if await _records(db):
            return
        await asyncio.sleep(0.05)


async def test_a_settlement_written_twice_charges_once(db: Database) -> None:
    async with db.transaction() as session:
        user = User(email="ann@example.com")
        session.add(user)
        await session.flush()
        account = await ledger.open_user_account(session, user_id=user.id)
    usage = Usage(
        request_id=uuid.uuid4().hex,
        buyer_id=user.id,
        api_key_id=None,
        node_id=None,
        operator_id=None,
        model="m",
        prompt_tokens=0,
        completion_tokens=0,
        estimated=False,
        cost=0,
        earning=0,
        fee=0,
        status=UsageStatus.COMPLETED,
    )
    item = Settlement(None, account.id, None, usage)
    assert await settle_many(db, [item]) == [None]
    assert await settle_many(db, [item]) == [None]  # a replay, or a retry after a lost ack
    assert len(await _records(db)) == 1


def test_a_kept_settlement_reads_back_as_it_was_saved(tmp_path: Path) -> None:
    usage = Usage(
        request_id="r1",
        buyer_id=uuid.uuid4(),
        api_key_id=uuid.uuid4(),
        node_id=None,
        operator_id=uuid.uuid4(),
        model="m",
        prompt_tokens=3,
        completion_tokens=4,
        estimated=True,
        cost=11,
        earning=10,
        fee=1,
        status=UsageStatus.CLIENT_TIMEOUT,
        ttft_ms=1.5,
        duration_ms=9.0,
    )
    items = [Settlement(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), usage), Settlement(uuid.uuid4())]
    path = spool.save(tmp_path, items)
    path.write_bytes(path.read_bytes() + b"not json\n")
    [(claimed, read, whole)] = spool.claim(tmp_path)
    assert read == items
    assert not whole  # a line that is not a settlement keeps the file for a person to see
    assert spool.claim(tmp_path) == []  # claimed once only
    assert claimed.exists()
