"""The hash-chained audit log: `audit`, its head `audit_head`, `audit_checkpoints`.

Revision ID: 0007
Revises: 0006

`audit` is append-only: one entry per deploy, activation, run started or skipped,
decision, review action, send outcome and preference change, each hashed with the one
before it (`engine.audit`). `audit_head` holds the last entry's sequence number and hash
in one row, created here at 0 and the genesis hash; every append updates it first, so
appends take turns. `audit_checkpoints` keeps the signed checkpoints.

Triggers refuse UPDATE and DELETE on `audit` rows, on PostgreSQL and on SQLite alike. They
stop the application and a mistaken statement, not the database's owner, who can drop
them: that is what the chain and the signed checkpoints are for. Operators on PostgreSQL
should also run the application as a role without those rights
(``REVOKE UPDATE, DELETE ON audit FROM app_role``). Frozen: change the schema in a new
revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

GENESIS = "0" * 64

_SQLITE_TRIGGERS = (
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END",
)
_POSTGRESQL_TRIGGERS = (
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit entries are append-only'; END $$",
    "CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
)


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("time", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("subject", sa.String(length=400), nullable=False),
        sa.Column("customer", sa.String(length=200), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.String(length=400), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("ref"),
    )
    op.create_index("ix_audit_time", "audit", ["time"])
    op.create_index("ix_audit_customer", "audit", ["customer"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("time", sa.String(length=32), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_checkpoints_seq", "audit_checkpoints", ["seq"])
    dialect = op.get_bind().dialect.name
    triggers = _POSTGRESQL_TRIGGERS if dialect == "postgresql" else _SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_no_update_delete ON audit")
        op.execute("DROP FUNCTION IF EXISTS audit_append_only()")
    op.drop_index("ix_audit_checkpoints_seq", table_name="audit_checkpoints")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_head")
    op.drop_index("ix_audit_customer", table_name="audit")
    op.drop_index("ix_audit_time", table_name="audit")
    op.drop_table("audit")
