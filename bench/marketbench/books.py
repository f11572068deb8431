"""The books over many operators: what the buyer paid is what they earned plus the fees."""

from __future__ import annotations

from typing import Any

from gatewaybench.errors import BenchError
from gatewaybench.load import Tally
from gatewaybench.market import BUYER, GRANT_USD, MAX_TOKENS, PRICE_IN, PRICE_OUT
from sqlalchemy import text

from infer.billing.ledger import FEES_ACCOUNT_ID, check_books
from infer.billing.money import parse_usd
from infer.billing.pricing import cost
from infer.db import Database

# Each operator's balance against the earnings of the usage records of its nodes.
_OPERATORS = (
    "SELECT u.email, coalesce(a.balance, 0), coalesce(e.earned, 0) FROM users u "
    "LEFT JOIN ledger_accounts a ON a.user_id = u.id "
    "LEFT JOIN (SELECT operator_id, sum(operator_earning) AS earned FROM usage_records "
    "GROUP BY operator_id) e ON e.operator_id = u.id WHERE u.email <> :buyer"
)


async def verify_books(database_url: str, tally: Tally) -> str:
    """Check every money movement of the run; the verdict to print, or BenchError."""
    db = Database.from_url(database_url)
    try:
        async with db.session() as session:
            connection = await session.connection()

            async def one(sql: str, **params: Any) -> Any:
                return (await connection.execute(text(sql), params)).one()

            balance, reserved = await one(
                "SELECT a.balance, a.reserved FROM ledger_accounts a "
                "JOIN users u ON u.id = a.user_id WHERE u.email = :e",
                e=BUYER,
            )
            records, total, earnings, fees, incomplete, tokens = await one(
                "SELECT count(*), coalesce(sum(cost), 0), coalesce(sum(operator_earning), 0), "
                "coalesce(sum(platform_fee), 0), "
                "count(*) FILTER (WHERE status <> 'completed' OR completion_tokens <> :n), "
                "coalesce(sum(prompt_tokens), 0) FROM usage_records",
                n=MAX_TOKENS,
            )
            operators = (await connection.execute(text(_OPERATORS), {"buyer": BUYER})).all()
            (fees_balance,) = await one(
                "SELECT balance FROM ledger_accounts WHERE id = :i", i=FEES_ACCOUNT_ID
            )
            (open_holds,) = await one("SELECT count(*) FROM holds WHERE released_at IS NULL")
            books = await check_books(session)
    finally:
        await db.dispose()
    paid = parse_usd(GRANT_USD) - balance
    # Every request has the same prompt, so the price list gives each the same cost.
    prompt = tokens // records if records else 0
    each = cost(
        prompt_tokens=prompt,
        completion_tokens=MAX_TOKENS,
        input_per_million=parse_usd(PRICE_IN),
        output_per_million=parse_usd(PRICE_OUT),
    )
    wrong = [
        f"{email} holds {held} µ$ of {earned}"
        for email, held, earned in operators
        if held != earned
    ]
    checks = [
        (records == tally.requests, f"{records} usage records for {tally.requests} requests"),
        (incomplete == 0, f"{incomplete} usage records not completed with {MAX_TOKENS} tokens"),
        (tokens == prompt * records, "the requests' prompts were not all counted alike"),
        (
            total == each * records,
            f"usage costs {total} µ$ but the price list makes {each * records}",
        ),
        (total == tally.cost, f"usage costs {total} µ$ but responses reported {tally.cost} µ$"),
        (paid == total, f"buyer paid {paid} µ$ of {total}"),
        (total == earnings + fees, f"{total} ≠ {earnings} earned + {fees} fees"),
        (not wrong, "; ".join(wrong)),
        (fees_balance == fees, f"fees account has {fees_balance} µ$, not {fees}"),
        (reserved == 0 and open_holds == 0, f"{open_holds} holds still open"),
        (books.balanced, f"check_books: {books}"),
    ]
    failed = [message for ok, message in checks if not ok]
    if failed:
        raise BenchError("the books are NOT exact: " + "; ".join(failed))
    paid_by = sum(1 for _, _, earned in operators if earned)
    return (
        f"books: exact — {records} requests; the buyer paid {paid} µ$ = {earnings} earned by "
        f"{paid_by} operators (each holding its nodes' earnings) + {fees} platform fees; "
        "check_books balanced, no open holds"
    )
