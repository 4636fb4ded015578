"""An index on `runs.started_at`: the console's runs list, newest first.

Revision ID: 0006
Revises: 0005

The runs list (`/console/runs`) pages through runs by ``started_at`` descending, filtered
or not. Without an index every page sorted the whole table (tens of thousands of rows at
scale) to show fifty. With it, a page reads its rows in order and stops. Frozen: change
the schema in a new revision.
"""

from __future__ import annotations

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_runs_started", "runs", ["started_at", "run_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_started", table_name="runs")
