"""Enrolment codes: one-time, short-lived codes a new node exchanges for a node-scoped key."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer import audit
from infer.accounts.principal import Principal
from infer.audit import ClientInfo
from infer.db import Database
from infer.errors import BadInput
from infer.keys.service import MAX_ACTIVE_KEYS, IssuedKey, KeyMaterial, active_count, new_key
from infer.models import ApiKeyScope, EnrollmentCode, utcnow
from infer.security.text import check_name

MAX_OUTSTANDING = 10
# Crockford's base32: no I, L, O or U, so what is read aloud or retyped survives.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_GROUPS, _GROUP = 4, 4  # 16 characters, 80 bits
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_NODE_SCOPES = frozenset({ApiKeyScope.NODES})


@dataclass(frozen=True)
class IssuedCode:
    code: str
    expires_at: datetime


def generate_code() -> str:
    """`XXXX-XXXX-XXXX-XXXX` of base32 characters."""
    chars = "".join(secrets.choice(_ALPHABET) for _ in range(_GROUPS * _GROUP))
    return "-".join(chars[i : i + _GROUP] for i in range(0, len(chars), _GROUP))


def normalise(code: str) -> str | None:
    """The code's 16 characters, whatever the case, dashes and spaces; None if it is not one."""
    chars = "".join(code.split()).replace("-", "").upper().translate(_LOOKALIKES)
    if len(chars) != _GROUPS * _GROUP or any(ch not in _ALPHABET for ch in chars):
        return None
    return chars


def _digest(chars: str, lookup_key: str) -> str:
    return hmac.new(lookup_key.encode(), b"enrol:" + chars.encode(), hashlib.sha256).hexdigest()


async def create_code(
    db: Database,
    *,
    principal: Principal,
    lookup_key: str,
    ttl_seconds: int,
    client: ClientInfo,
) -> IssuedCode:
    """A new code for the principal's account; at most MAX_OUTSTANDING unused ones at once."""
    code = generate_code()
    now = utcnow()
    row = EnrollmentCode(
        operator_id=principal.user_id,
        digest=_digest(code.replace("-", ""), lookup_key),
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    async with db.transaction() as session:
        outstanding = await session.exec(
            select(sa.func.count())
            .select_from(EnrollmentCode)
            .where(
                EnrollmentCode.operator_id == principal.user_id,
                col(EnrollmentCode.used_at).is_(None),
                col(EnrollmentCode.expires_at) > now,
            )
        )
        if outstanding.one() >= MAX_OUTSTANDING:
            raise BadInput(
                f"at most {MAX_OUTSTANDING} unused enrolment codes at once;"
                " use one or wait for one to expire"
            )
        session.add(row)
        audit.record(
            session,
            action="enrollment_code.created",
            client=client,
            actor_id=principal.user_id,
            target=f"enrollment_code:{row.id}",
        )
    return IssuedCode(code=code, expires_at=row.expires_at)


async def redeem_code(
    db: Database,
    *,
    code: str,
    name: str | None,
    lookup_key: str,
    material: KeyMaterial,
    client: ClientInfo,
) -> IssuedKey:
    """Spend a code (once, atomically) on a NODES-only key for the code's operator."""
    label = check_name(
        name or client.ip or "unnamed", param="name", what="a node name", max_length=90
    )
    chars = normalise(code)
    if chars is None:
        raise BadInput(_UNKNOWN, param="code")
    digest = _digest(chars, lookup_key)
    table = EnrollmentCode.__table__  # type: ignore[attr-defined]
    async with db.transaction() as session:
        connection = await session.connection()
        now = utcnow()
        # One UPDATE decides: of two redemptions at once, the second finds used_at set.
        claimed = await connection.execute(
            sa.update(table)
            .where(table.c.digest == digest, table.c.used_at.is_(None), table.c.expires_at > now)
            .values(used_at=now)
            .returning(table.c.id, table.c.operator_id)
        )
        row = claimed.first()
        if row is None:
            raise BadInput(await _why_refused(session, digest), param="code")
        code_id, operator_id = row
        if await active_count(session, operator_id) >= MAX_ACTIVE_KEYS:
            raise BadInput(f"the account has {MAX_ACTIVE_KEYS} active keys; revoke one first")
        issued = new_key(operator_id, f"node: {label}", material, scopes=_NODE_SCOPES)
        session.add(issued.api_key)
        await session.flush()
        await connection.execute(
            sa.update(table).where(table.c.id == code_id).values(api_key_id=issued.api_key.id)
        )
        audit.record(
            session,
            action="enrollment_code.redeemed",
            client=client,
            actor_id=operator_id,
            target=f"api_key:{issued.api_key.id}",
            details={"code": str(code_id), "name": label},
        )
    return issued


_UNKNOWN = "unknown enrolment code; check it, or create a new one on the operator page"


async def _why_refused(session: AsyncSession, digest: str) -> str:
    found = (
        await session.exec(select(EnrollmentCode).where(EnrollmentCode.digest == digest))
    ).first()
    if found is None:
        return _UNKNOWN
    if found.used_at is not None:
        return "this enrolment code was already used; create a new one on the operator page"
    return "this enrolment code has expired; create a new one on the operator page"
