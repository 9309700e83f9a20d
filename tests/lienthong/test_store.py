"""``insert_ignore`` on SQLite and on PostgreSQL (psycopg2's ``execute_values``) sends its rows to
the driver with each column type's own bind processor (issue #8). What it stores must be, byte for byte, what SQLAlchemy's own insert stores,
for every table the flows stage into; what it reads back must be the same Python values; and the
count of new rows must be the same, conflicts included."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, select, update

from lienthong import store as store_module
from lienthong.store import (
    Store,
    exchange_blob,
    execute_many,
    insert_ignore,
    outbox,
    payment_txn,
    progress_outbox,
    sync_run,
)
from tests.conftest import postgres_database

ICT = timezone(timedelta(hours=7))
NOW = datetime(2026, 11, 27, 23, 30, 1, 123456, tzinfo=UTC)


def _rows() -> dict[str, tuple[object, str, list[dict[str, object]]]]:
    dossier = {"dossierNo": "000.00.02.H49-261127-0001", "applicantName": "Nguyễn Thị Hoà",
               "fees": [{"amount": 50000, "paid": True}], "finishDate": None, "note": 'a "quoted" \\ text'}
    return {
        "outbox": (outbox, "uq_outbox_event", [
            {"flow": "dossier_status", "record_key": f"K-{i}", "source_seq": i, "source_version": None if i % 2 else i,
             "source_payload": {**dossier, "seq": i}, "state": "pending", "attempts": 0, "staged_run_id": "r",
             "staged_at": NOW + timedelta(seconds=i)} for i in range(5)]),
        "progress_outbox": (progress_outbox, "uq_progress_entry", [
            {"flow": "dossier_progress", "record_key": "K-1", "entry_key": f"K-1#{i}", "step_id": i,
             "occurred_at": f"2026112708{i:02d}00", "source_payload": {"stepId": i, "actor": "Đỗ Ngọc Cường"},
             "payload": None if i == 2 else {"MaHoSo": "K-1", "NoiDungXuLy": "Tiếp nhận"},
             "payload_hash": None if i == 2 else f"h{i}", "state": "pending", "attempts": 0, "staged_run_id": "r",
             "staged_at": (NOW + timedelta(minutes=i)).astimezone(ICT)} for i in range(4)]),
        # the rows leave out columns with constant defaults: those are filled as SQLAlchemy fills them
        "payment_txn": (payment_txn, "payment_txn_pkey", [
            {"reference": f"REF-{i}", "dossier_code": "K-1", "request_amount": 150000 * i, "onestop_status": "pending",
             "first_seen_run": "r", "updated_run": "r", "updated_at": NOW} for i in range(3)]),
        "exchange_blob": (exchange_blob, "exchange_blob_pkey", [
            {"sha256": f"{i:064x}", "content_type": "application/pdf", "size": 3, "data": b"\x00\xffx",
             "pinned": bool(i % 2), "created_at": NOW} for i in range(3)]),
    }


def _raw(url: str, table: str) -> list[tuple]:
    """The stored rows as the database holds them: SQLite's values, PostgreSQL's text of each row."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()  # noqa: S608
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(f"SELECT t::text FROM {table} t ORDER BY ctid"))]  # noqa: S608
    finally:
        engine.dispose()


@contextmanager
def _database(backend: str, tmp_path, name: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / name}.db"
        return
    with postgres_database(f"lienthong_store_{name}") as url:
        yield url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("name", ["outbox", "progress_outbox", "payment_txn", "exchange_blob"])
