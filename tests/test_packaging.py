"""The package as a plain (non-editable) install gets it: a wheel that migrates on its own."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from infer.db import alembic_config

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "infer", "migrations", "ui", "graphql")


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _copy_sources(source: Path) -> None:
    """Build from a copy, so that the checkout gets no build/ or egg-info litter."""
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)


def test_a_plain_install_carries_its_migrations(tmp_path: Path) -> None:
    source, wheels, site = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
    _copy_sources(source)
    pip = ("-m", "pip", "--disable-pip-version-check", "-q")
    _run(
        *pip,
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        str(source),
        "-w",
        str(wheels),
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("infer-*.whl")
    _run(
        *pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp_path
    )

    database = tmp_path / "fresh.db"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(site),  # the installed copy, ahead of the checkout's editable one
        "INFER_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "INFER_SECRETS_FILE": str(tmp_path / "secrets.json"),
    }
    where = _run("-c", "import infer.db; print(infer.db.MIGRATIONS_DIR)", cwd=elsewhere, env=env)
    assert Path(where.strip()) == site / "infer" / "migrations"
    _run("-m", "infer.cli", "migrate", cwd=elsewhere, env=env)

    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"users", "api_keys", "nodes", "usage_records"} <= tables
    head = ScriptDirectory.from_config(alembic_config(f"sqlite+aiosqlite:///{database}"))
    assert revision == head.get_current_head()

    # The dashboard: its templates, static files and operations come from the wheel too.
    found = _run(
        "-c",
        "from infer.web import operations, templates as t;"
        "print(operations.OPERATIONS_DIR); print(t.TEMPLATES_DIR); print(t.STATIC_DIR)",
        cwd=elsewhere,
        env=env,
    ).split()
    assert [Path(line) for line in found] == [
        site / "infer" / "graphql" / "operations",
        site / "infer" / "ui" / "templates",
        site / "infer" / "ui" / "static",
    ]
    for path in (
        "graphql/operations/accounts.graphql",
        "ui/templates/base.html",
        "ui/static/htmx.min.js",
    ):
        assert (site / "infer" / path).is_file(), path
