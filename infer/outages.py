"""Outages of the database and Redis: how they are recognised, reported and ridden out.

The database: `database_unavailable` decides which driver errors mean "unreachable or
unusable just now" (a lost or refused connection, PostgreSQL shutting down or out of
connections, SQLite's lock held past the timeout, its file unopenable), and
`unavailable` is the `Unavailable` raised in their place. The engine raises it at the
boundary (infer/db.py); the edges map it (503 with Retry-After, or `UNAVAILABLE`).

Redis: every part that uses it keeps working on its own, in-process state while it is
gone. `Reachability` is one part's view of it: one warning when it is lost (not one per
failed call), an info line when it is back, and a back-off between attempts meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

import asyncpg
from sqlalchemy import exc as sa

from infer.errors import Unavailable

RETRY_AFTER_SECONDS = 2
REDIS_BACKOFF_SECONDS = 2.0

# SQLSTATE classes of "cannot use the server now": 08 connection exception, 57P operator
# intervention (shutting down, starting up), 53 insufficient resources (disk full, out of
# memory, too many connections), 58 system error (I/O), 25006 read-only (a failover).
_SQLSTATE_PREFIXES = ("08", "57P", "53", "58", "25006")
# What SQLite says when its file is busy past the timeout, or cannot be opened or read.
_SQLITE_MESSAGES = ("database is locked", "unable to open database file", "disk i/o error")


def _sqlstate(error: BaseException | None) -> str:
    state = getattr(error, "sqlstate", None)
    return state if isinstance(state, str) else ""


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached or used just now."""
    if isinstance(error, Unavailable):
        return True
    if isinstance(error, sa.DBAPIError):
        if error.connection_invalidated:
            return True
        error = error.orig if isinstance(error.orig, BaseException) else error
    if isinstance(error, OSError | sa.TimeoutError):
        return True  # refused or timed out on connect; a pool with no connection to give
    if isinstance(error, sqlite3.OperationalError):
        return str(error).lower().startswith(_SQLITE_MESSAGES)
    # asyncpg's own error, raw or kept by SQLAlchemy's adapter as the cause.
    for candidate in (error, error.__cause__):
        if _sqlstate(candidate).startswith(_SQLSTATE_PREFIXES):
            return True
        if isinstance(candidate, asyncpg.InterfaceError) and "connection is closed" in str(
            candidate
        ):
            return True
    return False


def unavailable() -> Unavailable:
    """What the caller is told in place of the driver's error (which stays in our logs)."""
    return Unavailable(
        "the database is unavailable just now; try again shortly",
        retry_after=RETRY_AFTER_SECONDS,
    )


class Reachability:
    """One part's view of whether Redis answers, logging each change once.

    `failed()` after a call failed: a warning the first time (saying what the part does
    instead), then attempts are skipped for `backoff` seconds. `succeeded()` after a call
    went through: an info line if it had been lost. `should_try()` says whether to call now.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        meanwhile: str,
        backoff: float = REDIS_BACKOFF_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._meanwhile = meanwhile
        self._backoff = backoff
        self._clock = clock
        self._retry_at = 0.0
        self.down = False

    def should_try(self) -> bool:
        return not self.down or self._clock() >= self._retry_at

    def failed(self, error: BaseException) -> None:
        self._retry_at = self._clock() + self._backoff
        if not self.down:
            self.down = True
            self._log.warning(
                "Redis unreachable (%s: %s); %s until it is back",
                type(error).__name__,
                error,
                self._meanwhile,
            )

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            self._log.info("Redis reachable again; %s no more", self._meanwhile)
