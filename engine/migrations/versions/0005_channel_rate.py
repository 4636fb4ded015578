"""The `channel_rates` table: a channel's send rate and its token bucket.

Revision ID: 0005
Revises: 0004

One row per channel, shared by every worker: the rate the catalogue gives it (sends per
second and the burst a full bucket lets out, written by `journeys deploy`) and the bucket
itself (tokens at `updated_at`). A send takes a token in one short transaction
(`channels.pacing`). A channel without a row sends at its default rate; the row is made
on its first send. Frozen: change the schema in a new revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "channel_rates",
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("per_second", sa.Float(), nullable=False),
        sa.Column("burst", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel"),
    )


def downgrade() -> None:
    op.drop_table("channel_rates")
