"""Baseline: the bus database as it was before migrations (cursors, outbox, acknowledgements,
dead letters, progress outbox, catalogue snapshot and changes, runs, exchange log and its seals).

A database created by ``create_all`` before migrations existed is stamped at this revision.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('catalogue_change',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=250), nullable=False),
    sa.Column('procedure_code', sa.String(length=64), nullable=False),
    sa.Column('procedure_name', sa.Text(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('agency_code', sa.String(length=64), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_catalogue_change_run', 'catalogue_change', ['run_id'], unique=False)
    op.create_table('catalogue_current',
    sa.Column('procedure_code', sa.String(length=64), nullable=False),
    sa.Column('record', sa.JSON(), nullable=False),
    sa.Column('record_hash', sa.String(length=64), nullable=False),
    sa.Column('published', sa.Boolean(), nullable=False),
    sa.Column('updated_run_id', sa.String(length=250), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('procedure_code')
    )
    op.create_table('dead_letter',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('flow', sa.String(length=64), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=False),
    sa.Column('outbox_id', sa.Integer(), nullable=True),
    sa.Column('run_id', sa.String(length=250), nullable=True),
    sa.Column('stage', sa.String(length=32), nullable=False),
    sa.Column('error_class', sa.String(length=100), nullable=False),
    sa.Column('errors', sa.JSON(), nullable=False),
    sa.Column('peer_code', sa.String(length=32), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('source_payload', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolution', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_dead_letter_key', 'dead_letter', ['flow', 'record_key'], unique=False)
    op.create_table('delivery_state',
    sa.Column('peer', sa.String(length=64), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=False),
    sa.Column('payload_hash', sa.String(length=64), nullable=False),
    sa.Column('created_on_peer', sa.Boolean(), nullable=False),
    sa.Column('source_version', sa.Integer(), nullable=True),
    sa.Column('peer_status', sa.String(length=16), nullable=True),
    sa.Column('outbox_id', sa.Integer(), nullable=True),
    sa.Column('acked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('acked_run_id', sa.String(length=250), nullable=True),
    sa.PrimaryKeyConstraint('peer', 'record_key')
    )
    op.create_table('exchange_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('flow', sa.String(length=64), nullable=True),
    sa.Column('run_id', sa.String(length=250), nullable=True),
    sa.Column('task_id', sa.String(length=250), nullable=True),
    sa.Column('peer', sa.String(length=64), nullable=False),
    sa.Column('operation', sa.String(length=100), nullable=False),
    sa.Column('direction', sa.String(length=16), nullable=False),
    sa.Column('method', sa.String(length=10), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('peer_code', sa.String(length=32), nullable=True),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=False),
    sa.Column('record_count', sa.Integer(), nullable=False),
    sa.Column('request_headers', sa.JSON(), nullable=False),
    sa.Column('request_body', sa.LargeBinary(), nullable=False),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('request_size', sa.Integer(), nullable=False),
    sa.Column('response_headers', sa.JSON(), nullable=False),
    sa.Column('response_body', sa.LargeBinary(), nullable=False),
    sa.Column('response_sha256', sa.String(length=64), nullable=False),
    sa.Column('response_size', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_exchange_peer_op', 'exchange_log', ['peer', 'operation', 'started_at'], unique=False)
    op.create_index('ix_exchange_run', 'exchange_log', ['run_id'], unique=False)
    op.create_table('exchange_seal',
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('first_id', sa.Integer(), nullable=False),
    sa.Column('last_id', sa.Integer(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('root', sa.String(length=64), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('seal_hash', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.Column('key_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('sealed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('first_id'),
    sa.UniqueConstraint('last_id'),
    sa.UniqueConstraint('prev_hash'),
    sa.UniqueConstraint('seal_hash')
    )
    op.create_table('exchange_seal_leaf',
    sa.Column('exchange_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seal_seq', sa.Integer(), nullable=False),
    sa.Column('leaf_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('exchange_id')
    )
    op.create_index('ix_exchange_seal_leaf_seq', 'exchange_seal_leaf', ['seal_seq', 'exchange_id'], unique=False)
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('flow', sa.String(length=64), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=False),
    sa.Column('source_seq', sa.Integer(), nullable=False),
    sa.Column('source_version', sa.Integer(), nullable=True),
    sa.Column('source_payload', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('operation', sa.String(length=16), nullable=True),
    sa.Column('payload_hash', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('staged_run_id', sa.String(length=250), nullable=True),
    sa.Column('staged_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_run_id', sa.String(length=250), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('flow', 'record_key', 'source_seq', name='uq_outbox_event')
    )
    op.create_index('ix_outbox_key', 'outbox', ['flow', 'record_key'], unique=False)
    op.create_index('ix_outbox_pending', 'outbox', ['flow', 'state', 'id'], unique=False)
    op.create_table('progress_outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('flow', sa.String(length=64), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=False),
    sa.Column('entry_key', sa.String(length=250), nullable=False),
    sa.Column('step_id', sa.Integer(), nullable=False),
    sa.Column('occurred_at', sa.String(length=14), nullable=False),
    sa.Column('source_payload', sa.JSON(), nullable=False),
    sa.Column('payload', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('payload_hash', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('staged_run_id', sa.String(length=250), nullable=True),
    sa.Column('staged_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_run_id', sa.String(length=250), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('flow', 'entry_key', name='uq_progress_entry')
    )
    op.create_index('ix_progress_state', 'progress_outbox', ['flow', 'state', 'record_key'], unique=False)
    op.create_table('sync_cursor',
    sa.Column('flow', sa.String(length=64), nullable=False),
    sa.Column('cursor', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.String(length=250), nullable=True),
    sa.PrimaryKeyConstraint('flow')
    )
    op.create_table('sync_run',
    sa.Column('run_id', sa.String(length=250), nullable=False),
    sa.Column('flow', sa.String(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('run_id', 'flow')
    )
    op.create_table('exchange_key',
    sa.Column('exchange_id', sa.Integer(), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['exchange_id'], ['exchange_log.id'], ),
    sa.PrimaryKeyConstraint('exchange_id', 'record_key')
    )
    op.create_index('ix_exchange_key_key', 'exchange_key', ['record_key'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_exchange_key_key', table_name='exchange_key')
    op.drop_table('exchange_key')
    op.drop_table('sync_run')
    op.drop_table('sync_cursor')
    op.drop_index('ix_progress_state', table_name='progress_outbox')
    op.drop_table('progress_outbox')
    op.drop_index('ix_outbox_pending', table_name='outbox')
    op.drop_index('ix_outbox_key', table_name='outbox')
    op.drop_table('outbox')
    op.drop_index('ix_exchange_seal_leaf_seq', table_name='exchange_seal_leaf')
    op.drop_table('exchange_seal_leaf')
    op.drop_table('exchange_seal')
    op.drop_index('ix_exchange_run', table_name='exchange_log')
    op.drop_index('ix_exchange_peer_op', table_name='exchange_log')
    op.drop_table('exchange_log')
    op.drop_table('delivery_state')
    op.drop_index('ix_dead_letter_key', table_name='dead_letter')
    op.drop_table('dead_letter')
    op.drop_table('catalogue_current')
    op.drop_index('ix_catalogue_change_run', table_name='catalogue_change')
    op.drop_table('catalogue_change')
