"""a display name providers choose

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:00:00

Buyers see a provider by the name its operator chose, never by anything taken from the
email. `display_name_key` is the name lower-cased: its unique constraint makes names unique
regardless of letter case on both databases, without an expression index. Both are empty
until the operator chooses; until then the platform shows a neutral default.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite cannot add a constraint in place: batch mode copies the table.
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("display_name", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("display_name_key", sa.String(length=32), nullable=True))
        batch.create_unique_constraint("uq_users_display_name_key", ["display_name_key"])


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_display_name_key", type_="unique")
        batch.drop_column("display_name_key")
        batch.drop_column("display_name")
