"""Goal conversions: `run_conversions`.

Revision ID: 0010
Revises: 0009

One row per run and event goal it reached (`engine.conversions`, issue #19): written as the
goal event is stored, so a journey's conversions are counted from rows, never searched for
at query time. The key (run_id, goal) keeps one conversion per run per goal and is the
index a run's conversions are read by. Runs of before this revision have none: their goal
events were stored before anything recorded them. Frozen: change the schema in a new
revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "run_conversions",
        sa.Column("run_id", sa.String(length=100), nullable=False),
        sa.Column("goal", sa.String(length=250), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("message_id", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "goal"),
    )


def downgrade() -> None:
    op.drop_table("run_conversions")
