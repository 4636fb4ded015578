"""The `step_rollup` table, a journey's step numbers by entry hour; the indexes the
numbers are read by.

Revision ID: 0011
Revises: 0010

``step_rollup`` holds, per journey, version, UTC hour of entry, step, metric and bucket,
a count (`engine.step_rollup`): runs that reached the step, moves from it to the next
step, time spent there (log-spaced buckets), send results. The engine keeps it in the
transaction that writes path rows; this revision fills it from the `run_path` rows already
stored (every path read once, by run: on a large table run `journeys db upgrade` at a
quiet hour). ``ix_runs_journey_status`` lets a journey's runs be counted by status, step
and outcome from the index alone, and ``ix_step_rollup_sum`` the counters be summed so; ``ix_run_path_run_step`` answers "had this run
reached this step before" when a path is written.

The fill uses `engine.step_rollup.backfill`, the counting the engine itself does, so the
two cannot disagree. Frozen otherwise: change the schema in a new revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "step_rollup",
        sa.Column("journey_id", sa.String(length=100), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("step", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("bucket", sa.String(length=200), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("journey_id", "hour", "version", "step", "metric", "bucket"),
    )
    op.create_index(
        "ix_step_rollup_sum",
        "step_rollup",
        ["journey_id", "step", "metric", "bucket", "hour", "version", "count"],
    )
    op.create_index(
        "ix_runs_journey_status",
        "runs",
        ["journey_id", "status", "step", "outcome", "holdout", "version", "started_at"],
    )
    op.create_index("ix_run_path_run_step", "run_path", ["run_id", "step", "seq"])
    from engine.step_rollup import backfill

    backfill(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_run_path_run_step", table_name="run_path")
    op.drop_index("ix_runs_journey_status", table_name="runs")
    op.drop_index("ix_step_rollup_sum", table_name="step_rollup")
    op.drop_table("step_rollup")
