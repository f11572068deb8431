"""The User type, `me`, and the mutations that sign up, log in and log out."""

from __future__ import annotations

import uuid
from typing import Any

import strawberry
from starlette.responses import Response
from strawberry.types import Info

from infer import notifications
from infer.accounts import profile, service, sessions
from infer.accounts.service import LoggedIn
from infer.authentication import SESSION_COOKIE
from infer.config import Settings
from infer.errors import NotFound
from infer.models import User as UserRow
from infer.schema import usage as reports
from infer.schema.api_key import ApiKey
from infer.schema.audit import AuditEntry, audit_log
from infer.schema.context import Context
from infer.schema.node import Node
from infer.schema.notification import Notification
from infer.schema.permissions import require_principal
from infer.schema.scalars import Money
from infer.schema.session import Session, list_sessions


async def _balance(root: User, info: Info[Context, Any]) -> Money:
    return Money(await info.context.loaders.balance.load(uuid.UUID(root.id)))


async def _unread_count(root: User, info: Info[Context, Any]) -> int:
    user_id = reports.own_id(root, info)
    return await notifications.unread_count(info.context.resources.db, user_id=user_id)


async def _sessions(root: User, info: Info[Context, Any]) -> list[Session]:
    return await list_sessions(info, reports.own_id(root, info))


async def _audit_log(
    root: User, info: Info[Context, Any], first: reports.First = 20, after: reports.After = None
) -> reports.Connection[AuditEntry]:
    return await audit_log(info, reports.own_id(root, info), first, after)


@strawberry.type(name="User")
class User:
    id: strawberry.ID
    email: str
    role: str
    display_name: str = strawberry.field(
        description="What buyers see of you as a provider: your choice, or a neutral default."
    )
    google_linked: bool = strawberry.field(
        description="Whether you can sign in with Google (docs/google-sign-in.md)."
    )
    has_password: bool = strawberry.field(
        description="Whether you can log in with a password; without one, `setPassword` sets it."
    )

    @classmethod
    def from_model(cls, row: UserRow) -> User:
        return cls(
            id=strawberry.ID(str(row.id)),
            email=row.email,
            role=row.role.value,
            display_name=profile.display_name(row.id, row.display_name),
            google_linked=row.google_subject is not None,
            has_password=row.password_hash is not None,
        )

    balance: Money = strawberry.field(
        resolver=_balance, description="Funds available to spend: the balance less holds."
    )

    @strawberry.field
    async def api_keys(self, info: Info[Context, Any]) -> list[ApiKey]:
        rows = await info.context.loaders.api_keys.load(uuid.UUID(self.id))
        pending = info.context.resources.authenticator.pending_last_used
        return [ApiKey.from_model(row, last_used_at=pending(row.id)) for row in rows]

    @strawberry.field
    async def notifications(
        self, info: Info[Context, Any], unread_only: bool = False, first: int = 20
    ) -> list[Notification]:
        rows = await notifications.list_notifications(
            info.context.resources.db,
            user_id=uuid.UUID(self.id),
            unread_only=unread_only,
            first=first,
        )
        return [Notification.from_model(row) for row in rows]

    unread_notification_count: int = strawberry.field(
        resolver=_unread_count, description="How many of your notifications are unread."
    )
    sessions: list[Session] = strawberry.field(
        resolver=_sessions, description="Your signed-in sessions that have not ended, newest first."
    )
    audit_log: reports.Connection[AuditEntry] = strawberry.field(
        resolver=_audit_log, description="What was done with your account, newest first."
    )

    @strawberry.field
    async def nodes(self, info: Info[Context, Any]) -> list[Node]:
        rows = await info.context.loaders.nodes.load(uuid.UUID(self.id))
        return [Node.from_model(row) for row in rows]

    usage: reports.Usage = strawberry.field(
        resolver=reports.usage, description="What you spent on inference: totals and breakdowns."
    )
    earnings: Money = strawberry.field(
        resolver=reports.earnings, description="All that your nodes have earned."
    )
    earnings_report: reports.Earnings = strawberry.field(
        resolver=reports.earnings_report, description="What your nodes earned, with breakdowns."
    )
    usage_records: reports.Connection[reports.UsageRecord] = strawberry.field(
        resolver=reports.usage_records, description="Your requests, newest first."
    )
    transactions: reports.Connection[reports.LedgerTransaction] = strawberry.field(
        resolver=reports.transactions,
        description="Movements of money on your account, newest first.",
    )


