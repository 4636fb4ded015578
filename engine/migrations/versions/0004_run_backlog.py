"""The `run_backlog` table: a run's queue parked for its next generation.

Revision ID: 0004
Revises: 0003

A run that continues as new with more queued events than its input can carry by
reference parks their message ids here, by (run, generation, position), and carries only
how many there are. Frozen: change the schema in a new revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "run_backlog",
        sa.Column("run_id", sa.String(length=100), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "generation", "position"),
    )


def downgrade() -> None:
    op.drop_table("run_backlog")
