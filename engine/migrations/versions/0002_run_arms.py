"""The `run_arms` table: the arm each run was put in at each split, to list runs by arm.

Revision ID: 0002
Revises: 0001

Filled from the split entries of the paths the `runs` table already holds, so runs started
before it are listed by their arm too. Frozen: change the schema in a new revision.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_RUNS = sa.table("runs", sa.column("run_id", sa.String()), sa.column("path", sa.JSON()))
_BATCH = 1000


def upgrade() -> None:
    arms = op.create_table(
        "run_arms",
        sa.Column("run_id", sa.String(length=100), nullable=False),
        sa.Column("step_id", sa.String(length=100), nullable=False),
        sa.Column("arm", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step_id"),
    )
    op.create_index("ix_run_arms_step_arm", "run_arms", ["step_id", "arm"])
    connection = op.get_bind()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for run_id, path in connection.execute(sa.select(_RUNS.c.run_id, _RUNS.c.path)):
        for entry in path or []:
            arm = (entry.get("detail") or {}).get("arm") if isinstance(entry, dict) else None
            if entry.get("type") == "split" and isinstance(arm, str):
                rows[(run_id, entry["step"])] = {
                    "run_id": run_id,
                    "step_id": entry["step"],
                    "arm": arm,
                }
        if len(rows) >= _BATCH:
            connection.execute(arms.insert(), list(rows.values()))
            rows.clear()
    if rows:
        connection.execute(arms.insert(), list(rows.values()))


def downgrade() -> None:
    op.drop_index("ix_run_arms_step_arm", table_name="run_arms")
    op.drop_table("run_arms")
