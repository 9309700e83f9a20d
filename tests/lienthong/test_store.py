"""``insert_ignore`` on SQLite sends its rows to the driver with each column type's own bind
processor (issue #8). What it stores must be, byte for byte, what SQLAlchemy's own insert stores,
for every table the flows stage into; what it reads back must be the same Python values; and the
count of new rows must be the same, conflicts included."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from lienthong import store as store_module
from lienthong.store import (
    Store,
    exchange_blob,
    insert_ignore,
    outbox,
    payment_txn,
    progress_outbox,
    sync_run,
)

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


def _raw(path, table: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()  # noqa: S608


@pytest.mark.parametrize("name", ["outbox", "progress_outbox", "payment_txn", "exchange_blob"])
def test_the_driver_path_stores_what_sqlalchemy_stores(tmp_path, monkeypatch, name):
    table, constraint, rows = _rows()[name]
    stores = {}
    for way in ("driver", "sqlalchemy"):
        path = tmp_path / f"{way}.db"
        s = Store(f"sqlite:///{path}")
        s.create_schema()
        if way == "sqlalchemy":
            monkeypatch.setattr(store_module, "_sqlite_insert_plan", lambda *a: None)
        with s.begin() as conn:
            if way == "driver":
                assert store_module._sqlite_insert_plan(conn, table, rows) is not None
            assert insert_ignore(conn, table, rows, constraint) == len(rows)
            # the same rows again, and one new: only the new one counts
            again = [*rows, {**rows[0], **{k: f"{v}-new" for k, v in rows[0].items() if k in (
                "record_key", "entry_key", "reference", "sha256")}}]
            if name == "outbox":
                again[-1]["source_seq"] = 99
            assert insert_ignore(conn, table, again, constraint) == 1
        monkeypatch.undo()
        stores[way] = (s, path)
    assert _raw(stores["driver"][1], table.name) == _raw(stores["sqlalchemy"][1], table.name)
    read = {}
    for way, (s, _) in stores.items():
        with s.engine.connect() as conn:
            read[way] = [dict(r) for r in conn.execute(select(table)).mappings()]
        s.dispose()
    assert read["driver"] == read["sqlalchemy"] and len(read["driver"]) == len(rows) + 1


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
