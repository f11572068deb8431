"""Settings, read once from the environment (INFER_*), and development secrets."""

from __future__ import annotations

import base64
import json
import os
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import limits
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from infer.security.crypto import Keyring

_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "changethis", "dev", "development"}
_SECRET_FIELDS = ("secret_key", "lookup_key", "encryption_keys")
_MIN_SECRET_LENGTH = 32
# A completion's max_tokens is a GraphQL Int and a hold at the highest price stays far
# inside int64 (tests/unit/test_hold_bounds.py checks the arithmetic).
MAX_TOKENS_CEILING = 2**31 - 1
# A settlement is written just after its request ends: a hold outlives the longest
# request by at least this much, so the sweeper never takes one that is still live.
HOLD_MARGIN_SECONDS = 60
GOOGLE_DISCOVERY_URL = "https://accounts.google.com/.well-known/openid-configuration"
# What each accepted database URL scheme means to SQLAlchemy: the async driver we ship.
_DATABASE_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class Settings(BaseSettings):
    """Everything the platform can be configured with; see the README's table."""

    model_config = SettingsConfigDict(env_prefix="INFER_", frozen=True, extra="ignore")

    env: Literal["development", "production"] = "development"
    database_url: str = "sqlite+aiosqlite:///./infer.db"
    redis_url: str | None = None
    redis_prefix: str = "infer"
    database_timeout: float = Field(default=30.0, gt=0)
    public_url: str = "http://127.0.0.1:8000"
    health_interval: float = Field(default=60.0, gt=0)
    # Health history (infer/nodes/history.py): raw checks kept per node, rollup retention.
    health_raw_checks: int = Field(default=100, ge=1)
    health_retention_days: int = Field(default=8, ge=1)
    figures_interval: float = Field(default=60.0, gt=0)
    allow_private_endpoints: bool = False
    # The replica hop (infer/tunnel/hop.py): where this process listens for calls meant for
    # tunnels it holds, and the host other processes reach it at (default: the listen host).
    replica_listen: str = Field(
        default="127.0.0.1:0", pattern=r"^\[?[0-9A-Za-z.:-]*\]?:[0-9]{1,5}$"
    )
    replica_address: str | None = Field(default=None, max_length=253)
    platform_fee: Decimal = Field(default=Decimal("0.10"), ge=0, lt=1)

    secret_key: SecretStr | None = None
    lookup_key: SecretStr | None = None
    encryption_keys: SecretStr | None = None
    secrets_file: Path = Path(".infer/secrets.json")
    spool_dir: Path = Path(".infer/spool")

    session_ttl_seconds: int = Field(default=14 * 24 * 3600, gt=0)
    # Google sign-in (docs/google-sign-in.md): off without a client id.
    google_client_id: str | None = None
    google_client_secret: SecretStr | None = None
    google_discovery_url: str = GOOGLE_DISCOVERY_URL
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Failed log-ins (infer/accounts/throttle.py): per account and address, per address,
    # and per account across addresses (over it, only addresses it logged in from before).
    login_limit_pair: str = "10/15 minutes"
    login_limit_address: str = "30/5 minutes"
    login_limit_account: str = "100/hour"
    signup_limit_address: str = "20/hour"
    # The public storefront (providers, provider) per client address; review writes per user.
    market_limit_address: str = "120/minute"
    review_limit_user: str = "10/hour"
    # Enrolment codes (infer/keys/enrollment.py): their lifetime, redemptions per address.
    enrollment_code_ttl: int = Field(default=900, ge=60, le=7 * 24 * 3600)
    enrollment_limit_address: str = "20/hour"
    # Tunnel connections per node (infer/tunnel/routes.py): an agent reconnecting in a loop
    # costs a transaction and a health check each time; honest ones back off for seconds.
    tunnel_limit_node: str = "30/minute"
    graphql_max_depth: int = Field(default=12, ge=1)
    graphql_max_aliases: int = Field(default=30, ge=1)
    graphql_max_tokens: int = Field(default=2000, ge=1)
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    key_requests_per_minute: int = Field(default=600, gt=0)
    key_tokens_per_minute: int = Field(default=2_000_000, gt=0)
    default_max_tokens: int = Field(default=4096, gt=0)
    max_tokens_limit: int = Field(default=131_072, gt=0, le=MAX_TOKENS_CEILING)
    hold_ttl_seconds: int = Field(default=900, gt=0)
    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    upstream_first_byte_timeout: float = Field(default=30.0, gt=0)
    upstream_idle_timeout: float = Field(default=30.0, gt=0)
    upstream_total_timeout: float = Field(default=600.0, gt=0)
    health_timeout: float = Field(default=5.0, gt=0)
    # The health monitor (its own thread): checks in flight at once, and its own pool's size.
    health_concurrency: int = Field(default=64, ge=1, le=10_000)
    health_database_pool: int = Field(default=4, ge=2, le=100)
    # Who sweeps: a thread of each platform process, one `infer monitor` process that
    # `infer serve` starts, or none here (an `infer monitor` run elsewhere).
    health_monitor: Literal["thread", "process", "off"] = "thread"
    max_nodes_per_operator: int = Field(default=100, ge=1)
    client_write_timeout: float = Field(default=30.0, gt=0)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    # text: one readable line per record; json: one JSON object per line with the request id.
    log_format: Literal["text", "json"] = "text"
    # GET /metrics: with a token, only `Authorization: Bearer <token>`; without one, open in
    # development and off (404) in production.
    metrics_token: SecretStr | None = None
    # At capacity (every node of the model busy), how long a request waits for a free slot
    # (0: no wait, 503 at once), and how many may wait per model (past it: 503 at once).
    capacity_wait_seconds: float = Field(default=10.0, ge=0, le=300)
    capacity_queue_limit: int = Field(default=100, ge=1, le=100_000)

    @field_validator(
        "redis_url", "google_client_id", "google_client_secret", "metrics_token", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme, separator, rest = value.partition("://")
        driver = _DATABASE_DRIVERS.get(scheme.lower())
        if not separator or driver is None:
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return f"{driver}://{rest}"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("google_discovery_url")
    @classmethod
    def _discovery_address(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("public_url")
    @classmethod
    def _web_address(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        """A JSON list or a comma-separated list; each an exact origin, or `*`."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if not isinstance(value, list | tuple):
            return value
        origins = [str(origin).strip() for origin in value if str(origin).strip()]
        for origin in origins:
            parts = urlsplit(origin)
            exact = f"{parts.scheme}://{parts.netloc}" == origin and parts.hostname
            if origin != "*" and (parts.scheme not in ("http", "https") or not exact):
                raise ValueError(
                    f"{origin!r} is not an origin (scheme://host[:port], no path or slash)"
                )
        return tuple(origins)

    @field_validator(
        "login_limit_pair",
        "login_limit_account",
        "login_limit_address",
        "signup_limit_address",
        "market_limit_address",
        "review_limit_user",
        "enrollment_limit_address",
        "tunnel_limit_node",
    )
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            limits.parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit such as '20/hour'") from None
        return value

    @field_validator("encryption_keys")
    @classmethod
    def _keyring(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            Keyring.parse(value.get_secret_value())  # its ValueError names what is wrong
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secrets_in_production(self) -> Settings:
        if self.env == "production":
            for name in _SECRET_FIELDS:
                value = getattr(self, name)
                if value is None or value.get_secret_value().strip().lower() in _PLACEHOLDERS:
                    raise ValueError(f"INFER_{name.upper()} must be set in production")
            for name in ("secret_key", "lookup_key"):
                if len(getattr(self, name).get_secret_value()) < _MIN_SECRET_LENGTH:
                    raise ValueError(
                        f"INFER_{name.upper()} must be at least {_MIN_SECRET_LENGTH} characters"
                    )
            if self.google_client_id and self.google_client_secret is None:
                raise ValueError("INFER_GOOGLE_CLIENT_SECRET must be set with a client id")
            if self.google_client_id and urlsplit(self.google_discovery_url).scheme != "https":
                raise ValueError("INFER_GOOGLE_DISCOVERY_URL must be https in production")
        return self

    @model_validator(mode="after")
    def _holds_outlive_requests(self) -> Settings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("INFER_DEFAULT_MAX_TOKENS must not exceed INFER_MAX_TOKENS_LIMIT")
        if self.hold_ttl_seconds < self.upstream_total_timeout + HOLD_MARGIN_SECONDS:
            raise ValueError(
                "INFER_HOLD_TTL_SECONDS must exceed INFER_UPSTREAM_TOTAL_TIMEOUT by at least "
                f"{HOLD_MARGIN_SECONDS} s: a hold must outlive its request"
            )
        return self

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def google_enabled(self) -> bool:
        return self.google_client_id is not None

    @property
    def secure_cookies(self) -> bool:
        """Cookies are Secure only when the platform is served over https."""
        return urlsplit(self.public_url).scheme == "https"

    @property
    def public_origin(self) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    def secret(self, name: Literal["secret_key", "lookup_key", "encryption_keys"]) -> str:
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"INFER_{name.upper()} is not configured")
        return str(value.get_secret_value())


def _new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def with_development_secrets(settings: Settings) -> Settings:
    """Fill missing secrets from the local secrets file, creating it (mode 0600) once."""
    missing = [name for name in _SECRET_FIELDS if getattr(settings, name) is None]
    if not missing:
        return settings
    path = settings.secrets_file
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    generated = {
        "secret_key": stored.get("secret_key") or _new_key(),
        "lookup_key": stored.get("lookup_key") or _new_key(),
        "encryption_keys": stored.get("encryption_keys") or f"1:{_new_key()}",
    }
    if generated != stored:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(generated, handle)
    return settings.model_copy(update={name: SecretStr(generated[name]) for name in missing})


def load_settings() -> Settings:
    """Read the environment once; in development, complete it with local secrets."""
    settings = Settings()
    if not settings.is_production:
        settings = with_development_secrets(settings)
    return settings
