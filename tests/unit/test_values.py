"""Pure value handling: money, emails, settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from infer.accounts.emails import normalize_email
from infer.billing.money import format_usd, parse_usd
from infer.config import Settings, with_development_secrets
from infer.errors import BadInput


@pytest.mark.parametrize(
    ("text", "micros"),
    [("5", 5_000_000), ("12.50", 12_500_000), ("0.000001", 1), (" 3 ", 3_000_000)],
)
def test_usd_amounts_parse_exactly(text: str, micros: int) -> None:
    assert parse_usd(text) == micros


@pytest.mark.parametrize("text", ["0", "-1", "abc", "NaN", "Infinity", "1e400", "0.0000001", ""])
def test_bad_usd_amounts_are_refused(text: str) -> None:
    with pytest.raises(BadInput):
        parse_usd(text)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.00"),
        (12_500_000, "12.50"),
        (1, "0.000001"),
        (-2_340_000, "-2.34"),
        (7_000_000, "7.00"),
    ],
)
def test_usd_amounts_format_without_losing_precision(micros: int, text: str) -> None:
    assert format_usd(micros) == text


def test_emails_are_normalised() -> None:
    assert normalize_email("  Ann@Example.COM ") == "ann@example.com"


@pytest.mark.parametrize(
    "email", ["", "ann", "ann@", "@example.com", "a b@example.com", "a@b", "a@@b.com"]
)
def test_invalid_emails_are_refused(email: str) -> None:
    with pytest.raises(BadInput):
        normalize_email(email)


def test_cookies_are_secure_only_behind_https() -> None:
    assert not Settings(public_url="http://127.0.0.1:8000").secure_cookies
    assert Settings(public_url="https://infer.example").secure_cookies


def test_production_refuses_placeholder_secrets() -> None:
    with pytest.raises(ValidationError, match="INFER_SECRET_KEY"):
        Settings(
            env="production",
            secret_key=SecretStr("changeme"),
            lookup_key=SecretStr("x" * 40),
            encryption_keys=SecretStr("1:abc"),
        )


def test_development_secrets_are_generated_once_into_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "secrets.json"
    first = with_development_secrets(Settings(secrets_file=path))
    second = with_development_secrets(Settings(secrets_file=path))
    assert first.secret("secret_key") == second.secret("secret_key")
    assert first.secret("lookup_key") != first.secret("secret_key")
    assert path.stat().st_mode & 0o777 == 0o600
