"""API key scopes, enrolment codes, paused nodes, usage by node and time

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-14 09:00:00

`api_keys.scopes` lists what a key may do (gateway, nodes, account); keys that exist
keep all three. `enrollment_codes` holds one-time codes (their HMAC only) that a new
node exchanges for a node-scoped key. `nodes.paused` stops new requests to a node while
its health checks go on. `ix_usage_node_time` serves a node's figures of the day.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
ALL_SCOPES = "gateway,nodes,account"


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("scopes", sa.String(length=64), nullable=False, server_default=ALL_SCOPES)
        )
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "enrollment_codes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("operator_id", sa.Uuid(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("used_at", TIMESTAMP, nullable=True),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["operator_id"],
            ["users.id"],
            name="fk_enrollment_codes_operator_id_users",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name="fk_enrollment_codes_api_key_id_api_keys",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_enrollment_codes"),
        sa.UniqueConstraint("digest", name="uq_enrollment_codes_digest"),
    )
    op.create_index("ix_enrollment_codes_operator_id", "enrollment_codes", ["operator_id"])
    op.create_index("ix_usage_node_time", "usage_records", ["node_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_node_time", table_name="usage_records")
    op.drop_index("ix_enrollment_codes_operator_id", table_name="enrollment_codes")
    op.drop_table("enrollment_codes")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("paused")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("scopes")
