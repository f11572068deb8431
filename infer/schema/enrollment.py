"""Enrolment codes: an operator creates one, a new node redeems it for a node-scoped key."""

from __future__ import annotations

import shlex
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from infer.authentication import own_origin
from infer.keys import enrollment
from infer.schema.api_key import ApiKey
from infer.schema.context import Context
from infer.schema.permissions import require_principal


@strawberry.type(name="EnrollmentCode")
class EnrollmentCode:
    code: str = strawberry.field(description="Shown this once; single use.")
    expires_at: datetime
    command: str = strawberry.field(description="The `infer node join …` line to run on the node.")


@strawberry.type(name="EnrolledKey")
class EnrolledKey:
    secret: str = strawberry.field(description="The node's key (NODES scope); shown this once.")
    api_key: ApiKey


def _platform_url(info: Info[Context, Any]) -> str:
    """INFER_PUBLIC_URL when it is configured, else the address this request came to."""
    settings = info.context.resources.settings
    if "public_url" in settings.model_fields_set:
        return settings.public_url.rstrip("/")
    return own_origin(info.context.request)


async def create_enrollment_code(info: Info[Context, Any]) -> EnrollmentCode:
    ctx = info.context
    settings = ctx.resources.settings
    issued = await enrollment.create_code(
        ctx.resources.db,
        principal=require_principal(info),
        lookup_key=ctx.resources.key_material.lookup_key,
        ttl_seconds=settings.enrollment_code_ttl,
        client=ctx.client,
    )
    platform = shlex.quote(_platform_url(info))
    return EnrollmentCode(
        code=issued.code,
        expires_at=issued.expires_at,
        command=f"infer node join --platform {platform} --code {issued.code}",
    )


async def redeem_enrollment_code(
    info: Info[Context, Any],
    code: str,
    name: Annotated[
        str | None,
        strawberry.argument(description="The node's name for its key (default: its address)."),
    ] = None,
) -> EnrolledKey:
    ctx = info.context
    await ctx.resources.limiter.check(
        ctx.resources.settings.enrollment_limit_address,
        "enrol-address",
        ctx.client.ip or "-",
        message="too many enrolment attempts from this address; try again later",
    )
    issued = await enrollment.redeem_code(
        ctx.resources.db,
        code=code,
        name=name,
        lookup_key=ctx.resources.key_material.lookup_key,
        material=ctx.resources.key_material,
        client=ctx.client,
    )
    return EnrolledKey(secret=issued.secret, api_key=ApiKey.from_model(issued.api_key))
