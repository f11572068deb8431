"""Holds and settlements on PostgreSQL: one statement per batch, on a connection of its own.

The group commit hands each batch to one writer at a time, so each kind of write keeps
one asyncpg connection (opened as the engine would open it) and sends one statement per
batch: data-modifying CTEs over `unnest`ed arrays, atomic as any single statement is.

- Holds commit with `synchronous_commit = off` (a session setting of their connection):
  a hold lost in a crash dies with its request. An account whose requests do not all
  fit is left untouched here and retried one request at a time by the general path.
- Settlements commit durably. The CHECK `balance >= reserved` on user accounts (migration
  0003) turns an impossible debit into an error that rolls the whole statement back;
  the group commit then settles the batch one by one, through this same statement.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from infer.db import Database
from infer.errors import InsufficientFunds
from infer.outages import database_unavailable, unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

HOLDS_SQL = """
WITH wanted AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::timestamptz[])
        AS w(id, account_id, amount, request_id, expires_at)
), totals AS (
    SELECT account_id, sum(amount)::bigint AS total FROM wanted GROUP BY account_id
), locked AS (  -- rows locked in id order, as every writer does: no deadlocks
    SELECT id FROM ledger_accounts WHERE id IN (SELECT account_id FROM totals)
    ORDER BY id FOR UPDATE
), reserved AS (
    UPDATE ledger_accounts a SET reserved = a.reserved + t.total
    FROM totals t JOIN locked l ON l.id = t.account_id
    WHERE a.id = t.account_id AND a.kind = 'user' AND a.balance - a.reserved >= t.total
    RETURNING a.id
)
INSERT INTO holds (id, account_id, amount, request_id, created_at, expires_at, released_at)
SELECT w.id, w.account_id, w.amount, w.request_id, $6, w.expires_at, NULL
FROM wanted w JOIN reserved r ON r.id = w.account_id
RETURNING id
"""

SETTLE_SQL = """
WITH released AS (
    UPDATE holds SET released_at = $1
    WHERE id = ANY($2::uuid[]) AND released_at IS NULL
    RETURNING account_id, amount, budget_key_id
), unreserved AS (
    SELECT account_id, sum(amount)::bigint AS amount FROM released GROUP BY account_id
), moves AS (
    SELECT coalesce(d.account_id, u.account_id) AS account_id,
           coalesce(d.delta, 0) AS delta, coalesce(u.amount, 0) AS release
    FROM unnest($3::uuid[], $4::bigint[]) AS d(account_id, delta)
    FULL JOIN unreserved u ON u.account_id = d.account_id
), locked AS (  -- rows locked in id order, as every writer does: no deadlocks
    SELECT id FROM ledger_accounts WHERE id IN (SELECT account_id FROM moves)
    ORDER BY id FOR UPDATE
), moved AS (
    UPDATE ledger_accounts a
    SET balance = a.balance + m.delta, reserved = a.reserved - m.release
    FROM moves m JOIN locked l ON l.id = m.account_id
    WHERE a.id = m.account_id
    RETURNING a.id
), key_moves AS (
    SELECT coalesce(c.key_id, r.key_id) AS key_id, coalesce(c.cost, 0) AS cost,
           coalesce(r.amount, 0) AS release
    FROM unnest($27::uuid[], $28::bigint[]) AS c(key_id, cost)
    FULL JOIN (
        SELECT budget_key_id AS key_id, sum(amount)::bigint AS amount FROM released
        WHERE budget_key_id IS NOT NULL GROUP BY budget_key_id
    ) r ON r.key_id = c.key_id
), budgets AS (  -- after the account rows are locked, as holds lock them: no deadlocks
    UPDATE key_budgets b
    SET spent = b.spent + k.cost, reserved = greatest(b.reserved - k.release, 0)
    FROM key_moves k
    WHERE b.api_key_id = k.key_id AND EXISTS (SELECT 1 FROM locked)
), transactions AS (
    INSERT INTO ledger_transactions (id, kind, idempotency_key, memo, actor_id, created_at)
    SELECT t.id, 'usage', NULL, t.memo, NULL, $1
    FROM unnest($5::uuid[], $6::text[]) AS t(id, memo)
), entries AS (
    INSERT INTO ledger_entries (transaction_id, account_id, amount)
    SELECT * FROM unnest($7::uuid[], $8::uuid[], $9::bigint[])
), usage AS (
    INSERT INTO usage_records (
        id, request_id, buyer_id, api_key_id, node_id, operator_id, model, prompt_tokens,
        completion_tokens, estimated, cost, operator_earning, platform_fee, status, ttft_ms,
        duration_ms, transaction_id, created_at
    )
    SELECT u.id, u.request_id, u.buyer_id, u.api_key_id,
           -- a node deregistered while it answered is gone: its records keep no link to it
           (SELECT n.id FROM nodes n WHERE n.id = u.node_id),
           u.operator_id, u.model, u.prompt_tokens, u.completion_tokens, u.estimated, u.cost,
           u.operator_earning, u.platform_fee, u.status, u.ttft_ms, u.duration_ms,
           u.transaction_id, $1
    FROM unnest(
        $10::uuid[], $11::text[], $12::uuid[], $13::uuid[], $14::uuid[], $15::uuid[],
        $16::text[], $17::bigint[], $18::bigint[], $19::bool[], $20::bigint[], $21::bigint[],
        $22::bigint[], $23::text[], $24::float8[], $25::float8[], $26::uuid[]
    ) AS u(id, request_id, buyer_id, api_key_id, node_id, operator_id, model, prompt_tokens,
           completion_tokens, estimated, cost, operator_earning, platform_fee, status, ttft_ms,
           duration_ms, transaction_id)
)
SELECT count(*) FROM moved
"""

USAGE_COLUMNS = (
    "id",
    "request_id",
    "buyer_id",
    "api_key_id",
    "node_id",
    "operator_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "estimated",
    "cost",
    "operator_earning",
    "platform_fee",
    "status",
    "ttft_ms",
    "duration_ms",
    "transaction_id",
)


class WriterConnection:
    """One asyncpg connection for one sequential writer; reopened after a failure."""

    def __init__(self, db: Database, *, session: dict[str, str] | None = None) -> None:
        self._db = db
        self._session = session or {}
        self._connection: asyncpg.Connection | None = None

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        connection = self._connection
        if connection is None or connection.is_closed():
            try:
                connection = self._connection = await self._open()
            except Exception as exc:
                if database_unavailable(exc):
                    raise unavailable() from exc
                raise
        try:
            return await work(connection)
        except asyncpg.PostgresError as exc:
            if not database_unavailable(exc):
                raise  # the statement failed and was rolled back; the connection is fine
            # The server is going away, or read-only (a failover): reconnect next time.
            self._connection = None
            connection.terminate()
            raise unavailable() from exc
        except BaseException as exc:
            # Lost, or interrupted mid-statement: its state is unknown, so it goes.
            self._connection = None
            connection.terminate()
            if isinstance(exc, Exception) and database_unavailable(exc):
                raise unavailable() from exc
            raise

    async def _open(self) -> asyncpg.Connection:
        engine = self._db.engine
        args, params = engine.dialect.create_connect_args(engine.url)
        settings = {**params.pop("server_settings", {}), **self._session}
        return await asyncpg.connect(*args, **params, server_settings=settings)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            try:
                await asyncio.wait_for(connection.close(), timeout=2)
            except Exception:  # closing a broken connection: nothing more to do
                connection.terminate()


async def place_holds(
    writer: WriterConnection,
    rows: Sequence[tuple[uuid.UUID, uuid.UUID, int, str, datetime]],
    now: datetime,
) -> set[uuid.UUID]:
    """Insert the holds of every account that can cover all of its rows; their ids."""
    columns = list(zip(*rows, strict=True))

    async def insert(connection: asyncpg.Connection) -> list[Any]:
        records: list[Any] = await connection.fetch(HOLDS_SQL, *map(list, columns), now)
        return records

    return {record[0] for record in await writer.run(insert)}


async def settle(
    writer: WriterConnection,
    *,
    now: datetime,
    hold_ids: list[uuid.UUID],
    deltas: dict[uuid.UUID, int],
    transactions: list[dict[str, object]],
    entries: list[dict[str, object]],
    usages: list[dict[str, object]],
    key_costs: dict[uuid.UUID, int],
) -> None:
    """Release the holds, move the balances and key budgets, and record transactions,
    entries and usage.
    """
    arrays: list[list[Any]] = [
        hold_ids,
        list(deltas),
        list(deltas.values()),
        [t["id"] for t in transactions],
        [t["memo"] for t in transactions],
        [e["transaction_id"] for e in entries],
        [e["account_id"] for e in entries],
        [e["amount"] for e in entries],
    ]
    arrays += [[u[c] for u in usages] for c in USAGE_COLUMNS]
    arrays += [list(key_costs), list(key_costs.values())]

    async def write(connection: asyncpg.Connection) -> None:
        await connection.fetchval(SETTLE_SQL, now, *arrays)

    try:
        await writer.run(write)
    except asyncpg.CheckViolationError as exc:  # a debit below what stays reserved
        raise InsufficientFunds("the balance is too low for this") from exc
