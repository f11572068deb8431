"""The `infer` command as a user runs it: a process, configured by its environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import SIGN_UP, GraphQLClient

from infer.config import Settings


def _infer(settings: Settings, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "INFER_DATABASE_URL": settings.database_url,
        "INFER_SECRETS_FILE": str(cwd / "secrets.json"),
    }
    return subprocess.run(
        [sys.executable, "-m", "infer.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


async def test_credits_grant_shows_in_me_balance(
    settings: Settings, graphql: GraphQLClient, tmp_path: Path
) -> None:
    await graphql(SIGN_UP, {"e": "ann@example.com", "p": "correct horse battery staple"})
    done = _infer(settings, "credits", "grant", "Ann@Example.com", "12.50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "balance is now 12.50 USD" in done.stdout
    body = await graphql("{ me { balance } }")
    assert body["data"]["me"]["balance"] == "12.50"  # type: ignore[index]


async def test_credits_grant_refuses_bad_amounts_and_unknown_accounts(
    settings: Settings, tmp_path: Path
) -> None:
    for amount, fragment in (
        ("-5", "positive"),
        ("abc", "not an amount"),
        ("0.0000001", "6 decimal"),
    ):
        done = _infer(settings, "credits", "grant", "ann@example.com", amount, cwd=tmp_path)
        assert done.returncode != 0
        assert fragment in done.stderr
        assert "Traceback" not in done.stderr
    missing = _infer(settings, "credits", "grant", "nobody@example.com", "5", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "infer: no account with the email 'nobody@example.com'"


async def test_migrate_is_idempotent_and_keeps_secrets_in_a_private_file(
    settings: Settings, tmp_path: Path
) -> None:
    for _ in range(2):
        done = _infer(settings, "migrate", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    secrets = tmp_path / "secrets.json"
    assert secrets.exists()
    assert secrets.stat().st_mode & 0o777 == 0o600


def test_production_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "INFER_ENV": "production",
        "INFER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
    }
    done = subprocess.run(
        [sys.executable, "-m", "infer.cli", "migrate"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "INFER_SECRET_KEY must be set in production" in done.stderr
    assert not (tmp_path / "x.db").exists()
