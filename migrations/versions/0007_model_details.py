"""what a runtime says of each model it offers: context length, size, quantization, family

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 23:30:00

The health monitor reads them (Ollama's /api/show, an OpenAI-style /v1/models) when a
model is first seen or its details are older than a day; the catalogue shows them.
All nullable: a runtime that does not say leaves them unknown.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("context_length", sa.Integer()),
    ("parameter_size", sa.String(length=32)),
    ("quantization", sa.String(length=32)),
    ("family", sa.String(length=64)),
    ("capabilities", sa.String(length=200)),
    ("details_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("node_models") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node_models") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
