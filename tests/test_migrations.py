"""Alembic is the only schema: upgrade on an empty database matches the models, and reverses."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import POSTGRES_DSN, _asyncpg_url, _pg_admin
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import infer.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from infer.db import alembic_config, create_engine, upgrade_database

T = TypeVar("T")


@pytest.fixture
def empty_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A database with no tables at all, not even alembic_version."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("postgres_template")  # skips, or fails in CI, without PostgreSQL
    name = f"infer_empty_{os.getpid()}"
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    yield _asyncpg_url(POSTGRES_DSN, name)
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _on_connection(url: str, function: Callable[[Connection], T]) -> T:
    """Run a synchronous inspection over the project's async engine."""

    async def run() -> T:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(function)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_upgrade_head_on_empty_database_matches_models(empty_database_url: str) -> None:
    upgrade_database(empty_database_url)

    differences = _on_connection(empty_database_url, _diff)

    assert not differences, "migrations differ from infer/models.py:\n" + "\n".join(
        map(str, differences)
    )


def test_downgrade_to_base_then_upgrade_again(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "head")

    command.downgrade(config, "base")
    assert _on_connection(empty_database_url, _table_names) == {"alembic_version"}

    command.upgrade(config, "head")
    assert _on_connection(empty_database_url, _diff) == []


def test_replicas_migrating_at_once_take_turns(empty_database_url: str) -> None:
    """Several `infer serve` processes starting together all succeed, and agree."""
    code = "import sys; from infer.db import upgrade_database; upgrade_database(sys.argv[1])"
    processes = [
        subprocess.Popen([sys.executable, "-c", code, empty_database_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode()[-2000:]
    assert _on_connection(empty_database_url, _diff) == []
