"""Accounts behind Google sign-in: found by Google subject, created, or linked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer import audit
from infer.accounts.emails import normalize_email
from infer.accounts.principal import Principal
from infer.accounts.service import LoggedIn, open_session
from infer.audit import ClientInfo
from infer.billing.ledger import open_user_account
from infer.db import Database
from infer.errors import BadInput, Conflict, Forbidden, Unauthenticated
from infer.models import User
from infer.security.tokens import SessionSigner

UNVERIFIED = (
    "Google has not verified the email address {email}, so it cannot be used to sign in "
    "here. Verify it with Google, or log in with your password and link Google from your "
    "account page."
)
TAKEN = "this Google account is already linked to another INFER account"
OTHER_GOOGLE = "your account is already linked to another Google account"


@dataclass(frozen=True)
class GoogleIdentity:
    """What a validated ID token says about the person: the subject identifies them."""

    subject: str
    email: str
    email_verified: bool


async def sign_in(
    db: Database,
    *,
    identity: GoogleIdentity,
    client: ClientInfo,
    signer: SessionSigner,
    session_ttl: timedelta,
) -> LoggedIn:
    """Open a session for the account of this Google subject, linking or creating it first.

    An account with the same email is linked only when Google verified the email: else
    anyone who can name an address at Google would take over its account here.
    """
    try:
        return await _sign_in(db, identity, client, signer, session_ttl)
    except IntegrityError:
        # Two first sign-ins at once: the unique subject or email turned one away.
        return await _sign_in(db, identity, client, signer, session_ttl)


async def _sign_in(
    db: Database,
    identity: GoogleIdentity,
    client: ClientInfo,
    signer: SessionSigner,
    ttl: timedelta,
) -> LoggedIn:
    async with db.transaction() as session:
        user = await _by_subject(session, identity.subject)
        if user is None:
            user = await _link_or_create(session, identity, client)
        audit.record(
            session,
            action="user.logged_in",
            client=client,
            actor_id=user.id,
            details={"method": "google"},
        )
        return await open_session(session, user=user, client=client, signer=signer, ttl=ttl)


async def _link_or_create(
    session: AsyncSession, identity: GoogleIdentity, client: ClientInfo
) -> User:
    email = _email_of(identity)
    if not identity.email_verified:
        raise Forbidden(UNVERIFIED.format(email=email))
    user = (await session.exec(select(User).where(User.email == email))).first()
    if user is not None:
        if user.google_subject is not None:
            raise Conflict(OTHER_GOOGLE)
        user.google_subject = identity.subject
        session.add(user)
        audit.record(session, action="user.google_linked", client=client, actor_id=user.id)
        return user
    user = User(email=email, google_subject=identity.subject)
    session.add(user)
    await session.flush()
    await open_user_account(session, user_id=user.id)
    audit.record(
        session,
        action="user.signed_up",
        client=client,
        actor_id=user.id,
        details={"method": "google"},
    )
    return user


async def link(
    db: Database, *, principal: Principal, identity: GoogleIdentity, client: ClientInfo
) -> User:
    """Link a signed-in user's account to this Google subject (the email need not match)."""
    try:
        async with db.transaction() as session:
            owner = await _by_subject(session, identity.subject)
            if owner is not None and owner.id != principal.user_id:
                raise Conflict(TAKEN)
            user = await session.get(User, principal.user_id)
            if user is None:
                raise Unauthenticated("your session has ended; log in again")
            if user.google_subject not in (None, identity.subject):
                raise Conflict(OTHER_GOOGLE)
            if user.google_subject is None:
                user.google_subject = identity.subject
                session.add(user)
                audit.record(session, action="user.google_linked", client=client, actor_id=user.id)
            return user
    except IntegrityError as exc:
        raise Conflict(TAKEN) from exc  # linked to another account a moment ago


async def _by_subject(session: AsyncSession, subject: str) -> User | None:
    return (await session.exec(select(User).where(User.google_subject == subject))).first()


def _email_of(identity: GoogleIdentity) -> str:
    try:
        return normalize_email(identity.email)
    except BadInput as exc:
        raise Forbidden("Google did not give a usable email address for this account") from exc
