"""SQLModel tables: the whole data model of INFER. Money is integer micro-USD."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores UTC and always returns timezone-aware datetimes (SQLite keeps none)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StrEnumType(sa.types.TypeDecorator[enum.StrEnum]):
    """A string column that reads back as its StrEnum (no database enum type to migrate)."""

    impl = sa.String(16)
    cache_ok = True

    def __init__(self, enum_class: type[enum.StrEnum]) -> None:
        super().__init__()
        self.enum_class = enum_class

    def process_bind_param(self, value: enum.StrEnum | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum_class(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> enum.StrEnum | None:
        return None if value is None else self.enum_class(value)


def _time(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _created() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _money(default: int = 0) -> Any:
    return Field(default=default, sa_type=sa.BigInteger, nullable=False)


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class Runtime(enum.StrEnum):
    OLLAMA = "ollama"
    EXO = "exo"
    OPENAI = "openai"


class NodeStatus(enum.StrEnum):
    PENDING = "pending"
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    DISABLED = "disabled"
    # Never stored: what a node's status reads while its operator has paused it.
    PAUSED = "paused"


class ApiKeyScope(enum.StrEnum):
    """What an API key may do: call the gateway, manage its owner's nodes, or the rest."""

    GATEWAY = "gateway"
    NODES = "nodes"
    ACCOUNT = "account"


ALL_SCOPES = frozenset(ApiKeyScope)
ALL_SCOPES_TEXT = ",".join(ApiKeyScope)  # "gateway,nodes,account"


class BudgetReset(enum.StrEnum):
    """When a key's spend count starts again (UTC; weeks start on Monday)."""

    NEVER = "never"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class UsageStatus(enum.StrEnum):
    """How a completion ended, as its usage record says (docs/billing.md: who pays what)."""

    COMPLETED = "completed"  # the whole answer was delivered
    CLIENT_DISCONNECTED = "client_disconnected"  # the buyer hung up
    CLIENT_TIMEOUT = "client_timeout"  # the buyer stopped reading, or outlived the deadline
    UPSTREAM_ERROR = "upstream_error"  # the node failed or broke off


class AccountKind(enum.StrEnum):
    USER = "user"
    FEES = "platform_fees"
    GRANTS = "grants"


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=254, unique=True, index=True)
    password_hash: str | None = Field(default=None, max_length=255)
    google_subject: str | None = Field(default=None, max_length=255, unique=True)
    role: Role = Field(default=Role.USER, sa_type=StrEnumType(Role))
    created_at: datetime = _created()
    password_changed_at: datetime | None = _time(nullable=True)
    # What buyers see of a provider, chosen by its operator; the key (lower-cased) is unique.
    display_name: str | None = Field(default=None, max_length=32)
    display_name_key: str | None = Field(default=None, max_length=32, unique=True)
    # The provider profile's own words, shown on its storefront page.
    description: str | None = Field(default=None, max_length=500)


class Session(SQLModel, table=True):
    """Server-side record of one signed session token (its `jti`)."""

    __tablename__ = "sessions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    created_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    revoked_at: datetime | None = _time(nullable=True)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=100)
    prefix: str = Field(max_length=16)
    digest: str = Field(max_length=64, unique=True)
    digest_version: int = Field(default=1)
    ciphertext: bytes = Field(sa_type=sa.LargeBinary)
    key_version: int
    created_at: datetime = _created()
    last_used_at: datetime | None = _time(nullable=True)
    expires_at: datetime | None = _time(nullable=True)
    revoked_at: datetime | None = _time(nullable=True)
    rotated_from_id: uuid.UUID | None = Field(default=None, foreign_key="api_keys.id")
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    # Comma-separated ApiKeyScope values (infer/keys/scopes.py reads and writes them).
    scopes: str = Field(
        default=ALL_SCOPES_TEXT,
        max_length=64,
        sa_column_kwargs={"server_default": ALL_SCOPES_TEXT},
    )
    # The models this key may call (a JSON list of names); null: any model.
    allowed_models: list[str] | None = Field(default=None, sa_type=sa.JSON, nullable=True)


class KeyBudget(SQLModel, table=True):
    """A key's spend limit and its count for the current period (infer/keys/budgets.py).

    Holds reserve against it and settlements move what they charged into `spent`, in the
    same statements that move the account's balance, so a key never overspends.
    """

    __tablename__ = "key_budgets"

    api_key_id: uuid.UUID = Field(primary_key=True, foreign_key="api_keys.id", ondelete="CASCADE")
    spend_limit: int = _money()
    reset: BudgetReset = Field(sa_type=StrEnumType(BudgetReset), nullable=False)
    period_start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    spent: int = _money()
    reserved: int = _money()


class EnrollmentCode(SQLModel, table=True):
    """A one-time code an operator hands to a new node; redeemed for a node-scoped key."""

    __tablename__ = "enrollment_codes"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    operator_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    digest: str = Field(max_length=64, unique=True)  # HMAC of the code; the code is not kept
    created_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    used_at: datetime | None = _time(nullable=True)
    api_key_id: uuid.UUID | None = Field(
        default=None, foreign_key="api_keys.id", ondelete="SET NULL"
    )


