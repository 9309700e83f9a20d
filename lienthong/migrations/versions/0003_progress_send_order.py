"""Progress entries sent dossier by dossier (issue #8).

``ix_progress_send`` (flow, state, record_key, occurred_at, step_id, id) replaces
``ix_progress_next`` (flow, state, occurred_at, step_id, id) and ``ix_progress_state``
(flow, state, record_key), which is its prefix. Sending in global time order put each entry of a
chunk on a page of its own, so every chunk's state changes rewrote about a hundred pages; each
dossier's entries are still sent in time order.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_progress_send', 'progress_outbox',
                    ['flow', 'state', 'record_key', 'occurred_at', 'step_id', 'id'], unique=False)
    op.drop_index('ix_progress_next', table_name='progress_outbox')
    op.drop_index('ix_progress_state', table_name='progress_outbox')


def downgrade() -> None:
    op.create_index('ix_progress_state', 'progress_outbox', ['flow', 'state', 'record_key'], unique=False)
    op.create_index('ix_progress_next', 'progress_outbox', ['flow', 'state', 'occurred_at', 'step_id', 'id'],
                    unique=False)
    op.drop_index('ix_progress_send', table_name='progress_outbox')
