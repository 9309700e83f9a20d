"""A payment run's cost follows its new payments, not the backlog (issue #8).

``payment_txn.first_asked_at`` and ``payment_txn.next_ask_at``, and ``ix_payment_txn_ask``
(next_ask_at, reference): collect reads the payments due to be asked through it, so a run's
QUERYs follow the new and young requests, not the years of abandoned ones.
``ix_payment_txn_updated`` (updated_at): a reconciliation between full passes checks the payments
changed since the last one. Payments left unfinished by an earlier revision (pending, unknown, or
paid without their receipt) are due at once; their asking time starts at their next ask.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment_txn") as batch:
        batch.add_column(sa.Column("first_asked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("next_ask_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE payment_txn SET next_ask_at = updated_at WHERE platform_status IN ('pending', 'unknown') "
               "OR (platform_status = 'paid' AND receipt_sha256 IS NULL)")
    op.create_index("ix_payment_txn_ask", "payment_txn", ["next_ask_at", "reference"], unique=False)
    op.create_index("ix_payment_txn_updated", "payment_txn", ["updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_payment_txn_updated", table_name="payment_txn")
    op.drop_index("ix_payment_txn_ask", table_name="payment_txn")
    with op.batch_alter_table("payment_txn") as batch:
        batch.drop_column("next_ask_at")
        batch.drop_column("first_asked_at")
