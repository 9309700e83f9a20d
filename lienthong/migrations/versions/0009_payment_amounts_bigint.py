"""Payment amounts as 64-bit integers, found in review of the payment flow.

``payment_txn.request_amount`` and ``platform_amount`` were 32-bit (``INTEGER``): on PostgreSQL a
fee of more than 2 147 483 647 đồng (a land-use fee of a few tỷ đồng; the platform takes amounts of
up to 12 digits and the ledger up to 10^12) could not be kept, and the page of one-stop requests
holding it failed at every run. SQLite's INTEGER already holds 64 bits; the batch rebuild is harmless.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment_txn") as batch:
        batch.alter_column("request_amount", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=True)
        batch.alter_column("platform_amount", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("payment_txn") as batch:
        batch.alter_column("request_amount", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=True)
        batch.alter_column("platform_amount", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=True)
