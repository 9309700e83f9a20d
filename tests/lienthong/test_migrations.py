"""The bus database's migrations (Alembic): upgrading an empty database gives exactly the schema
the code declares, a database made before migrations (or by any earlier revision) upgrades
cleanly with its rows kept, and several processes opening a fresh database at once all succeed."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select, text

from lienthong import migrations
from lienthong.store import Store, metadata
from tests.conftest import postgres_database


def _diffs(engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return [d for d in compare_metadata(context, metadata)
                # SQLite reports JSON/DateTime affinities loosely; names, columns, nullability and
                # indexes are what must agree
                if not (d[0][0] == "modify_type" if isinstance(d[0], tuple) else False)]


def _upgrade_step_by_step(engine) -> None:
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "head")


def test_every_revision_in_order_gives_the_declared_schema_on_sqlite(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'bus.db'}")
    _upgrade_step_by_step(engine)
    assert _diffs(engine) == []
    with engine.connect() as conn:
        assert migrations.current_revision(conn) == migrations.head_revision()


def test_revisions_form_one_line_from_the_baseline():
    script = ScriptDirectory.from_config(migrations._config())
    revisions = list(script.walk_revisions())
    assert revisions[-1].revision == migrations.BASELINE and revisions[-1].down_revision is None
    assert len(script.get_heads()) == 1


def test_the_head_read_from_file_names_is_alembics_head():
    assert migrations.declared_head() == migrations.head_revision()


def test_a_database_at_the_head_is_opened_without_loading_alembic(tmp_path):
    """Every task process opens the store: one at the head costs one query, not Alembic's import
    and script scan; one behind it is still upgraded."""
    import subprocess
    import sys

    path = tmp_path / "bus.db"
    Store(f"sqlite:///{path}").create_schema()
    probe = ("import sys; from lienthong.store import Store; Store(sys.argv[1]).create_schema(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    out = subprocess.run([sys.executable, "-c", probe, f"sqlite:///{path}"], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # one revision behind: the fast way must not be taken
        command.downgrade(migrations._config(conn), "0002")
    out = subprocess.run([sys.executable, "-c", probe, f"sqlite:///{path}"], capture_output=True, text=True,
                         check=True, timeout=120)
    assert "alembic" in out.stdout
    with engine.connect() as conn:
        assert migrations.current_revision(conn) == migrations.head_revision()
    assert _diffs(engine) == []


def test_a_database_from_before_migrations_is_upgraded_with_its_rows(tmp_path):
    """The baseline schema made by create_all (as the first release did), with a row in it."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), migrations.BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("INSERT INTO sync_cursor(flow, cursor, updated_at, run_id) "
                          "VALUES ('dossier_status', 'c1.abc', '2026-11-02 01:00:00', 'r1')"))
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    store.create_schema()
    assert store.get_cursor("dossier_status") == "c1.abc"
    assert _diffs(store.engine) == []
    with store.engine.connect() as conn:
        assert migrations.current_revision(conn) == migrations.head_revision()


def test_progress_entries_pending_at_0002_are_kept_and_sent_dossier_by_dossier_after_0003(tmp_path):
    """0003 swaps the progress indexes; entries staged under 0002 (in global time order) stay, and
    go dossier by dossier, each in time order. Downgrading gives 0002's indexes back."""
    from lienthong.flows.dossier_status import FLOW, ProgressReport, _next_chunk
    from lienthong.leases import Leases

    engine = create_engine(f"sqlite:///{tmp_path / 'bus.db'}")
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "0002")
        conn.execute(text(
            "INSERT INTO progress_outbox(flow, record_key, entry_key, step_id, occurred_at, source_payload, payload, "
            "payload_hash, state, attempts, staged_at) VALUES "
            "('dossier_progress', 'B', 'B#1', 1, '20261106070000', '{}', '{\"n\": 1}', 'h', 'pending', 0, "
            "'2026-11-06 00:00:00'), "
            "('dossier_progress', 'A', 'A#2', 2, '20261106090000', '{}', '{\"n\": 2}', 'h', 'pending', 0, "
            "'2026-11-06 00:00:00'), "
            "('dossier_progress', 'A', 'A#1', 1, '20261106080000', '{}', '{\"n\": 3}', 'h', 'pending', 0, "
            "'2026-11-06 00:00:00')"))
    store = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    store.create_schema()
    assert _diffs(store.engine) == []
    assert {i["name"] for i in inspect(store.engine).get_indexes("progress_outbox")} == {"ix_progress_send"}
    with store.begin() as conn:
        chunk = _next_chunk(conn, 10, ProgressReport(), Leases(store, FLOW, "w"))
    assert [(e.entry_key, e.payload) for e in chunk] == [("A#1", {"n": 3}), ("A#2", {"n": 2}), ("B#1", {"n": 1})]
    with store.engine.begin() as conn:
        command.downgrade(migrations._config(conn), "0002")
    assert {i["name"] for i in inspect(store.engine).get_indexes("progress_outbox")} == {
        "ix_progress_next", "ix_progress_state"}


