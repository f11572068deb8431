"""Authenticating API keys: offline format check, cached digest lookup, lazy last-used."""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from infer.accounts.principal import Principal
from infer.db import Database
from infer.errors import KeyExpired, Unauthenticated
from infer.keys.scopes import parse_scopes
from infer.models import ApiKey, KeyBudget, User, utcnow
from infer.security import apikeys

_INVALID = "invalid API key"


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    digest: str
    expires_at: datetime | None
    revoked: bool
    cached_at: float


class KeyAuthenticator:
    """Turns a presented key into a principal, keeping the database off the hot path.

    Lookups are cached for `cache_seconds`; this process forgets a key at once when it
    revokes or rotates it. Concurrent requests with a key that is not cached share one
    lookup. `last_used_at` is collected in memory and flushed in batches.
    """

    def __init__(
        self,
        db: Database,
        *,
        lookup_key: str,
        cache_seconds: float = 5.0,
        max_entries: int = 10_000,
    ) -> None:
        self._db = db
        self._lookup_key = lookup_key
        self._cache_seconds = cache_seconds
        self._max_entries = max_entries
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[str, asyncio.Future[_Entry | None]] = {}
        self._last_used: dict[uuid.UUID, datetime] = {}

    async def authenticate(self, presented: str) -> Principal:
        if not apikeys.is_well_formed(presented):
            raise Unauthenticated(_INVALID)
        digest = apikeys.lookup_digest(presented, self._lookup_key)
        entry = self._cache.get(digest)
        if entry is None or time.monotonic() - entry.cached_at > self._cache_seconds:
            entry = await self._load_once(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            raise Unauthenticated(_INVALID)
        now = utcnow()
        if entry.revoked:
            raise Unauthenticated("this API key has been revoked or has expired")
        if entry.expires_at is not None and entry.expires_at <= now:
            when = entry.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            raise KeyExpired(f"This API key expired at {when}.")
        assert entry.principal.api_key_id is not None
        self._last_used[entry.principal.api_key_id] = now
        return entry.principal

    async def _load_once(self, digest: str) -> _Entry | None:
        """One lookup per digest at a time, not tied to any one request; others wait for it."""
        task = self._loading.get(digest)
        if task is None:
            task = self._loading[digest] = asyncio.ensure_future(self._load(digest))
            task.add_done_callback(lambda done: self._loaded(digest, done))
        return await asyncio.shield(task)

    def _loaded(self, digest: str, task: asyncio.Future[_Entry | None]) -> None:
        del self._loading[digest]
        if not task.cancelled():
            task.exception()  # retrieved here, so nobody waiting is not an error

    async def _load(self, digest: str) -> _Entry | None:
        successor = aliased(ApiKey)
        rotated = sa.exists().where(col(successor.rotated_from_id) == col(ApiKey.id))
        budgeted = sa.exists().where(col(KeyBudget.api_key_id) == col(ApiKey.id))
        async with self._db.session() as session:
            result = await session.exec(
                select(ApiKey, User, rotated.label("rotated"), budgeted.label("budgeted"))
                .join(User, col(ApiKey.user_id) == col(User.id))
                .where(ApiKey.digest == digest)
            )
            row = result.first()
        if row is None:
            self._cache.pop(digest, None)
            return None
        key, user, was_rotated, has_budget = row
        entry = _Entry(
            principal=Principal(
                user_id=user.id,
                role=user.role,
                api_key_id=key.id,
                requests_per_minute=key.requests_per_minute,
                tokens_per_minute=key.tokens_per_minute,
                retiring=bool(was_rotated),
                scopes=parse_scopes(key.scopes),
                has_budget=bool(has_budget),
                allowed_models=(
                    None if key.allowed_models is None else frozenset(key.allowed_models)
                ),
            ),
            digest=key.digest,
            expires_at=key.expires_at,
            revoked=key.revoked_at is not None,
            cached_at=time.monotonic(),
        )
        self._cache[digest] = entry
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return entry

    def forget(self, key_id: uuid.UUID) -> None:
        """Drop a key from the cache (after revoking or rotating it here)."""
        for digest, entry in list(self._cache.items()):
            if entry.principal.api_key_id == key_id:
                del self._cache[digest]

    def pending_last_used(self, key_id: uuid.UUID) -> datetime | None:
        return self._last_used.get(key_id)

    async def flush_last_used(self) -> int:
        """Write the collected last-used times; returns how many keys were updated."""
        pending, self._last_used = self._last_used, {}
        if not pending:
            return 0
        table = ApiKey.__table__  # type: ignore[attr-defined]
        statement = (
            sa.update(table)
            .where(table.c.id == sa.bindparam("key_id"))
            .values(last_used_at=sa.bindparam("used_at"))
        )
        async with self._db.transaction() as session:
            connection = await session.connection()
            await connection.execute(
                statement, [{"key_id": k, "used_at": t} for k, t in pending.items()]
            )
        return len(pending)
