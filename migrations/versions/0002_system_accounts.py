"""system ledger accounts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 00:40:00
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_accounts = sa.table(
    "ledger_accounts",
    sa.column("id", sa.Uuid()),
    sa.column("name", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("balance", sa.BigInteger()),
    sa.column("reserved", sa.BigInteger()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_SYSTEM = [
    (uuid.UUID("00000000-0000-4000-8000-000000000001"), "platform:fees", "platform_fees"),
    (uuid.UUID("00000000-0000-4000-8000-000000000002"), "platform:grants", "grants"),
]


def upgrade() -> None:
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)
    op.bulk_insert(
        _accounts,
        [
            {"id": i, "name": n, "kind": k, "balance": 0, "reserved": 0, "created_at": now}
            for i, n, k in _SYSTEM
        ],
    )


def downgrade() -> None:
    op.execute(_accounts.delete().where(_accounts.c.id.in_([i for i, _, _ in _SYSTEM])))
