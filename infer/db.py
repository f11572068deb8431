"""Database engine and sessions (SQLite pragmas, PostgreSQL pool), and migrations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, exc, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel.ext.asyncio.session import AsyncSession

from infer.outages import database_unavailable, unavailable

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# Installed, migrations/ ships inside the package (setup.py); in a checkout (and an
# editable install) it is the top-level folder beside infer/.
_PACKAGE = Path(__file__).resolve().parent
MIGRATIONS_DIR = (
    _PACKAGE / "migrations"
    if (_PACKAGE / "migrations" / "env.py").is_file()
    else _PACKAGE.parent / "migrations"
)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(
    url: str, *, pool_size: int = 10, max_overflow: int | None = None, timeout: float = 30.0
) -> AsyncEngine:
    """Build the async engine; on SQLite, WAL and explicit BEGIN for real transactions.

    `timeout`: seconds to wait for a connection (connecting, a free one in the pool,
    SQLite's write lock) before giving up with `Unavailable`.
    """
    if not is_sqlite(url):
        # No pre-ping (three round trips per checkout): a connection the server closed is
        # seen closed locally at checkout (no round trip) and replaced, and one found dead
        # mid-query raises once, after which SQLAlchemy replaces the whole pool.
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size * 2 if max_overflow is None else max_overflow,
            pool_recycle=1800,
            pool_timeout=timeout,
            connect_args={"timeout": timeout},
        )
        _translate_outages(engine)

        @event.listens_for(engine.sync_engine, "checkout")
        def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
            if dbapi_connection.driver_connection.is_closed():
                raise DisconnectionError("closed while idle in the pool")  # the pool reconnects

        return engine
    engine = create_async_engine(url, connect_args={"timeout": timeout})
    _translate_outages(engine)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN IMMEDIATE is possible.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that read
        # first would fail with SQLITE_BUSY instead of waiting its turn.
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _translate_outages(engine: AsyncEngine) -> None:
    """Raise `Unavailable` where the driver says the database cannot be reached or used.

    Every statement's error passes `handle_error` (SQLAlchemy still invalidates a lost
    connection first); connecting passes `do_connect`, since asyncpg's refusals are
    plain OSErrors that SQLAlchemy does not wrap.
    """

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> BaseException | None:
        if context.is_disconnect or database_unavailable(context.original_exception):
            return unavailable()
        return None

    @event.listens_for(engine.sync_engine, "do_connect")
    def _on_connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            if database_unavailable(exc):
                raise unavailable() from exc
            raise


class Database:
    """The process's engine with two kinds of session: reads, and write transactions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reads = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        self._write_engine = engine.execution_options(sqlite_immediate=True)
        self._writes = async_sessionmaker(
            self._write_engine,
            class_=AsyncSession,
            expire_on_commit=False,
        )

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0) -> Database:
        return cls(create_engine(url, timeout=timeout))

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reading; commit yourself if you write."""
        async with self._reads() as session:
            yield session

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed on success, rolled back on any error.

        `durable=False` lets PostgreSQL acknowledge the commit before it reaches the
        disk: only for writes whose loss in a crash harms nobody (a hold dies with its
        request), never for money that moved.
        """
        async with self._writes() as session, session.begin():
            if not durable and self.engine.dialect.name == "postgresql":
                connection = await session.connection()
                await connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
            yield session

    @asynccontextmanager
    async def core_transaction(self, *, durable: bool = True) -> AsyncIterator[AsyncConnection]:
        """A write transaction on a bare connection, for prebuilt Core statements on hot paths.

        Same rules as `transaction()`, without the ORM session's bookkeeping.
        """
        async with self._write_engine.begin() as connection:
            if not durable and self.engine.dialect.name == "postgresql":
                await connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
            yield connection

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(2), self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:  # any failure to reach the database means "not ready"
            return False
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()


# PostgreSQL's codes for a lost race another try will not meet: a serialization failure,
# a deadlock, a lock not available, a statement cancelled (its timeout).
_RACE_STATES = ("40001", "40P01", "55P03", "57014")


def is_transient(error: BaseException) -> bool:
    """A database failure worth another try: unavailable just now, or a lost race."""
    if database_unavailable(error):  # what the engine raises for an outage: `Unavailable`
        return True
    original = error.orig if isinstance(error, exc.DBAPIError) else error
    for candidate in (original, getattr(original, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_RACE_STATES):
            return True
    return False


def group_by(rows: Iterable[T], keys: Sequence[K], key: Callable[[T], K]) -> dict[K, list[T]]:
    """Rows of one query split per parent key, every key present (a DataLoader's shape)."""
    grouped: dict[K, list[T]] = {k: [] for k in keys}
    for row in rows:
        grouped[key(row)].append(row)
    return grouped


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Apply pending migrations (blocking; call from a thread inside an event loop)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