def set_session_cookie(response: Response, settings: Settings, logged_in: LoggedIn) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        logged_in.token,
        max_age=settings.session_ttl_seconds,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies,
        path="/",
    )


async def me(info: Info[Context, Any]) -> User:
    principal = require_principal(info)
    row = await service.user_by_id(info.context.resources.db, principal.user_id)
    assert row is not None  # the principal was just authenticated
    return User.from_model(row)


async def set_display_name(info: Info[Context, Any], name: str) -> User:
    row = await profile.set_display_name(
        info.context.resources.db,
        principal=require_principal(info),
        name=name,
        client=info.context.client,
    )
    return User.from_model(row)


async def sign_up(info: Info[Context, Any], email: str, password: str) -> User:
    ctx = info.context
    await ctx.resources.limiter.check(
        ctx.resources.settings.signup_limit_address,
        "signup-address",
        ctx.client.ip or "-",
        message="too many sign-ups from this address; try again later",
    )
    logged_in = await service.sign_up(
        ctx.resources.db,
        email=email,
        password=password,
        client=ctx.client,
        signer=ctx.resources.signer,
        session_ttl=ctx.resources.login_policy.session_ttl,
    )
    set_session_cookie(ctx.response, ctx.resources.settings, logged_in)
    return User.from_model(logged_in.user)


async def log_in(info: Info[Context, Any], email: str, password: str) -> User:
    ctx = info.context
    logged_in = await service.log_in(
        ctx.resources.db,
        email=email,
        password=password,
        client=ctx.client,
        signer=ctx.resources.signer,
        limiter=ctx.resources.limiter,
        policy=ctx.resources.login_policy,
    )
    set_session_cookie(ctx.response, ctx.resources.settings, logged_in)
    return User.from_model(logged_in.user)


async def log_out(info: Info[Context, Any]) -> bool:
    ctx = info.context
    await service.log_out(ctx.resources.db, principal=require_principal(info), client=ctx.client)
    ctx.response.delete_cookie(SESSION_COOKIE, path="/")
    return True


async def end_session(info: Info[Context, Any], id: strawberry.ID) -> bool:
    ctx = info.context
    principal = require_principal(info)
    try:
        session_id = uuid.UUID(id)
    except ValueError as exc:
        raise NotFound("no such session", param="id") from exc
    await sessions.end_session(
        ctx.resources.db, principal=principal, session_id=session_id, client=ctx.client
    )
    if session_id == principal.session_id:
        ctx.response.delete_cookie(SESSION_COOKIE, path="/")  # ending this one logs out
    return True


async def change_password(
    info: Info[Context, Any], current_password: str, new_password: str
) -> User:
    ctx = info.context
    logged_in = await service.change_password(
        ctx.resources.db,
        principal=require_principal(info),
        current_password=current_password,
        new_password=new_password,
        client=ctx.client,
        signer=ctx.resources.signer,
        session_ttl=ctx.resources.login_policy.session_ttl,
    )
    set_session_cookie(ctx.response, ctx.resources.settings, logged_in)
    return User.from_model(logged_in.user)


async def set_password(info: Info[Context, Any], new_password: str) -> User:
    ctx = info.context
    logged_in = await service.set_password(
        ctx.resources.db,
        principal=require_principal(info),
        new_password=new_password,
        client=ctx.client,
        signer=ctx.resources.signer,
        session_ttl=ctx.resources.login_policy.session_ttl,
    )
    set_session_cookie(ctx.response, ctx.resources.settings, logged_in)
    return User.from_model(logged_in.user)
