"""Migrations of the bus database (Alembic), run by :meth:`lienthong.store.Store.create_schema`.

Every change to a table in ``lienthong/store.py`` gets a numbered revision in ``versions/``; a
test checks that upgrading an empty database to the head gives exactly the tables, columns and
indexes the code declares, and that a database made by any earlier revision upgrades cleanly.

* an empty database gets the declared schema at once (``create_all``) and is stamped at the head
  (the test above is what makes that the same as running every revision);
* a database at an older revision is upgraded to the head;
* a database created before migrations existed (tables present, no ``alembic_version``) is taken
  to be at the baseline revision ``0001`` and upgraded from there.

Several task processes may open the store at once: on PostgreSQL an advisory lock serialises the
upgrade; on SQLite an exclusive lock on a file beside the database (``<file>.migrate.lock``) does.
Creation and upgrade are one transaction on both, so a process killed halfway (the reliability
harness does that) leaves the database as it was, never half made.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["BASELINE", "current_revision", "head_revision", "upgrade"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
_ADVISORY_LOCK = 0x6C69656E  # "lien"
_done: set[str] = set()
_lock = threading.Lock()


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head() or ""


def declared_head() -> str:
    """The newest revision, from the file names in ``versions/`` (``NNNN_*.py``, a linear chain),
    without loading Alembic; a test keeps it equal to :func:`head_revision`."""
    return max(p.name.split("_", 1)[0] for p in (HERE / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _stamped(engine: Engine) -> str | None:
    """The revision the database is stamped with, read directly; None when it has none yet."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError:
        return None  # no alembic_version table: empty, or older than migrations
    return rows[0] if len(rows) == 1 else None


def upgrade(engine: Engine) -> str:
    """Bring the bus database to the head revision; returns it. Cheap when already there: a
    database stamped at the head is seen by one query, without Alembic (every task process opens
    the store, so this is paid once per process)."""
    key = engine.url.render_as_string(hide_password=False)
    with _lock:
        declared = declared_head()
        if key in _done:
            return declared
        if _stamped(engine) == declared:
            _done.add(key)
            return declared
        head = head_revision()
        from lienthong.store import sqlite_file_lock

        try:
            # SQLite's DDL is not transactional under the Python driver: processes creating one
            # file's schema at once take turns on a lock file beside it (PostgreSQL: the advisory lock)
            with sqlite_file_lock(engine, ".migrate.lock"), engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
                elif conn.dialect.name == "sqlite":
                    # The Python driver opens transactions only before DML, so every CREATE TABLE
                    # would commit on its own: a process killed halfway through the schema left a
                    # database no later process could open. An explicit transaction makes the
                    # whole creation or upgrade one commit (SQLite's DDL is transactional).
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                revision = current_revision(conn)
                if revision != head:
                    _migrate(conn, revision, head)
        except DBAPIError:
            # Another process may have created or upgraded the schema at the same moment (SQLite
            # has no advisory lock): fine if the database is now at the head, else a real error.
            with engine.connect() as conn:
                if current_revision(conn) != head:
                    raise
        _done.add(key)
        return head


def _migrate(conn: Connection, revision: str | None, head: str) -> None:
    from lienthong.store import metadata

    from alembic import command

    tables = set(inspect(conn).get_table_names())
    cfg = _config(conn)
    if revision is None and not (tables & set(metadata.tables)):
        log.info("bus database is empty: creating schema revision %s", head)
        metadata.create_all(conn)
        command.stamp(cfg, head)
        return
    if revision is None:
        log.info("bus database predates migrations: taking it as revision %s", BASELINE)
        command.stamp(cfg, BASELINE)
    log.info("upgrading bus database from %s to %s", revision or BASELINE, head)
    command.upgrade(cfg, "head")
