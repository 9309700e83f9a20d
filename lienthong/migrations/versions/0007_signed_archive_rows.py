"""Archive rows are signed with the seal key (issue #6's retention, found in review).

An ``exchange_archive`` row is what lets the records of its seals be absent from the database.
Unsigned, a row forged for a seal whose records were deleted, naming a bundle that is not at its
path (as if moved off-site), turned the deletion into a warning of ``audit verify``. The row now
carries the fingerprint of the key that signed it and an Ed25519 signature over its fields but
the path (``lienthong.audit.records.archive_body``). Rows written before have neither: verify
accepts them only with their bundle at its path (checked against the leaves there).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchange_archive") as batch:
        batch.add_column(sa.Column("key_fingerprint", sa.String(64), nullable=True))
        batch.add_column(sa.Column("signature", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exchange_archive") as batch:
        batch.drop_column("signature")
        batch.drop_column("key_fingerprint")
