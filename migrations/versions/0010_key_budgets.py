"""Key budgets: spend limits per period, model allow-lists, holds that count against them

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-21 09:00:00

`key_budgets` keeps a key's spend limit, how it resets, and what the current period has
spent and holds reserved. `api_keys.allowed_models` lists the models a key may call.
`holds.budget_key_id` names the budget a hold reserves against, so that settling or
expiring it gives the reservation back.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "key_budgets",
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("spend_limit", sa.BigInteger(), nullable=False),
        sa.Column("reset", sa.String(length=16), nullable=False),
        sa.Column("period_start", TIMESTAMP, nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name="fk_key_budgets_api_key_id_api_keys",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_key_id", name="pk_key_budgets"),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("allowed_models", sa.JSON(), nullable=True))
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("budget_key_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("budget_key_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("allowed_models")
    op.drop_table("key_budgets")
