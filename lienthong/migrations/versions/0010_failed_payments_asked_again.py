"""Payments recorded failed before collect asked failed ones again are asked again, found in review
of the payment flow's data.

Collect now QUERYs a payment the platform reported failed for ``FAILED_ASK_FOR`` (7 days) after
its failure, as the platform may still complete it (its QUERY backs up a lost callback, contract
§7.11): ``first_asked_at`` and ``next_ask_at`` are set when the failure is recorded. A payment
recorded failed by the code before kept ``next_ask_at`` NULL and was never asked again, so one the
platform completed later was never booked. Such a payment whose row changed within the last
7 days (``updated_at``: when its failure was recorded, or a later step on it) is due at once, its
7 days counted from that ``updated_at``; older ones stay as they are, as the new code would have
left them. A failed payment the new code already gave up within the last 7 days is asked again
for at most 7 more days: a few more read-only QUERYs, rather than a guess that could miss one
the old code recorded. Downgrading leaves the data as it is.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: lienthong.flows.payment_receipts.FAILED_ASK_FOR when this revision was written (a migration
#: keeps its own copy: it must do the same thing whatever the flow's constant becomes)
FAILED_ASK_FOR = timedelta(days=7)


def upgrade() -> None:
    now = datetime.now(UTC)  # aware UTC, as the bus stores times (SQLite: its UTC wall time)
    payment_txn = sa.table(
        "payment_txn",
        sa.column("platform_status", sa.String()),
        sa.column("updated_at", sa.DateTime(timezone=True)),
        sa.column("first_asked_at", sa.DateTime(timezone=True)),
        sa.column("next_ask_at", sa.DateTime(timezone=True)),
    )
    op.execute(
        payment_txn.update()
        .where(payment_txn.c.platform_status == "failed", payment_txn.c.next_ask_at.is_(None),
               payment_txn.c.updated_at >= now - FAILED_ASK_FOR)
        .values(first_asked_at=payment_txn.c.updated_at, next_ask_at=now)
    )


def downgrade() -> None:
    pass  # the schedule set is what the code before would have ignored; nothing to undo
