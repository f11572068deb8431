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
    [("5", 5_000_000), ("12.50", 12_500_000), ("0.000001", 1)],
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
            encryption_keys=SecretStr("1:" + "A" * 43 + "="),
        )


def test_development_secrets_are_generated_once_into_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "secrets.json"
    first = with_development_secrets(Settings(secrets_file=path))
    second = with_development_secrets(Settings(secrets_file=path))
    assert first.secret("secret_key") == second.secret("secret_key")
    assert first.secret("lookup_key") != first.secret("secret_key")
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("INFER_DATABASE_URL", "mysql://db/infer", "sqlite:/// or postgresql://"),
        ("INFER_REDIS_URL", "http://cache:6379", "redis://"),
        ("INFER_PUBLIC_URL", "infer.example", "http:// or https://"),
        ("INFER_LOG_LEVEL", "loud", "'debug'"),
        ("INFER_SIGNUP_LIMIT_ADDRESS", "lots", "'lots' is not a rate limit"),
        ("INFER_LOGIN_LIMIT_ACCOUNT", "10 per fortnight", "is not a rate limit"),
        ("INFER_CORS_ORIGINS", "https://app.example/", "is not an origin"),
        ("INFER_CORS_ORIGINS", "app.example", "is not an origin"),
        ("INFER_CORS_ORIGINS", '["https://app.example"', "delimiter"),
        ("INFER_ENCRYPTION_KEYS", "abc", "1:BASE64"),
        ("INFER_ENCRYPTION_KEYS", "1:c2hvcnQ=", "not 32 bytes"),
        ("INFER_GRAPHQL_MAX_DEPTH", "0", "greater than or equal to 1"),
    ],
)
def test_bad_settings_are_refused_at_start_naming_the_problem(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    # Refused when read, not at the first request that needs the value.
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("INFER_").lower()) as caught:
        Settings()
    assert problem in str(caught.value)


def test_cors_origins_are_a_comma_list_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFER_CORS_ORIGINS", "https://app.example, http://localhost:5173")
    assert Settings().cors_origins == ("https://app.example", "http://localhost:5173")
    monkeypatch.setenv("INFER_CORS_ORIGINS", '["https://app.example"]')
    assert Settings().cors_origins == ("https://app.example",)
    monkeypatch.setenv("INFER_CORS_ORIGINS", "*")
    assert Settings().cors_origins == ("*",)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@db:5432/infer", "postgresql+asyncpg://u:p@db:5432/infer"),
        ("postgres://db/infer", "postgresql+asyncpg://db/infer"),
        ("postgresql+asyncpg://db/infer", "postgresql+asyncpg://db/infer"),
        ("sqlite:///./infer.db", "sqlite+aiosqlite:///./infer.db"),
    ],
)
def test_database_urls_get_the_async_driver(given: str, used: str) -> None:
    # The URL most hosts hand out (postgres://…) works as given.
    assert Settings(database_url=given).database_url == used


def test_production_refuses_short_secrets() -> None:
    with pytest.raises(ValidationError, match="INFER_LOOKUP_KEY must be at least 32"):
        Settings(
            env="production",
            secret_key=SecretStr("s" * 40),
            lookup_key=SecretStr("short-but-not-a-placeholder"),
            encryption_keys=SecretStr("1:" + "A" * 43 + "="),
        )
