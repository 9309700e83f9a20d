"""GET_BILL names the original transaction's time (contract §4.9), found in review of the stand-ins.

The collect step asked for a receipt with the current time as ThoiGianGD; the platform wants the
ThoiGianGD of the transaction's INIT. ``payment_txn.requested_at`` keeps the one-stop's
``createdAt`` of the payment request (when the one-stop opened it and sent its INIT), for references
that do not carry that time themselves. Rows from an earlier revision get it at the next full
listing of the one-stop's requests.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment_txn") as batch:
        batch.add_column(sa.Column("requested_at", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_txn") as batch:
        batch.drop_column("requested_at")
