"""what an operator declares of a model: its capabilities and context length

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-22 09:00:00

Routing takes these over what the runtime says (the health monitor never writes them);
OpenAI-compatible runtimes say nothing of tools, vision or logprobs. Both nullable: null
means nothing declared.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("declared_capabilities", sa.String(length=200)),
    ("declared_context_length", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("node_models") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node_models") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
