"""Conversions in the `step_rollup` counters: their summed ``value``.

Revision ID: 0012
Revises: 0011

`engine.conversion_counts` keeps, with the step numbers, what runs count when they
convert (``conv`` by holdout arm and by split arm, with the summed goal value in the new
``value`` column; ``attr`` per send step and channel), so that a journey's numbers read
counters only (issue #19: 330 ms -> see bench/README.md, with 132,000 runs).
``ix_step_rollup_sum`` is built again with ``value`` so that the sums stay index-only.
This revision fills the counters from the rows already stored (every run read by key, a
page at a time: on a large table run `journeys db upgrade` at a quiet hour), with
`engine.conversion_counts.backfill`, the counting the engine itself does.
Frozen otherwise: change the schema in a new revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None

_SUM = ["journey_id", "step", "metric", "bucket", "hour", "version", "count"]


def upgrade() -> None:
    with op.batch_alter_table("step_rollup") as batch:
        batch.add_column(sa.Column("value", sa.Float(), nullable=False, server_default="0"))
    op.drop_index("ix_step_rollup_sum", table_name="step_rollup")
    op.create_index("ix_step_rollup_sum", "step_rollup", [*_SUM, "value"])
    from engine.conversion_counts import backfill

    backfill(op.get_bind())


def downgrade() -> None:
    op.execute("DELETE FROM step_rollup WHERE metric IN ('conv', 'attr')")
    op.drop_index("ix_step_rollup_sum", table_name="step_rollup")
    op.create_index("ix_step_rollup_sum", "step_rollup", _SUM)
    with op.batch_alter_table("step_rollup") as batch:
        batch.drop_column("value")
