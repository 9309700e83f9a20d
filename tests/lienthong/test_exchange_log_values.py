"""Values a peer put in an exchange that the bus database cannot hold as they are (a NUL, a lone
surrogate from a JSON ``\\ud800`` escape, a code longer than its column) never stop the exchange
from being recorded: the call already happened at the peer."""

from __future__ import annotations

import dataclasses

from sqlalchemy import select

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
