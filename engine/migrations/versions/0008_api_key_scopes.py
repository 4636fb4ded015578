"""API key scopes and revocation: `api_keys.scopes` and `api_keys.revoked_at`.

Revision ID: 0008
Revises: 0007

``scopes`` is a comma-separated list of ``ingest``, ``read`` and ``admin``. Keys stored
before this revision get ``admin``: they could do everything before, and the client
commands (`journeys emit`, `runs`, `explain`) use the key `journeys up` made. The column
keeps no server default after the backfill, so a row written without scopes is refused
rather than given ``admin``. ``revoked_at`` is set by `journeys apikey revoke`; a revoked
key is kept (so it is still listed) and refused. Frozen: change the schema in a new
revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("scopes", sa.String(length=100), nullable=False, server_default="admin")
        )
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("scopes", existing_type=sa.String(length=100), server_default=None)


def downgrade() -> None:
    # A revoked key must not come back to life under the older code, which knows no
    # revocation: it is deleted.
    op.execute(sa.text("DELETE FROM api_keys WHERE revoked_at IS NOT NULL"))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("scopes")
