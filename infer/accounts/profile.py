"""What buyers see of an operator: a display name it chooses, or a neutral default."""

from __future__ import annotations

import re
import uuid

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from infer import audit
from infer.accounts.principal import Principal
from infer.audit import ClientInfo
from infer.db import Database
from infer.errors import BadInput, Conflict, NotFound
from infer.models import User
from infer.security.text import check_text

# ASCII only, so no name can pass for another through look-alike letters of other scripts
# ("Ann" spelt with a Cyrillic A); it starts and ends with a letter or digit.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._-]{1,30})[A-Za-z0-9]", re.ASCII)
# Kept for the defaults, so a chosen name never looks like another provider's default.
DEFAULT_PREFIX = "provider-"
MAX_DESCRIPTION = 500
_RULE = (
    "a display name is 3 to 32 letters, digits, spaces, '.', '_' or '-',"
    " starting and ending with a letter or digit"
)


def display_name(user_id: uuid.UUID, chosen: str | None) -> str:
    """The chosen name, or a default from the (random) user id: nothing personal."""
    return chosen or f"{DEFAULT_PREFIX}{user_id.hex[:8]}"


def clean_display_name(name: str) -> str:
    """Outer spaces go and runs of spaces become one; then the rule above applies."""
    name = re.sub(" {2,}", " ", name.strip(" "))
    if not _NAME.fullmatch(name):
        raise BadInput(_RULE, param="name")
    if name.lower().startswith(DEFAULT_PREFIX):
        raise BadInput(f"names starting with {DEFAULT_PREFIX!r} are the defaults", param="name")
    return name


async def set_display_name(
    db: Database, *, principal: Principal, name: str, client: ClientInfo
) -> User:
    """Choose the name buyers see; unique whatever the letter case (CONFLICT if taken)."""
    name = clean_display_name(name)
    taken = Conflict("another provider already uses this name", param="name")
    try:
        async with db.transaction() as session:
            user = await session.get(User, principal.user_id)
            if user is None:
                raise NotFound("no such user")
            other = await session.exec(
                select(User.id).where(
                    col(User.display_name_key) == name.lower(), col(User.id) != user.id
                )
            )
            if other.first() is not None:
                raise taken
            user.display_name, user.display_name_key = name, name.lower()
            session.add(user)
            audit.record(
                session,
                action="user.display_name_set",
                client=client,
                actor_id=user.id,
                details={"name": name},
            )
    except IntegrityError as exc:
        # Two operators choosing one name at once: the unique key turns one away.
        raise taken from exc
    return user


async def set_description(
    db: Database, *, principal: Principal, description: str | None, client: ClientInfo
) -> User:
    """The provider profile's own words (at most 500 characters); empty or null clears them."""
    text = check_text(
        description, param="description", what="a description", max_length=MAX_DESCRIPTION
    )
    async with db.transaction() as session:
        user = await session.get(User, principal.user_id)
        if user is None:
            raise NotFound("no such user")
        user.description = text
        session.add(user)
        audit.record(session, action="user.description_set", client=client, actor_id=user.id)
    return user
