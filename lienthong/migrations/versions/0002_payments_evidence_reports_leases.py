"""Payments, audit evidence, reports and concurrent delivery.

* ``payment_txn``, ``reconciliation_item``: the payment receipts flow (issue #5);
* ``exchange_blob`` (bodies and receipts by content hash), ``exchange_personal_field`` (salted
  commitments of personal values), ``exchange_redaction``, ``exchange_archive``, and the
  ``exchange_log`` columns ``leaf_version``, ``request_blob_sha256``, ``response_blob_sha256``:
  redactable, archivable evidence (issue #6);
* ``dossier_fact``, ``agreement_run``, ``agreement_difference``: reports (issue #10);
* ``delivery_lease``: one worker per record at a time (issue #9);
* ``ix_progress_next``: progress entries read in sending order from an index (issue #8).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('agreement_difference',
    sa.Column('run_id', sa.String(length=250), nullable=False),
    sa.Column('check_name', sa.String(length=64), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=False),
    sa.Column('aspect', sa.String(length=32), nullable=False),
    sa.Column('agency_code', sa.String(length=64), nullable=True),
    sa.Column('dossier_no', sa.String(length=200), nullable=True),
    sa.Column('value_a', sa.Text(), nullable=True),
    sa.Column('value_b', sa.Text(), nullable=True),
    sa.Column('since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('age_seconds', sa.Integer(), nullable=True),
    sa.Column('last_exchange_id', sa.Integer(), nullable=True),
    sa.Column('last_exchange', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('run_id', 'check_name', 'record_key', 'aspect')
    )
    op.create_index('ix_agreement_difference_key', 'agreement_difference', ['record_key'], unique=False)
    op.create_table('agreement_run',
    sa.Column('run_id', sa.String(length=250), nullable=False),
    sa.Column('check_name', sa.String(length=64), nullable=False),
    sa.Column('systems', sa.String(length=200), nullable=False),
    sa.Column('as_of', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('checked', sa.Integer(), nullable=False),
    sa.Column('agreeing', sa.Integer(), nullable=False),
    sa.Column('differing', sa.Integer(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('run_id', 'check_name')
    )
    op.create_table('delivery_lease',
    sa.Column('flow', sa.String(length=64), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=False),
    sa.Column('worker', sa.String(length=120), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('flow', 'record_key')
    )
    op.create_table('dossier_fact',
    sa.Column('dossier_no', sa.String(length=200), nullable=False),
    sa.Column('agency_code', sa.String(length=64), nullable=True),
    sa.Column('agency_name', sa.Text(), nullable=True),
    sa.Column('procedure_code', sa.String(length=64), nullable=True),
    sa.Column('channel', sa.String(length=16), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('modified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('progress_count', sa.Integer(), nullable=False),
    sa.Column('source_version', sa.Integer(), nullable=True),
    sa.Column('outbox_id', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('dossier_no')
    )
    op.create_index('ix_dossier_fact_agency', 'dossier_fact', ['agency_code'], unique=False)
    op.create_index('ix_dossier_fact_submitted', 'dossier_fact', ['submitted_at'], unique=False)
    op.create_table('exchange_archive',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('first_seq', sa.Integer(), nullable=False),
    sa.Column('last_seq', sa.Integer(), nullable=False),
    sa.Column('first_id', sa.Integer(), nullable=False),
    sa.Column('last_id', sa.Integer(), nullable=False),
    sa.Column('records', sa.Integer(), nullable=False),
    sa.Column('bundle_path', sa.Text(), nullable=False),
    sa.Column('bundle_sha256', sa.String(length=64), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('archived_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('exchange_blob',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content_type', sa.String(length=200), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('pinned', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_table('exchange_redaction',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=True),
    sa.Column('exchange_ids', sa.JSON(), nullable=False),
    sa.Column('fields', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('payment_txn',
    sa.Column('reference', sa.String(length=64), nullable=False),
    sa.Column('dossier_code', sa.String(length=64), nullable=True),
    sa.Column('request_amount', sa.Integer(), nullable=True),
    sa.Column('onestop_status', sa.String(length=16), nullable=True),
    sa.Column('platform_status', sa.String(length=16), nullable=False),
    sa.Column('platform_amount', sa.Integer(), nullable=True),
    sa.Column('transaction_id', sa.String(length=64), nullable=True),
    sa.Column('bank', sa.String(length=32), nullable=True),
    sa.Column('paid_at', sa.String(length=40), nullable=True),
    sa.Column('answer', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('receipt_no', sa.String(length=40), nullable=True),
    sa.Column('receipt_sha256', sa.String(length=64), nullable=True),
    sa.Column('onestop_state', sa.String(length=16), nullable=False),
    sa.Column('ledger_state', sa.String(length=16), nullable=False),
    sa.Column('ledger_hash', sa.String(length=64), nullable=True),
    sa.Column('hold_reason', sa.String(length=40), nullable=True),
    sa.Column('first_seen_run', sa.String(length=250), nullable=True),
    sa.Column('updated_run', sa.String(length=250), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('reference')
    )
    op.create_index('ix_payment_txn_platform', 'payment_txn', ['platform_status'], unique=False)
    op.create_table('reconciliation_item',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('flow', sa.String(length=64), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('dossier_code', sa.String(length=64), nullable=True),
    sa.Column('receipt_no', sa.String(length=40), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('first_seen_run', sa.String(length=250), nullable=True),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_run', sa.String(length=250), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_run', sa.String(length=250), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_reconciliation_open', 'reconciliation_item', ['flow', 'record_key', 'kind', 'resolved_at'], unique=False)
    op.create_table('exchange_personal_field',
    sa.Column('exchange_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('side', sa.String(length=8), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('commitment', sa.String(length=64), nullable=False),
    sa.Column('salt', sa.LargeBinary(), nullable=True),
    sa.Column('value', sa.LargeBinary(), nullable=True),
    sa.Column('redaction_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['exchange_id'], ['exchange_log.id'], ),
    sa.PrimaryKeyConstraint('exchange_id', 'side', 'path')
    )
    op.add_column('exchange_log', sa.Column('leaf_version', sa.Integer(), nullable=True))
    op.add_column('exchange_log', sa.Column('request_blob_sha256', sa.String(length=64), nullable=True))
    op.add_column('exchange_log', sa.Column('response_blob_sha256', sa.String(length=64), nullable=True))
    op.create_index('ix_progress_next', 'progress_outbox', ['flow', 'state', 'occurred_at', 'step_id', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_progress_next', table_name='progress_outbox')
    op.drop_column('exchange_log', 'response_blob_sha256')
    op.drop_column('exchange_log', 'request_blob_sha256')
    op.drop_column('exchange_log', 'leaf_version')
    op.drop_table('exchange_personal_field')
    op.drop_index('ix_reconciliation_open', table_name='reconciliation_item')
    op.drop_table('reconciliation_item')
    op.drop_index('ix_payment_txn_platform', table_name='payment_txn')
    op.drop_table('payment_txn')
    op.drop_table('exchange_redaction')
    op.drop_table('exchange_blob')
    op.drop_table('exchange_archive')
    op.drop_index('ix_dossier_fact_submitted', table_name='dossier_fact')
    op.drop_index('ix_dossier_fact_agency', table_name='dossier_fact')
    op.drop_table('dossier_fact')
    op.drop_table('delivery_lease')
    op.drop_table('agreement_run')
    op.drop_index('ix_agreement_difference_key', table_name='agreement_difference')
    op.drop_table('agreement_difference')