def test_the_driver_path_stores_what_sqlalchemy_stores(tmp_path, monkeypatch, name, backend):
    table, constraint, rows = _rows()[name]
    with _database(backend, tmp_path, "driver") as driver_url, _database(backend, tmp_path, "sqlalchemy") as sa_url:
        stores = {}
        for way, url in (("driver", driver_url), ("sqlalchemy", sa_url)):
            s = Store(url)
            s.create_schema()
            if way == "sqlalchemy":
                monkeypatch.setattr(store_module, "_driver_insert_plan", lambda *a: None)
            with s.begin() as conn:
                if way == "driver":
                    assert store_module._driver_insert_plan(conn, table, rows) is not None
                assert insert_ignore(conn, table, rows, constraint) == len(rows)
                # the same rows again, and one new: only the new one counts
                again = [*rows, {**rows[0], **{k: f"{v}-new" for k, v in rows[0].items() if k in (
                    "record_key", "entry_key", "reference", "sha256")}}]
                if name == "outbox":
                    again[-1]["source_seq"] = 99
                if name == "exchange_blob":
                    again[-1]["sha256"] = "f" * 64  # a VARCHAR(64), which PostgreSQL enforces
                assert insert_ignore(conn, table, again, constraint) == 1
            monkeypatch.undo()
            stores[way] = (s, url)
        assert _raw(driver_url, table.name) == _raw(sa_url, table.name)
        read = {}
        for way, (s, _) in stores.items():
            with s.engine.connect() as conn:
                read[way] = [dict(r) for r in conn.execute(select(table)).mappings()]
            s.dispose()
        assert read["driver"] == read["sqlalchemy"] and len(read["driver"]) == len(rows) + 1


def test_more_rows_than_a_page_are_all_inserted_and_counted(bus_store, monkeypatch):
    """psycopg2's ``execute_values`` sends a page of rows per statement and reports only the last
    page's count: the count is the sum of the pages', and no row is left out."""
    monkeypatch.setattr(store_module, "VALUES_PAGE", 7)
    rows = [{"sha256": f"{i:064x}", "content_type": "application/pdf", "size": 3, "data": bytes([i % 256, 0, 255]),
             "pinned": False, "created_at": NOW} for i in range(30)]
    with bus_store.begin() as conn:
        assert insert_ignore(conn, exchange_blob, rows[:17], "exchange_blob_pkey") == 17
        assert insert_ignore(conn, exchange_blob, rows, "exchange_blob_pkey") == 13
    with bus_store.engine.connect() as conn:
        stored = conn.execute(select(exchange_blob.c.sha256, exchange_blob.c.data).order_by(exchange_blob.c.sha256)).all()
    assert [(r.sha256, bytes(r.data)) for r in stored] == [(r["sha256"], r["data"]) for r in rows]


def test_rows_leaving_out_a_column_with_a_computed_default_go_through_sqlalchemy(store):
    # a left-out column whose default is computed in Python (sync_run.counts = dict)
    with store.begin() as conn:
        assert insert_ignore(conn, sync_run, [{"run_id": "r", "flow": "f", "started_at": NOW}], "sync_run_pkey") == 1
        assert conn.execute(select(sync_run.c.counts)).scalar_one() == {}



def test_rows_naming_different_columns_are_refused_naming_the_row(store):
    """SQLAlchemy would silently drop row 1's ``bank`` (it builds the statement from row 0)."""
    rows = [{"reference": "A", "updated_at": NOW}, {"reference": "B", "updated_at": NOW, "bank": "VCB"}]
    with pytest.raises(ValueError, match=r"insert into payment_txn: row 1 names columns \['bank', 'reference', "
                                         r"'updated_at'\], row 0 names \['reference', 'updated_at'\]"), \
            store.begin() as conn:
        insert_ignore(conn, payment_txn, rows, "payment_txn_pkey")
    with store.engine.connect() as conn:
        assert conn.execute(select(payment_txn)).all() == []


def test_a_naive_time_is_refused_on_the_driver_path_as_on_sqlalchemys(store):
    rows = _rows()["exchange_blob"][2][:1]
    rows[0]["created_at"] = datetime(2026, 11, 27, 23, 30)
    with pytest.raises(Exception, match="naive datetime refused"), store.begin() as conn:
        insert_ignore(conn, exchange_blob, rows, "exchange_blob_pkey")


