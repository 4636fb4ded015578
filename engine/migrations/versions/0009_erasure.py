"""Erasure and per-customer history keys: `pseudonym_key`, `customer_keys`,
`erased_customers`.

Revision ID: 0009
Revises: 0008

``pseudonym_key`` holds one random key (made here) for customer pseudonyms when
``JOURNEYS_PSEUDONYM_KEY`` is not set (`engine.pseudonyms`). ``customer_keys`` holds each
customer's history key seed, by pseudonym (`runtime.customer_keys`); erasing a customer
deletes their row. ``erased_customers`` lists erased customers by pseudonym, so their
events start nothing. Audit entries written before this revision name customers by id;
from here on they hold pseudonyms. Frozen: change the schema in a new revision.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    key = op.create_table(
        "pseudonym_key",
        sa.Column("id", sa.String(length=20), primary_key=True),
        sa.Column("key", sa.LargeBinary(), nullable=False),
    )
    op.bulk_insert(key, [{"id": "current", "key": secrets.token_bytes(32)}])
    op.create_table(
        "customer_keys",
        sa.Column("ref", sa.String(length=40), primary_key=True),
        sa.Column("seed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "erased_customers",
        sa.Column("ref", sa.String(length=40), primary_key=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    # The pseudonym key goes with its table: pseudonyms made under it cannot be made
    # again after an upgrade (a new key is made).
    op.drop_table("erased_customers")
    op.drop_table("customer_keys")
    op.drop_table("pseudonym_key")
