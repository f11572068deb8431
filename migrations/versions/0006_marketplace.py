"""the storefront: provider descriptions, verified reviews with replies, measured figures

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 23:20:00

`users.description` is a provider's own words. A review keeps the request that entitles
it (`request_id`) and the provider's one reply. `market_figures` holds the figures a
background rollup measures per provider (and per provider and model) over each period,
so that a storefront page never scans usage records. `leases` lets one replica at a time
run such a periodic job.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("description", sa.String(length=500), nullable=True))
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("reply", sa.String(length=2000), nullable=True))
        batch.add_column(sa.Column("replied_at", TIMESTAMP, nullable=True))
    op.create_table(
        "market_figures",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("operator_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("uptime", sa.Float(), nullable=True),
        sa.Column("ttft_ms_p50", sa.Float(), nullable=True),
        sa.Column("ttft_ms_p90", sa.Float(), nullable=True),
        sa.Column("tokens_per_second_p50", sa.Float(), nullable=True),
        sa.Column("tokens_per_second_p90", sa.Float(), nullable=True),
        sa.Column("success_rate", sa.Float(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["operator_id"],
            ["users.id"],
            name="fk_market_figures_operator_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_market_figures"),
        sa.UniqueConstraint("operator_id", "model", "period", name="uq_market_figures_operator_id"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("market_figures")
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("replied_at")
        batch.drop_column("reply")
        batch.drop_column("request_id")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("description")
