"""health history as hourly rollups per node plus each node's last raw checks

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 09:00:00

`node_health_rollups` sums each node's checks per UTC hour (checks, good ones, latency);
the uptime figures read it. The checks already kept are rolled up into it, then each
node keeps only its newest 100 raw checks (the default of INFER_HEALTH_RAW_CHECKS).
Downgrading drops the rollups; the raw checks trimmed away are not brought back.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
RAW_CHECKS_KEPT = 100

# SQLAlchemy keeps SQLite timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text in UTC.
HOUR = {
    "postgresql": "date_trunc('hour', checked_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    "sqlite": "strftime('%Y-%m-%d %H:00:00.000000', checked_at)",
}
CHECKS = sa.table(
    "health_checks",
    sa.column("id"),
    sa.column("node_id"),
    sa.column("checked_at"),
    sa.column("ok"),
    sa.column("latency_ms"),
)
ROLLUP_COLUMNS = (
    "node_id",
    "bucket_start",
    "checks",
    "ok_checks",
    "latency_ms_sum",
    "latency_count",
    "latency_max",
)
ROLLUPS = sa.table("node_health_rollups", *map(sa.column, ROLLUP_COLUMNS))


def _roll_up_existing_checks() -> None:
    hour = sa.literal_column(HOUR[op.get_bind().dialect.name])
    latency = CHECKS.c.latency_ms
    sums = sa.select(
        CHECKS.c.node_id,
        hour,
        sa.func.count(),
        sa.func.sum(sa.case((CHECKS.c.ok, 1), else_=0)),
        sa.func.coalesce(sa.func.sum(latency), 0),
        sa.func.count(latency),
        sa.func.max(latency),
    ).group_by(CHECKS.c.node_id, hour)
    op.execute(ROLLUPS.insert().from_select(list(ROLLUP_COLUMNS), sums))


def _keep_newest_checks() -> None:
    newest = (
        sa.func.row_number()
        .over(partition_by=CHECKS.c.node_id, order_by=CHECKS.c.checked_at.desc())
        .label("newest")
    )
    ranked = sa.select(CHECKS.c.id, newest).subquery()
    old = sa.select(ranked.c.id).where(ranked.c.newest > RAW_CHECKS_KEPT)
    op.execute(CHECKS.delete().where(CHECKS.c.id.in_(old)))


def upgrade() -> None:
    op.create_table(
        "node_health_rollups",
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("bucket_start", TIMESTAMP, nullable=False),
        sa.Column("checks", sa.Integer(), nullable=False),
        sa.Column("ok_checks", sa.Integer(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.Column("latency_count", sa.Integer(), nullable=False),
        sa.Column("latency_max", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name="fk_node_health_rollups_node_id_nodes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("node_id", "bucket_start", name="pk_node_health_rollups"),
    )
    op.create_index("ix_node_health_rollups_bucket_start", "node_health_rollups", ["bucket_start"])
    _roll_up_existing_checks()
    _keep_newest_checks()


def downgrade() -> None:
    op.drop_index("ix_node_health_rollups_bucket_start", table_name="node_health_rollups")
    op.drop_table("node_health_rollups")
