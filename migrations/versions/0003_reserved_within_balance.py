"""a user's reserved funds never exceed the balance

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 03:10:00

Every writer already keeps it (holds reserve only what is available, debits never go
below what stays reserved); the constraint lets one statement settle a whole batch and
roll back when a debit would break it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "user_reserved_within_balance"
CONDITION = "kind <> 'user' OR balance >= reserved"


def upgrade() -> None:
    # SQLite cannot add a constraint in place: batch mode copies the table.
    with op.batch_alter_table("ledger_accounts") as batch:
        batch.create_check_constraint(NAME, CONDITION)


def downgrade() -> None:
    with op.batch_alter_table("ledger_accounts") as batch:
        batch.drop_constraint(NAME, type_="check")
