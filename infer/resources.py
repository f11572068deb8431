"""Process resources, built once in the lifespan from the settings and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from infer.accounts.service import LoginPolicy
from infer.config import Settings
from infer.db import Database
from infer.keys.auth import KeyAuthenticator
from infer.keys.service import KeyMaterial
from infer.ratelimit import RateLimiter
from infer.security.crypto import Keyring
from infer.security.tokens import SessionSigner

log = logging.getLogger(__name__)

LAST_USED_FLUSH_SECONDS = 30.0


@dataclass
class Resources:
    """Everything a request may use that lives as long as the process."""

    settings: Settings
    db: Database
    limiter: RateLimiter
    signer: SessionSigner
    key_material: KeyMaterial
    authenticator: KeyAuthenticator
    login_policy: LoginPolicy
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        db = Database.from_url(settings.database_url)
        lookup_key = settings.secret("lookup_key")
        return cls(
            settings=settings,
            db=db,
            limiter=RateLimiter.from_settings(settings),
            signer=SessionSigner(settings.secret("secret_key")),
            key_material=KeyMaterial(
                lookup_key=lookup_key, keyring=Keyring.parse(settings.secret("encryption_keys"))
            ),
            authenticator=KeyAuthenticator(db, lookup_key=lookup_key),
            login_policy=LoginPolicy(
                account_limit=settings.login_limit_account,
                address_limit=settings.login_limit_address,
                session_ttl=timedelta(seconds=settings.session_ttl_seconds),
            ),
        )

    def start_background(self) -> None:
        self._tasks.append(asyncio.create_task(self._flush_last_used_forever()))

    async def _flush_last_used_forever(self) -> None:
        while True:
            await asyncio.sleep(LAST_USED_FLUSH_SECONDS)
            try:
                await self.authenticator.flush_last_used()
            except Exception:  # a failed flush must not end the loop; retried next round
                log.exception("could not record API key last-used times")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.authenticator.flush_last_used()
        finally:
            await self.db.dispose()