def test_acknowledgements_naming_different_columns_are_refused(store):
    from lienthong.store import delivery_state, upsert_acknowledgements

    rows = [{"peer": "p", "record_key": "A", "payload_hash": "h", "acked_at": NOW},
            {"peer": "p", "record_key": "B", "payload_hash": "h", "acked_at": NOW, "peer_status": "4"}]
    with pytest.raises(ValueError, match="insert into delivery_state: row 1 names columns"), store.begin() as conn:
        upsert_acknowledgements(conn, rows)
    with store.engine.connect() as conn:
        assert conn.execute(select(delivery_state)).all() == []


def test_insert_many_stores_every_row_of_every_page_as_given(bus_store, monkeypatch):
    """The exchange log's key and personal-field rows: through the driver on both backends (several
    ``execute_values`` pages on PostgreSQL), every row stored once, bytes as bytes."""
    from lienthong.store import exchange_key, exchange_log, exchange_personal_field, insert_many

    monkeypatch.setattr(store_module, "VALUES_PAGE", 7)
    with bus_store.begin() as conn:
        exchange_id = conn.execute(exchange_log.insert().values(
            started_at=NOW, peer="national_portal", operation="DongBoHoSoMC", direction="outbound", method="POST",
            url="http://127.0.0.1/x", attempt=1, outcome="ok", duration_ms=1.5, record_count=30,
            request_headers={}, request_body=b"", request_sha256="0" * 64, request_size=0, response_headers={},
            response_body=b"", response_sha256="0" * 64, response_size=0)).inserted_primary_key[0]
        keys = [(exchange_id, f"000.00.02.H49-261127-{i:04d}") for i in range(30)]
        fields = [(exchange_id, "request", f"/data/{i}/ChuHoSo", "json", f"{i:064x}", bytes([i, 0, 255]) * 5,
                   f"Nguyễn Văn {i}".encode()) for i in range(30)]
        insert_many(conn, exchange_key, ("exchange_id", "record_key"), keys)
        insert_many(conn, exchange_personal_field,
                    ("exchange_id", "side", "path", "kind", "commitment", "salt", "value"), fields)
    t = exchange_personal_field
    with bus_store.engine.connect() as conn:
        stored_keys = conn.execute(select(exchange_key.c.exchange_id, exchange_key.c.record_key)
                                   .order_by(exchange_key.c.record_key)).all()
        stored = conn.execute(select(t.c.exchange_id, t.c.side, t.c.path, t.c.kind, t.c.commitment, t.c.salt,
                                     t.c.value).order_by(t.c.commitment)).all()
    assert [tuple(r) for r in stored_keys] == keys
    assert [(*r[:5], bytes(r[5]), bytes(r[6])) for r in stored] == fields


def test_acknowledgements_keep_what_they_do_not_name_and_the_last_row_of_a_key_wins(bus_store):
    """One upsert per call (pages of statements through psycopg2): a new key is inserted, an
    acknowledged one gets the named columns and keeps the others, a key given twice ends as its
    last row, as row by row."""
    from lienthong.store import delivery_state, upsert_acknowledgements

    with bus_store.begin() as conn:
        upsert_acknowledgements(conn, [
            {"peer": "national_portal", "record_key": "A", "payload_hash": "h1", "created_on_peer": True,
             "source_version": 3, "peer_status": "2", "outbox_id": 10, "acked_at": NOW, "acked_run_id": "r1"}])
    later = NOW + timedelta(minutes=5)
    with bus_store.begin() as conn:
        upsert_acknowledgements(conn, [
            {"peer": "national_portal", "record_key": "A", "payload_hash": "h2", "created_on_peer": False,
             "acked_at": later},
            {"peer": "national_portal", "record_key": "B", "payload_hash": "h3", "created_on_peer": True,
             "acked_at": later},
            {"peer": "national_portal", "record_key": "B", "payload_hash": "h4", "created_on_peer": False,
             "acked_at": later.astimezone(ICT)}])
    with bus_store.engine.connect() as conn:
        rows = {r["record_key"]: dict(r) for r in conn.execute(select(delivery_state)).mappings()}
    assert rows == {
        "A": {"peer": "national_portal", "record_key": "A", "payload_hash": "h2", "created_on_peer": False,
              "source_version": 3, "peer_status": "2", "outbox_id": 10, "acked_at": later, "acked_run_id": "r1"},
        "B": {"peer": "national_portal", "record_key": "B", "payload_hash": "h4", "created_on_peer": False,
              "source_version": None, "peer_status": None, "outbox_id": None, "acked_at": later,
              "acked_run_id": None},
    }


