"""Granting credits to an account, and moving funds between accounts."""

from __future__ import annotations

import uuid

from sqlmodel import select

from infer import audit
from infer.audit import ClientInfo
from infer.billing.ledger import GRANTS_ACCOUNT_ID, Posting, post_transaction, user_account
from infer.db import Database
from infer.errors import NotFound
from infer.models import User


async def grant_credits(
    db: Database,
    *,
    email: str,
    amount: int,
    client: ClientInfo,
    actor_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
) -> int:
    """Move `amount` micro-USD from the grants account to the user's; return the new balance."""
    async with db.transaction() as session:
        user = (await session.exec(select(User).where(User.email == email.strip().lower()))).first()
        if user is None:
            raise NotFound(f"no account with the email {email.strip()!r}")
        account = await user_account(session, user_id=user.id)
        transaction, created = await post_transaction(
            session,
            kind="grant",
            postings=[Posting(GRANTS_ACCOUNT_ID, -amount), Posting(account.id, amount)],
            idempotency_key=idempotency_key,
            actor_id=actor_id,
        )
        if created:
            audit.record(
                session,
                action="credits.granted",
                client=client,
                actor_id=actor_id,
                target=f"user:{user.id}",
                details={"amount_micros": amount, "transaction": str(transaction.id)},
            )
        await session.refresh(account)
        return account.balance - account.reserved
