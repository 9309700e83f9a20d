"""Values a peer put in an exchange that the bus database cannot hold as they are (a NUL, a lone
surrogate from a JSON ``\\ud800`` escape, a code longer than its column) never stop the exchange
from being recorded: the call already happened at the peer."""

from __future__ import annotations

import dataclasses

import pytest

from sqlalchemy import event, select

from lienthong.audit import seal_exchanges, verify_exchanges
from lienthong.audit.keys import generate_keypair, load_private_key, load_public_key
from lienthong.exchange_log import BusRecorder, exchanges_for_key
from lienthong.store import exchange_key, exchange_log

from .test_exchange_log_holding import _exchange

LONE = "000.00.01.H49-261102-0001\ud800"  # a dossier code read from JSON with a lone surrogate escape


def test_values_the_database_cannot_hold_as_they_are_are_recorded_escaped_and_fitted(bus_store, tmp_path):
    recorder = BusRecorder(bus_store, "payment_receipts", "run-1", "collect")
    odd = dataclasses.replace(
        _exchange(1), record_keys=(LONE, "D-1", "D-1"), peer_code="E" * 40,  # MaLoi longer than its column
        error="ProtocolError: HTTP 501 Not\x00Implemented \udc80", url="http://127.0.0.1:1/x?c=\x00",
        response_headers={"Content-Type": "application/json", "X-Trace": "a\udc80b\x00"})
    recorder.record(odd)
    recorder.record(_exchange(2))
    with bus_store.engine.connect() as conn:
        rows = conn.execute(select(exchange_log).order_by(exchange_log.c.id)).mappings().all()
        keys = sorted(conn.execute(select(exchange_key.c.record_key).where(exchange_key.c.exchange_id == 1)).scalars())
    assert [r["id"] for r in rows] == [1, 2]
    row = rows[0]
    assert len(row["peer_code"]) <= 32 and row["peer_code"].startswith("E" * 18)
    assert row["error"] == "ProtocolError: HTTP 501 Not\\0Implemented \\udc80"
    assert row["url"] == "http://127.0.0.1:1/x?c=\\0"
    assert row["response_headers"] == {"Content-Type": "application/json", "X-Trace": "a\\udc80b\\0"}
    assert len(keys) == 2 and "D-1" in keys
    assert [r["id"] for r in exchanges_for_key(bus_store, LONE)] == [1]  # found again by the key as given
    private_path, public_path, _ = generate_keypair(tmp_path / "keys" / "seal.key")
    seal_exchanges(bus_store, load_private_key(private_path), batch_size=10)
    result = verify_exchanges(bus_store, load_public_key(public_path), deep=True)
    assert result.ok and result.records_checked == 2, result.failure


def test_an_exchange_the_log_cannot_write_fails_the_call_clearly_once_and_is_logged(tmp_path, caplog):
    """The bus database locked while a delivery's answer comes in: the call happened at the peer,
    but its answer is not trusted unrecorded (design §4.4). The call fails at once, without asking
    the peer again, as a retriable ExchangeNotRecorded naming the peer, operation, answer and cause
    (never a value of the row), and the exchange it could not write is named in the task's log."""
    import logging
    import sqlite3

    from connectors.errors import ExchangeNotRecorded, RetriableConnectorError
    from connectors.transport import HttpTransport, RetryPolicy
    from lienthong.store import Store
    from tests.connectors.local_peer import Peer, answer

    path = tmp_path / "bus.db"
    store = Store(f"sqlite:///{path}")
    store.create_schema()
    store.engine.dispose()  # new connections wait 50 ms for a lock, not the bus's 30 s
    event.listen(store.engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout=50"))
    peer = Peer(lambda h, body: answer(h, 200, {"error_code": 0}))
    transport = HttpTransport(peer="national_portal", base_url=peer.url, seed=1, sleep=lambda s: None,
                              recorder=BusRecorder(store, "dossier_status", "run-1", "deliver"),
                              retry=RetryPolicy(max_attempts=3))
    lock = sqlite3.connect(path)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the bus database
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(ExchangeNotRecorded) as failed:
            transport.send("POST", "/x", operation="DongBoHoSoMC", record_keys=["000.00.01.H49-261102-0001"],
                           json_body={"data": [{"SoDienThoai": "0912345678"}]})
    finally:
        lock.rollback()
        lock.close()
        transport.close()
        peer.close()
    error = failed.value
    assert isinstance(error, RetriableConnectorError) and error.status == 200
    assert (error.peer, error.operation) == ("national_portal", "DongBoHoSoMC")
    assert "OperationalError: database is locked" in str(error) and "not used" in str(error)
    assert error.__cause__ is None and error.__suppress_context__
    assert len(peer.requests) == 1  # not asked again: the first call may have taken effect
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("national_portal DongBoHoSoMC attempt 1" in m and "000.00.01.H49-261102-0001" in m
               and "HTTP 200" in m for m in logged), logged
    assert not any("0912345678" in m for m in [*logged, str(error)])
    with store.engine.connect() as conn:
        assert conn.execute(select(exchange_log.c.id)).first() is None
    store.dispose()