# -- execute_many: an UPDATE for many rows, batched through psycopg2 ---------------------------------
_ATTEMPT = (update(outbox).where(outbox.c.id == bindparam("b_id"))
            .values(state="held", attempts=outbox.c.attempts + bindparam("b_more"), sent_at=bindparam("b_at")))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_execute_many_stores_what_sqlalchemys_executemany_stores(tmp_path, monkeypatch, backend):
    """The dossier flow's batched updates (a JSON payload, an aware time, a constant, an expression
    over a column, NULLs) leave, byte for byte, what SQLAlchemy's own ``executemany`` leaves; with
    pages smaller than the rows, every row of every page is updated."""
    from lienthong.flows.dossier_status import _FINISH_MANY, _SET_MAPPED

    monkeypatch.setattr(store_module, "VALUES_PAGE", 3)
    tables = _rows()
    outbox_rows = [{**tables["outbox"][2][0], "record_key": f"K-{i}", "source_seq": i} for i in range(8)]
    progress_rows = [{**tables["progress_outbox"][2][0], "entry_key": f"K-1#{i}", "step_id": i} for i in range(8)]
    finish = [{"b_id": i + 1, "b_state": "delivered", "b_operation": None if i % 3 else "insert",
               "b_hash": f"h{i}", "b_run": "run-2", "b_at": (NOW + timedelta(seconds=i)).astimezone(ICT)}
              for i in range(7)]  # the 8th row is left as it was
    mapped = [{"b_id": i + 1, "b_payload": {"MaHoSo": "K-1", "NoiDungXuLy": f"Bước {i} “xử lý”", "SoThuTu": i},
               "b_hash": f"p{i}", "b_at": f"20261127{i:06d}"} for i in range(7)]
    attempt = [{"b_id": i + 1, "b_more": i, "b_at": None if i == 2 else NOW} for i in range(1, 6)]
    batched = []
    real_batch = __import__("psycopg2.extras", fromlist=["execute_batch"]).execute_batch

    def spy(cursor, sql, params, page_size=100):
        batched.append((len(params), page_size))
        return real_batch(cursor, sql, params, page_size=page_size)

    monkeypatch.setattr("psycopg2.extras.execute_batch", spy)
    with _database(backend, tmp_path, "many") as many_url, _database(backend, tmp_path, "each") as each_url:
        for way, url in (("many", many_url), ("each", each_url)):
            s = Store(url)
            s.create_schema()
            with s.begin() as conn:
                insert_ignore(conn, outbox, outbox_rows, "uq_outbox_event")
                insert_ignore(conn, progress_outbox, progress_rows, "uq_progress_entry")
            with s.begin() as conn:
                for statement, rows in ((_FINISH_MANY, finish), (_SET_MAPPED, mapped), (_ATTEMPT, attempt)):
                    if way == "many":
                        execute_many(conn, statement, rows)
                    else:
                        conn.execute(statement, rows)
            s.dispose()
        for table in (outbox, progress_outbox):
            assert _raw(many_url, table.name) == _raw(each_url, table.name)
        s = Store(many_url)
        with s.engine.connect() as conn:
            got = {r.id: r for r in conn.execute(select(outbox))}
            payloads = dict(conn.execute(select(progress_outbox.c.id, progress_outbox.c.payload)).all())
        s.dispose()
    assert [got[i].state for i in range(1, 9)] == ["delivered", "held", "held", "held", "held", "held",
                                                   "delivered", "pending"]
    assert [got[i].attempts for i in range(1, 9)] == [0, 1, 2, 3, 4, 5, 0, 0]
    assert got[3].sent_at is None and got[2].sent_at == NOW and got[7].done_at == NOW + timedelta(seconds=6)
    assert payloads[5]["NoiDungXuLy"] == "Bước 4 “xử lý”" and payloads[8]["NoiDungXuLy"] == "Tiếp nhận"
    # through psycopg2, in pages of VALUES_PAGE statements (not one round trip per row)
    assert batched == ([(7, 3), (7, 3), (5, 3)] if backend == "postgresql" else [])