def test_an_empty_database_gets_the_head_at_once(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'new.db'}")
    store.create_schema()
    assert _diffs(store.engine) == []
    assert set(metadata.tables) <= set(inspect(store.engine).get_table_names())


def _open(path: str, barrier) -> None:
    barrier.wait()
    Store(f"sqlite:///{path}").create_schema()


def test_processes_opening_a_fresh_database_at_once_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    path = str(tmp_path / "race.db")
    workers = [ctx.Process(target=_open, args=(path, barrier)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert _diffs(create_engine(f"sqlite:///{path}")) == []


@pytest.fixture
def pg_database():
    with postgres_database("lienthong_mig") as url:
        yield url


def test_every_revision_in_order_gives_the_declared_schema_on_postgresql(pg_database):
    engine = create_engine(pg_database)
    try:
        _upgrade_step_by_step(engine)
        assert _diffs(engine) == []
        store = Store(pg_database)
        store.create_schema()  # already at the head: a no-op
        with store.engine.connect() as conn:
            assert migrations.current_revision(conn) == migrations.head_revision()
        store.dispose()
    finally:
        engine.dispose()


KILLED_MID_CREATE = """
import os, signal, sys
from lienthong import store
create_all = store.metadata.create_all
def part_then_die(conn, *args, **kwargs):
    create_all(conn, tables=list(store.metadata.sorted_tables)[:6])
    os.kill(os.getpid(), signal.SIGKILL)
store.metadata.create_all = part_then_die
store.Store(sys.argv[1]).create_schema()
"""


def test_a_process_killed_while_creating_the_schema_leaves_nothing_half_made(tmp_path):
    """Found by the reliability harness (#7): SQLite's driver committed every CREATE TABLE on its
    own, so a SIGKILL halfway left six tables and no revision; every later process then took the
    file for a pre-migration database and failed on a table that was never created."""
    import subprocess
    import sys

    from sqlalchemy import create_engine, inspect

    from lienthong.store import Store, metadata

    url = f"sqlite:///{tmp_path / 'bus.db'}"
    done = subprocess.run([sys.executable, "-c", KILLED_MID_CREATE, url], capture_output=True, timeout=120,
                          check=False)
    assert done.returncode == -9
    engine = create_engine(url)
    assert inspect(engine).get_table_names() == []  # rolled back, not half made
    engine.dispose()
    Store(url).create_schema()
    engine = create_engine(url)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_payments_unfinished_at_0003_are_due_at_once_after_0004_and_finished_ones_never(tmp_path):
    """0004 adds the ask schedule: a payment left pending, unknown, or paid without its receipt by
    0003 is due at its last update (collect asks it at the next run); a finished one is never due.
    Downgrading drops the columns and the index."""
    from lienthong.flows.payment_receipts import BY_ASK, _pages
    from lienthong.store import payment_txn

    engine = create_engine(f"sqlite:///{tmp_path / 'bus.db'}")
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "0003")
        for reference, status, receipt in (("P-pending", "pending", None), ("P-unknown", "unknown", None),
                                           ("P-no-bill", "paid", None), ("P-paid", "paid", "a" * 64),
                                           ("P-failed", "failed", None)):
            conn.execute(text(
                "INSERT INTO payment_txn(reference, platform_status, receipt_sha256, onestop_state, ledger_state, "
                "updated_at) VALUES (:r, :s, :h, 'todo', 'todo', '2026-11-06 00:00:00.000000')"),
                {"r": reference, "s": status, "h": receipt})
    store = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    store.create_schema()
    assert _diffs(store.engine) == []
    with store.engine.connect() as conn:
        due = {r.reference: r.next_ask_at for r in conn.execute(
            select(payment_txn.c.reference, payment_txn.c.next_ask_at, payment_txn.c.first_asked_at)
            .where(payment_txn.c.next_ask_at.is_not(None)))}
        pages = list(_pages(select(payment_txn.c.reference, payment_txn.c.next_ask_at).where(
            payment_txn.c.next_ask_at <= datetime(2026, 11, 7, tzinfo=UTC)), lambda q: conn.execute(q).all(), BY_ASK))
    assert due == dict.fromkeys(("P-no-bill", "P-pending", "P-unknown"), datetime(2026, 11, 6, tzinfo=UTC))
    assert [r.reference for page in pages for r in page] == ["P-no-bill", "P-pending", "P-unknown"]
    with store.engine.begin() as conn:
        command.downgrade(migrations._config(conn), "0003")
    columns = {c["name"] for c in inspect(store.engine).get_columns("payment_txn")}
    assert not columns & {"first_asked_at", "next_ask_at"}
    assert not {"ix_payment_txn_ask", "ix_payment_txn_updated"} & {i["name"] for i in inspect(store.engine).get_indexes("payment_txn")}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_payments_failed_in_the_last_7_days_before_0010_are_asked_again(backend, tmp_path, request):
    """Collect asks a failed payment again for FAILED_ASK_FOR after its failure (QUERY backs up a
    lost callback), with first_asked_at/next_ask_at set when the failure is recorded; one recorded
    failed by the code before left next_ask_at NULL and was never asked again. 0010 makes those
    failed within the last 7 days due at once, their window counted from their last update."""
    from datetime import timedelta

    from lienthong.flows.payment_receipts import FAILED_ASK_FOR
    from lienthong.store import payment_txn

    url = f"sqlite:///{tmp_path / 'bus.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")
    engine = create_engine(url)
    now = datetime.now(UTC).replace(microsecond=0)
    recent, old, asked = now - timedelta(days=2), now - FAILED_ASK_FOR - timedelta(hours=1), now - timedelta(days=20)
    rows = {  # reference: (platform_status, updated_at, first_asked_at, next_ask_at)
        "P-failed-recent": ("failed", recent, asked, None),  # the one to ask again
        "P-failed-recent-never-asked": ("failed", recent, None, None),
        "P-failed-old": ("failed", old, asked, None),  # its 7 days are over: stays as it is
        "P-failed-scheduled": ("failed", recent, recent, now + timedelta(hours=3)),  # the new code's: untouched
        "P-paid": ("paid", recent, asked, None),
        "P-pending-given-up": ("pending", recent, asked, None),  # given up after 30 days: stays so
    }
    try:
        with engine.begin() as conn:
            command.upgrade(migrations._config(conn), "0009")
            conn.execute(payment_txn.insert(), [
                {"reference": ref, "platform_status": status, "updated_at": updated, "first_asked_at": first,
                 "next_ask_at": due, "onestop_state": "todo", "ledger_state": "todo"}
                for ref, (status, updated, first, due) in rows.items()])
        with engine.begin() as conn:
            command.upgrade(migrations._config(conn), "head")
        after = datetime.now(UTC)
        with engine.connect() as conn:
            held = {r.reference: r for r in conn.execute(select(payment_txn))}
        assert len(held) == len(rows)
        for ref in ("P-failed-recent", "P-failed-recent-never-asked"):
            assert held[ref].first_asked_at == recent, ref
            assert now - timedelta(minutes=5) <= held[ref].next_ask_at <= after, ref
        for ref in ("P-failed-old", "P-failed-scheduled", "P-paid", "P-pending-given-up"):
            assert (held[ref].platform_status, held[ref].updated_at, held[ref].first_asked_at,
                    held[ref].next_ask_at) == rows[ref], ref
        assert _diffs(engine) == []
        with engine.begin() as conn:  # the data stays as it was made: downgrading changes nothing
            command.downgrade(migrations._config(conn), "0009")
        with engine.connect() as conn:
            assert conn.execute(select(payment_txn.c.next_ask_at).where(
                payment_txn.c.reference == "P-failed-recent")).scalar_one() is not None
    finally:
        engine.dispose()
