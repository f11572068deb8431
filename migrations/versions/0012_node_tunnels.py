"""node tunnels: which platform process holds a node's tunnel now

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-23 09:00:00

A node registered for a tunnel has no public endpoint; requests reach its runtime
through the agent's WebSocket, held by one platform process. This row says which one,
and how the others reach it (the replica hop), while the tunnel is connected.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_tunnels",
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("session", sa.Uuid(), nullable=False),
        sa.Column("replica", sa.String(length=64), nullable=False),
        sa.Column("replica_url", sa.String(length=300), nullable=True),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name="fk_node_tunnels_node_id_nodes", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("node_id", name="pk_node_tunnels"),
    )


def downgrade() -> None:
    op.drop_table("node_tunnels")