class Node(SQLModel, table=True):
    __tablename__ = "nodes"
    __table_args__ = (sa.UniqueConstraint("operator_id", "name"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    operator_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=100)
    runtime: Runtime = Field(sa_type=StrEnumType(Runtime))
    endpoint: str = Field(max_length=2048)
    token_ciphertext: bytes | None = Field(default=None, sa_type=sa.LargeBinary)
    token_key_version: int | None = None
    gpu: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    status: NodeStatus = Field(
        default=NodeStatus.PENDING, sa_type=StrEnumType(NodeStatus), index=True
    )
    status_reason: str | None = Field(default=None, max_length=500)
    # Its operator stopped new requests (drain); health checks go on and set `status`.
    paused: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    # What the last check left out of the runtime's model list (too many, bad names).
    models_note: str | None = Field(default=None, max_length=500)
    capacity: int = Field(default=4)
    consecutive_failures: int = Field(default=0)
    consecutive_successes: int = Field(default=0)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_second: float | None = None
    last_checked_at: datetime | None = _time(nullable=True)
    next_check_at: datetime | None = _time(nullable=True, index=True)
    created_at: datetime = _created()
    updated_at: datetime = _created()


class NodeTunnel(SQLModel, table=True):
    """Where a node's tunnel is connected now: which platform process holds it."""

    __tablename__ = "node_tunnels"

    node_id: uuid.UUID = Field(foreign_key="nodes.id", primary_key=True, ondelete="CASCADE")
    session: uuid.UUID  # the connection; a newer one replaces the row, an older one's end keeps it
    replica: str = Field(max_length=64)  # the process that holds the WebSocket
    # How other processes reach that one for a request (its replica hop); null: they cannot.
    replica_url: str | None = Field(default=None, max_length=300)
    connected_at: datetime = _created()


class NodeModel(SQLModel, table=True):
    __tablename__ = "node_models"
    __table_args__ = (sa.UniqueConstraint("node_id", "model"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    node_id: uuid.UUID = Field(foreign_key="nodes.id", index=True, ondelete="CASCADE")
    model: str = Field(max_length=200, index=True)
    available: bool = Field(default=False)
    loaded: bool = Field(default=False)
    input_price_per_million: int = _money()
    output_price_per_million: int = _money()
    # When the runtime last offered it (or it was priced); absent long enough, it is pruned.
    seen_at: datetime = _created()
    # What the runtime says of the model (null when unknown); refreshed daily by the monitor.
    context_length: int | None = None
    parameter_size: str | None = Field(default=None, max_length=32)
    quantization: str | None = Field(default=None, max_length=32)
    family: str | None = Field(default=None, max_length=64)
    capabilities: str | None = Field(default=None, max_length=200)  # comma-separated
    details_at: datetime | None = _time(nullable=True)
    # What its operator declared (routing/capabilities.py): wins over the above, and the
    # monitor never writes it. Null: nothing declared.
    declared_capabilities: str | None = Field(default=None, max_length=200)
    declared_context_length: int | None = None


class HealthCheck(SQLModel, table=True):
    __tablename__ = "health_checks"
    __table_args__ = (sa.Index("ix_health_checks_node_time", "node_id", "checked_at"),)

    id: int | None = Field(default=None, primary_key=True)
    node_id: uuid.UUID = Field(foreign_key="nodes.id", ondelete="CASCADE")
    checked_at: datetime = _created()
    ok: bool
    latency_ms: float | None = None
    model_count: int = Field(default=0)
    error: str | None = Field(default=None, max_length=500)


class NodeHealthRollup(SQLModel, table=True):
    """One node's health checks of one UTC hour, summed as they are recorded."""

    __tablename__ = "node_health_rollups"

    node_id: uuid.UUID = Field(foreign_key="nodes.id", primary_key=True, ondelete="CASCADE")
    bucket_start: datetime = Field(sa_type=UTCDateTime, primary_key=True, index=True)
    checks: int = Field(default=0)
    ok_checks: int = Field(default=0)
    latency_ms_sum: float = Field(default=0.0)
    latency_count: int = Field(default=0)  # checks that measured a latency (the good ones)
    latency_max: float | None = None


class LedgerAccount(SQLModel, table=True):
    """An account of the ledger; `balance` caches the sum of its entries."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (
        sa.CheckConstraint("kind <> 'user' OR balance >= 0", name="user_balance_not_negative"),
        sa.CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        sa.CheckConstraint(
            "kind <> 'user' OR balance >= reserved", name="user_reserved_within_balance"
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=80, unique=True)
    kind: AccountKind = Field(sa_type=StrEnumType(AccountKind))
    user_id: uuid.UUID | None = Field(
        default=None, foreign_key="users.id", unique=True, ondelete="RESTRICT"
    )
    balance: int = _money()
    reserved: int = _money()
    created_at: datetime = _created()


class LedgerTransaction(SQLModel, table=True):
    __tablename__ = "ledger_transactions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    kind: str = Field(max_length=32, index=True)
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True)
    memo: str | None = Field(default=None, max_length=500)
    actor_id: uuid.UUID | None = Field(default=None, foreign_key="users.id")
    created_at: datetime = _created()


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger_entries"

    id: int | None = Field(default=None, primary_key=True, sa_type=_BIG_ID)
    transaction_id: uuid.UUID = Field(foreign_key="ledger_transactions.id", index=True)
    account_id: uuid.UUID = Field(foreign_key="ledger_accounts.id", index=True)
    amount: int = _money()


class Hold(SQLModel, table=True):
    """Funds reserved on an account while a request runs; released or expired."""

    __tablename__ = "holds"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    account_id: uuid.UUID = Field(foreign_key="ledger_accounts.id", index=True)
    amount: int = _money()
    request_id: str = Field(max_length=64, unique=True)
    created_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    released_at: datetime | None = _time(nullable=True)
    # The key whose budget this hold reserves against (null: a key without a budget).
    budget_key_id: uuid.UUID | None = Field(default=None, nullable=True)


class UsageRecord(SQLModel, table=True):
    __tablename__ = "usage_records"
    __table_args__ = (
        sa.Index("ix_usage_buyer_time", "buyer_id", "created_at"),
        sa.Index("ix_usage_operator_time", "operator_id", "created_at"),
        sa.Index("ix_usage_node_time", "node_id", "created_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    request_id: str = Field(max_length=64, unique=True)
    buyer_id: uuid.UUID = Field(foreign_key="users.id")
    api_key_id: uuid.UUID | None = Field(default=None, foreign_key="api_keys.id")
    node_id: uuid.UUID | None = Field(default=None, foreign_key="nodes.id", ondelete="SET NULL")
    operator_id: uuid.UUID | None = Field(default=None, foreign_key="users.id")
    model: str = Field(max_length=200)
    prompt_tokens: int = Field(default=0)
    completion_tokens: int = Field(default=0)
    estimated: bool = Field(default=False)
    cost: int = _money()
    operator_earning: int = _money()
    platform_fee: int = _money()
    status: str = Field(max_length=32)
    ttft_ms: float | None = None
    duration_ms: float | None = None
    transaction_id: uuid.UUID | None = Field(default=None, foreign_key="ledger_transactions.id")
    created_at: datetime = _created()


class Review(SQLModel, table=True):
    __tablename__ = "reviews"
    __table_args__ = (
        sa.UniqueConstraint("provider_id", "reviewer_id"),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name="rating_range"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    provider_id: uuid.UUID = Field(foreign_key="users.id", index=True)
    reviewer_id: uuid.UUID = Field(foreign_key="users.id", index=True)
    rating: int
    comment: str | None = Field(default=None, max_length=2000)
    created_at: datetime = _created()
    updated_at: datetime = _created()
    # The settled request that entitles the reviewer (verified purchase).
    request_id: str | None = Field(default=None, max_length=64)
    # The provider's one answer to the review.
    reply: str | None = Field(default=None, max_length=2000)
    replied_at: datetime | None = _time(nullable=True)


class MarketFigures(SQLModel, table=True):
    """Measured figures of a provider (model '' for all its models) over one period,
    kept by a background rollup so that the storefront never scans usage records.
    Null figures mean "not enough data".
    """

    __tablename__ = "market_figures"
    __table_args__ = (sa.UniqueConstraint("operator_id", "model", "period"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=_BIG_ID)
    operator_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE")
    model: str = Field(default="", max_length=200)
    period: str = Field(max_length=8)  # "30m", "1h", "24h", "7d"
    uptime: float | None = None
    ttft_ms_p50: float | None = None
    ttft_ms_p90: float | None = None
    tokens_per_second_p50: float | None = None
    tokens_per_second_p90: float | None = None
    success_rate: float | None = None
    requests: int = Field(default=0, sa_type=sa.BigInteger)
    tokens: int = Field(default=0, sa_type=sa.BigInteger)
    computed_at: datetime = _created()


class Lease(SQLModel, table=True):
    """A periodic job one replica at a time runs: whoever holds the lease until it expires."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class AuditLog(SQLModel, table=True):
    """Append-only record of security-relevant actions."""

    __tablename__ = "audit_logs"
    __table_args__ = (sa.Index("ix_audit_actor_time", "actor_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=_BIG_ID)
    actor_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    action: str = Field(max_length=64, index=True)
    target: str | None = Field(default=None, max_length=200)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)
    details: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    created_at: datetime = _created()


class Notification(SQLModel, table=True):
    __tablename__ = "notifications"
    __table_args__ = (sa.Index("ix_notifications_user_time", "user_id", "created_at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE")
    node_id: uuid.UUID | None = Field(default=None, foreign_key="nodes.id", ondelete="SET NULL")
    kind: str = Field(max_length=32)
    message: str = Field(max_length=500)
    created_at: datetime = _created()
    read_at: datetime | None = _time(nullable=True)
