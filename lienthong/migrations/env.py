"""Alembic environment of the bus database: always run on a connection handed over by
:func:`lienthong.migrations.upgrade` (or a test), never from a URL in a config file."""

from __future__ import annotations

from alembic import context

from lienthong.store import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("lienthong migrations run on a connection: use lienthong.migrations.upgrade(engine)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
