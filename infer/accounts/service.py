"""Sign-up, log-in with throttling, server-side sessions, log-out, password change and set."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer import audit
from infer.accounts.emails import normalize_email
from infer.accounts.principal import Principal
from infer.accounts.throttle import LoginLimits, address_key, count_failure, refuse_when_throttled
from infer.audit import ClientInfo
from infer.billing.ledger import open_user_account
from infer.db import Database
from infer.errors import BadInput, Conflict, Forbidden, Unauthenticated
from infer.models import Session, User, utcnow
from infer.ratelimit import RateLimiter
from infer.security import passwords
from infer.security.tokens import SessionSigner

_BAD_CREDENTIALS = "incorrect email or password"
_GOOGLE_ONLY = (
    "this account has no password: sign in with Continue with Google, "
    "then set a password from your account page if you want one"
)
_ALREADY_SET = "this account has a password: change it with your current one"


@dataclass(frozen=True)
class LoggedIn:
    """A user with a fresh session and its signed token (the cookie's value)."""

    user: User
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class LoginPolicy:
    limits: LoginLimits
    session_ttl: timedelta


async def sign_up(
    db: Database,
    *,
    email: str,
    password: str,
    client: ClientInfo,
    signer: SessionSigner,
    session_ttl: timedelta,
) -> LoggedIn:
    """Create a user with its ledger account, and log it in."""
    normal = normalize_email(email)
    passwords.check_policy(password)
    password_hash = await asyncio.to_thread(passwords.hash_password, password)
    taken = Conflict("an account with this email already exists", param="email")
    try:
        async with db.transaction() as session:
            if (await session.exec(select(User.id).where(User.email == normal))).first():
                raise taken
            user = User(email=normal, password_hash=password_hash, password_changed_at=utcnow())
            session.add(user)
            await session.flush()
            await open_user_account(session, user_id=user.id)
            audit.record(session, action="user.signed_up", client=client, actor_id=user.id)
            return await _open_session(session, user, client, signer, session_ttl)
    except IntegrityError as exc:
        # Two sign-ups for one address at once: the unique index turns one away.
        async with db.session() as session:
            if (await session.exec(select(User.id).where(User.email == normal))).first():
                raise taken from exc
        raise


async def log_in(
    db: Database,
    *,
    email: str,
    password: str,
    client: ClientInfo,
    signer: SessionSigner,
    limiter: RateLimiter,
    policy: LoginPolicy,
) -> LoggedIn:
    """Check the password (same answer for unknown email and wrong password); new session."""
    try:
        normal = normalize_email(email)
    except BadInput:
        normal = email.strip().lower()[:254]
    address = address_key(client.ip)
    async with db.session() as session:
        user = (await session.exec(select(User).where(User.email == normal))).first()
    await refuse_when_throttled(
        db,
        limiter=limiter,
        limits=policy.limits,
        email=normal,
        address=address,
        user_id=user.id if user else None,
    )
    stored_hash = user.password_hash if user else None
    if not await asyncio.to_thread(passwords.verify_password, stored_hash, password) or not user:
        await count_failure(limiter=limiter, limits=policy.limits, email=normal, address=address)
        async with db.transaction() as session:
            audit.record(
                session,
                action="user.login_failed",
                client=client,
                actor_id=user.id if user else None,
                details={"email": normal},
            )
        # A Google-only account: the failure is counted like any other, then explained.
        if user and user.password_hash is None and user.google_subject is not None:
            raise Unauthenticated(_GOOGLE_ONLY)
        raise Unauthenticated(_BAD_CREDENTIALS)
    async with db.transaction() as session:
        if user.password_hash and passwords.needs_rehash(user.password_hash):
            new_hash = await asyncio.to_thread(passwords.hash_password, password)
            await session.exec(
                sa.update(User).where(col(User.id) == user.id).values(password_hash=new_hash)
            )
        audit.record(session, action="user.logged_in", client=client, actor_id=user.id)
        return await _open_session(session, user, client, signer, policy.session_ttl)


async def open_session(
    session: AsyncSession,
    *,
    user: User,
    client: ClientInfo,
    signer: SessionSigner,
    ttl: timedelta,
) -> LoggedIn:
    """The session a password log-in opens, for a user another check proved (Google)."""
    return await _open_session(session, user, client, signer, ttl)


async def _open_session(
    session: AsyncSession,
    user: User,
    client: ClientInfo,
    signer: SessionSigner,
    ttl: timedelta,
) -> LoggedIn:
    row = Session(
        user_id=user.id,
        expires_at=utcnow() + ttl,
        ip=client.ip,
        user_agent=(client.user_agent or "")[:512] or None,
    )
    session.add(row)
    await session.flush()
    token = signer.issue(session_id=row.id, user_id=user.id, expires_at=row.expires_at)
    return LoggedIn(user=user, token=token, expires_at=row.expires_at)


async def authenticate_session(db: Database, *, token: str, signer: SessionSigner) -> Principal:
    """The principal of a live session; revoked, expired or unknown sessions are refused."""
    claims = signer.verify(token)
    async with db.session() as session:
        result = await session.exec(
            select(Session, User)
            .join(User, col(Session.user_id) == col(User.id))
            .where(Session.id == claims.session_id)
        )
        row = result.first()
    if row is None:
        raise Unauthenticated("your session has ended; log in again")
    record, user = row
    if record.revoked_at is not None or record.expires_at <= utcnow() or user.id != claims.user_id:
        raise Unauthenticated("your session has ended; log in again")
    return Principal(user_id=user.id, role=user.role, session_id=record.id)


async def log_out(db: Database, *, principal: Principal, client: ClientInfo) -> None:
    async with db.transaction() as session:
        if principal.session_id is not None:
            await session.exec(
                sa.update(Session)
                .where(col(Session.id) == principal.session_id)
                .values(revoked_at=utcnow())
            )
        audit.record(session, action="user.logged_out", client=client, actor_id=principal.user_id)


async def change_password(
    db: Database,
    *,
    principal: Principal,
    current_password: str,
    new_password: str,
    client: ClientInfo,
    signer: SessionSigner,
    session_ttl: timedelta,
) -> LoggedIn:
    """Replace the password, end every session of the user, and open a fresh one."""
    passwords.check_policy(new_password)
    async with db.transaction() as session:
        user = await _own_user(session, principal)
        stored_hash = user.password_hash if user else None
        ok = await asyncio.to_thread(passwords.verify_password, stored_hash, current_password)
        if user is None or not ok:
            raise Unauthenticated("the current password is not correct")
        return await _replace_password(
            session, user, new_password, "user.password_changed", client, signer, session_ttl
        )


async def set_password(
    db: Database,
    *,
    principal: Principal,
    new_password: str,
    client: ClientInfo,
    signer: SessionSigner,
    session_ttl: timedelta,
) -> LoggedIn:
    """Give an account without a password (made through Google) one; then as a change."""
    if principal.session_id is None:
        # Without a current password to prove, only a person signed in may choose one.
        raise Forbidden("set a password from a signed-in session, not with an API key")
    async with db.transaction() as session:
        user = await _own_user(session, principal)
        if user is None:
            raise Unauthenticated("your session has ended; log in again")
        if user.password_hash is not None:
            raise Conflict(_ALREADY_SET)
        passwords.check_policy(new_password)
        return await _replace_password(
            session, user, new_password, "user.password_set", client, signer, session_ttl
        )


async def _own_user(session: AsyncSession, principal: Principal) -> User | None:
    # Locked (PostgreSQL): two password changes at once run one after the other.
    query = select(User).where(User.id == principal.user_id).with_for_update()
    return (await session.exec(query)).first()


async def _replace_password(
    session: AsyncSession,
    user: User,
    new_password: str,
    action: str,
    client: ClientInfo,
    signer: SessionSigner,
    ttl: timedelta,
) -> LoggedIn:
    """Store the new password, end every session of the user, and open a fresh one."""
    user.password_hash = await asyncio.to_thread(passwords.hash_password, new_password)
    user.password_changed_at = utcnow()
    session.add(user)
    await session.exec(
        sa.update(Session)
        .where(col(Session.user_id) == user.id, col(Session.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    audit.record(session, action=action, client=client, actor_id=user.id)
    return await _open_session(session, user, client, signer, ttl)


async def user_by_id(db: Database, user_id: uuid.UUID) -> User | None:
    async with db.session() as session:
        return await session.get(User, user_id)
