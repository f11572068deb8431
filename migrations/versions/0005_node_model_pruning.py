"""models gone from a runtime are pruned; a note says what a runtime's list lost

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 12:00:00

`node_models.seen_at` is when the runtime last offered the model (or its operator priced
it); a model absent for longer than the monitor's retention is deleted. Rows that exist
already count as seen now. `nodes.models_note` tells the operator which of the runtime's
models were left out (past the per-node limit, or names outside the allowed characters).
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("models_note", sa.String(length=500), nullable=True))
    op.add_column("node_models", sa.Column("seen_at", TIMESTAMP, nullable=True))
    node_models = sa.table("node_models", sa.column("seen_at", TIMESTAMP))
    op.execute(node_models.update().values(seen_at=datetime.now(UTC)))
    # SQLite cannot make a column NOT NULL in place: batch mode copies the table.
    with op.batch_alter_table("node_models") as batch:
        batch.alter_column("seen_at", existing_type=TIMESTAMP, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("node_models") as batch:
        batch.drop_column("seen_at")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("models_note")
