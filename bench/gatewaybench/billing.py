"""The billing check: every request through INFER billed exactly, the books balanced."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from infer.billing.ledger import FEES_ACCOUNT_ID, GRANTS_ACCOUNT_ID, check_books
from infer.billing.money import parse_usd
from infer.billing.pricing import cost
from infer.db import Database
from infer.models import LedgerAccount

from .errors import BenchError
from .load import Tally
from .market import BUYER, GRANT_USD, MAX_TOKENS, OPERATOR, PRICE_IN, PRICE_OUT


async def verify_billing(database_url: str, tally: Tally) -> str:
    """Check every money movement; the verdict to print, or BenchError."""
    granted = parse_usd(GRANT_USD)
    db = Database.from_url(database_url)
    try:
        async with db.session() as session:
            connection = await session.connection()

            async def one(sql: str, **params: Any) -> Any:
                return (await connection.execute(text(sql), params)).one()

            buyer_balance, buyer_reserved = await one(
                "SELECT a.balance, a.reserved FROM ledger_accounts a "
                "JOIN users u ON u.id = a.user_id WHERE u.email = :e",
                e=BUYER,
            )
            (operator_balance,) = await one(
                "SELECT a.balance FROM ledger_accounts a "
                "JOIN users u ON u.id = a.user_id WHERE u.email = :e",
                e=OPERATOR,
            )
            fees = await session.get_one(LedgerAccount, FEES_ACCOUNT_ID)
            grants = await session.get_one(LedgerAccount, GRANTS_ACCOUNT_ID)
            records, total, earnings, platform_fees, incomplete = await one(
                "SELECT count(*), coalesce(sum(cost), 0), coalesce(sum(operator_earning), 0), "
                "coalesce(sum(platform_fee), 0), "
                "count(*) FILTER (WHERE status <> 'completed' OR completion_tokens <> :n) "
                "FROM usage_records",
                n=MAX_TOKENS,
            )
            (open_holds,) = await one("SELECT count(*) FROM holds WHERE released_at IS NULL")
            by_tokens = (
                await connection.execute(
                    text(
                        "SELECT prompt_tokens, completion_tokens, count(*), sum(cost) "
                        "FROM usage_records GROUP BY prompt_tokens, completion_tokens"
                    )
                )
            ).all()
            books = await check_books(session)
    finally:
        await db.dispose()
    micro_in, micro_out = parse_usd(PRICE_IN), parse_usd(PRICE_OUT)
    priced = sum(
        count
        * cost(
            prompt_tokens=prompt,
            completion_tokens=completion,
            input_per_million=micro_in,
            output_per_million=micro_out,
        )
        for prompt, completion, count, _ in by_tokens
    )
    checks = [
        (records == tally.requests, f"{records} usage records for {tally.requests} requests"),
        (incomplete == 0, f"{incomplete} usage records not completed with {MAX_TOKENS} tokens"),
        (total == priced, f"usage costs {total} µ$ but the price list makes {priced} µ$"),
        (total == tally.cost, f"usage costs {total} µ$ but responses reported {tally.cost} µ$"),
        (granted - buyer_balance == total, f"buyer paid {granted - buyer_balance} µ$ of {total}"),
        (total == earnings + platform_fees, f"{total} ≠ {earnings} earned + {platform_fees} fees"),
        (operator_balance == earnings, f"operator has {operator_balance} µ$ of {earnings}"),
        (fees.balance == platform_fees, f"fees account has {fees.balance} µ$, not {platform_fees}"),
        (grants.balance == -granted, f"grants account has {grants.balance} µ$, not {-granted}"),
        (buyer_reserved == 0 and open_holds == 0, f"{open_holds} holds still open"),
        (books.balanced, f"check_books: {books}"),
    ]
    failed = [message for ok, message in checks if not ok]
    if failed:
        raise BenchError("billing is NOT exact: " + "; ".join(failed))
    return (
        f"billing: exact — {records} requests, buyer paid {total} µ$ "
        f"(= {earnings} operator + {platform_fees} platform fees; "
        f"the price list and the responses agree); check_books balanced, no open holds"
    )
