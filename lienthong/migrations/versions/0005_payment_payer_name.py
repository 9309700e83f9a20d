"""One look-up of a paid payment's dossier per run, not one per step (issue #8).

``payment_txn.payer_name``: the applicant's name, as the fee step's look-up of the dossier at the
one-stop read it; the ledger step takes it from there instead of reading the dossier again, and
erases it once the ledger holds the receipt. Rows from an earlier revision have none: the ledger
step reads their dossier as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment_txn") as batch:
        batch.add_column(sa.Column("payer_name", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_txn") as batch:
        batch.drop_column("payer_name")