def test_execute_many_of_one_row_or_none(bus_store):
    with bus_store.begin() as conn:
        insert_ignore(conn, outbox, [{**_rows()["outbox"][2][0]}], "uq_outbox_event")
        execute_many(conn, _ATTEMPT, [])
        execute_many(conn, _ATTEMPT, [{"b_id": 1, "b_more": 4, "b_at": NOW}])
    with bus_store.engine.connect() as conn:
        assert conn.execute(select(outbox.c.state, outbox.c.attempts, outbox.c.sent_at)).one() == ("held", 4, NOW)


# -- throwaway_database: what the tests and the benchmark run a bus on -------------------------------
def test_a_throwaway_database_is_new_and_empty_and_dropped_also_when_its_user_failed():
    from sqlalchemy.engine import make_url

    from lienthong.store import throwaway_database
    from tests.conftest import PG_ADMIN_URL, postgres_databases

    with throwaway_database(PG_ADMIN_URL, "lienthong_throwaway") as url:
        name = make_url(url).database
        assert name.startswith("lienthong_throwaway_") and len(name) == len("lienthong_throwaway_") + 10
        assert postgres_databases(name) == {name}
        s = Store(url)
        s.create_schema()  # it is empty: the whole schema goes in
        s.dispose()
    assert postgres_databases(name) == set()
    with pytest.raises(ZeroDivisionError), throwaway_database(PG_ADMIN_URL, "lienthong_throwaway") as url:
        name = make_url(url).database
        1 / 0  # noqa: B018
    assert postgres_databases(name) == set()
    with throwaway_database(PG_ADMIN_URL, "lienthong_throwaway", keep=True) as url:
        name = make_url(url).database
    try:
        assert postgres_databases(name) == {name}
    finally:
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        engine.dispose()


def test_no_server_is_a_clear_error_without_the_password():
    import socket

    from lienthong.store import DatabaseUnavailable, throwaway_database

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg2://bench:pw-Hidden-4417@127.0.0.1:{port}/postgres"
    with pytest.raises(DatabaseUnavailable) as caught, throwaway_database(url, "lienthong_nowhere", connect_timeout=2):
        pytest.fail("no database can have been made")
    message = str(caught.value)
    assert f"cannot create a database on postgresql+psycopg2://bench:***@127.0.0.1:{port}/postgres" in message
    assert "OperationalError" in message and "pw-Hidden-4417" not in message


_HOLD_THE_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("CREATE TABLE IF NOT EXISTS other_tool (x)")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO other_tool VALUES (1)")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_a_database_another_process_is_writing_is_waited_for_not_locked_on_the_wal_pragma(tmp_path):
    """Another process writes the database file (still in rollback-journal mode: made by another
    tool, or a copy restored from a backup) when a step opens it. The step's first statement, the
    switch to WAL, must wait for the writer like every other statement (busy timeout), not fail with
    "database is locked" once the driver's own timeout (here half a second) runs out."""
    import subprocess
    import sys

    path = tmp_path / "bus.db"
    writer = subprocess.Popen([sys.executable, "-c", _HOLD_THE_WRITE_LOCK, str(path), "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "held"
        s = Store(f"sqlite:///{path}?timeout=0.5")
        try:
            s.create_schema()  # waits for the other process's commit, then switches to WAL
            with s.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("SELECT count(*) FROM other_tool").scalar() == 1
        finally:
            s.dispose()
    finally:
        assert writer.wait(30) == 0
