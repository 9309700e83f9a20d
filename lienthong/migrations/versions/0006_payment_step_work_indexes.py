"""The fee and ledger steps read their own work, not every finished payment (issue #8).

``ix_payment_txn_fees_work`` (onestop_state, platform_status, reference) and
``ix_payment_txn_ledger_work`` (ledger_state, platform_status, reference): each step's query
(state todo or held, and finished or paid) was answered through ``ix_payment_txn_platform``,
reading every finished payment ever (about 90 ms per step at 400,000 payments on SQLite, 60 ms on
PostgreSQL, growing with the years); through these, about 1 ms.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_payment_txn_fees_work", "payment_txn", ["onestop_state", "platform_status", "reference"],
                    unique=False)
    op.create_index("ix_payment_txn_ledger_work", "payment_txn", ["ledger_state", "platform_status", "reference"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_payment_txn_ledger_work", table_name="payment_txn")
    op.drop_index("ix_payment_txn_fees_work", table_name="payment_txn")
