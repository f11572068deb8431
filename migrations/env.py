"""Alembic environment: runs migrations over the async engine on SQLite or PostgreSQL."""

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import infer.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from infer.db import create_engine

target_metadata = SQLModel.metadata
_LOCK_KEY = 0x1AFE12  # any constant shared by every replica of INFER


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # SQLite's DDL is transactional too; said so, Alembic keeps every step (batch
        # table copies included) inside the one BEGIN IMMEDIATE transaction.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Replicas starting together take turns; the later ones find nothing to do.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            broken = connection.execute(text("PRAGMA foreign_key_check")).all()
            if broken:
                raise RuntimeError(f"migration left rows without their parent: {broken[:5]}")


async def _run_async(url: str) -> None:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        # A batch migration copies a table, drops it and renames the copy: with foreign
        # keys enforced, the drop would cascade to every row pointing at it (health
        # checks, models, usage). They are off while migrating (SQLite ignores the pragma
        # inside a transaction, so it is set on connecting) and checked at the end.
        @event.listens_for(engine.sync_engine, "connect")
        def _no_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=OFF")
            cursor.close()

    try:
        # On SQLite, BEGIN IMMEDIATE makes concurrent migrators queue for the write lock.
        async with engine.execution_options(sqlite_immediate=True).connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not configured"
    connectable = context.config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
