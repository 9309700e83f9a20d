"""Held exchanges (issue #8): inside ``BusRecorder.holding()`` a call's exchange-log rows are
written by the transaction that acts on its answer, never later, and never lost on an error."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from connectors.transport import Exchange
from lienthong.exchange_log import BusRecorder
from lienthong.store import Store, exchange_key, exchange_log, exchange_personal_field, sync_cursor


def _exchange(n: int) -> Exchange:
    return Exchange(
        peer="national_portal", operation="CapNhatTienDoHoSoMC", method="POST", url="http://127.0.0.1:1/x",
        started_at=datetime(2026, 11, 27, 8, 0, n, tzinfo=UTC), duration_ms=1.0, attempt=1, outcome="ok",
        record_keys=(f"D-{n}",), request_headers={"Content-Type": "application/json"},
        request_body=b'{"data":[{"MaHoSo":"D","SoDienThoai":"0912345678"}]}', response_status=200,
        response_headers={"Content-Type": "application/json"}, response_body=b'{"error_code":0}', peer_code="0")


def _count(store: Store, table=exchange_log) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_held_rows_commit_with_the_transaction_that_acts_on_the_answer(store):
    recorder = BusRecorder(store, "dossier_status", "run-1")
    with recorder.holding():
        recorder.record(_exchange(1))
        assert _count(store) == 0  # held, not yet written
        with recorder.begin() as conn:
            Store.set_cursor(conn, "dossier_status", "c1", "run-1")
        assert _count(store) == 1 and _count(store, exchange_key) == 1
        assert _count(store, exchange_personal_field) == 1  # the phone number, committed
        with recorder.begin():
            pass
        assert _count(store) == 1  # written once
    recorder.record(_exchange(2))  # outside: its own transaction at once, as before
    assert _count(store) == 2


def test_rows_of_a_failed_transaction_stay_held_and_are_written_when_the_block_ends(store):
    recorder = BusRecorder(store, "dossier_status", "run-1")
    with pytest.raises(RuntimeError), recorder.holding():
        recorder.record(_exchange(1))
        with recorder.begin() as conn:
            Store.set_cursor(conn, "dossier_status", "c1", "run-1")
            raise RuntimeError("the settling failed")
    assert _count(store) == 1  # the exchange is logged; what it would have caused is not
    assert _count(store, sync_cursor) == 0


def test_nested_holding_shares_the_outer_block(store):
    recorder = BusRecorder(store, "dossier_status", "run-1")
    with recorder.holding():
        recorder.record(_exchange(1))
        with recorder.holding():
            recorder.record(_exchange(2))
        assert _count(store) == 0
        with recorder.begin():
            pass
        assert _count(store) == 2


def test_held_rows_the_database_refuses_at_the_end_of_the_block_are_named_in_the_log(store, caplog, monkeypatch):
    """Held exchanges whose answer was never acted on, and that cannot be written when the block
    ends either (the bus database still refusing), are named in the task's log, not dropped unsaid."""
    import logging

    from sqlalchemy.exc import OperationalError

    recorder = BusRecorder(store, "dossier_status", "run-1")

    def refuse(*_a, **_k):
        raise OperationalError("INSERT ...", {"body": "0912345678"}, Exception("database is locked"))

    with caplog.at_level(logging.ERROR), pytest.raises(OperationalError), recorder.holding():
        recorder.record(_exchange(1))
        recorder.record(_exchange(2))
        monkeypatch.setattr(BusRecorder, "_write_all", classmethod(lambda cls, conn, prepared: refuse()))
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 2 and all("NOT RECORDED: Exception: database is locked" in m for m in logged), logged
    assert "national_portal CapNhatTienDoHoSoMC attempt 1" in logged[0] and "keys: D-1" in logged[0]
    assert "keys: D-2" in logged[1] and not any("0912345678" in m for m in logged)
    assert _count(store) == 0
