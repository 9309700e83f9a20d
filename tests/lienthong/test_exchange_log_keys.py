"""Record keys of the exchange log: a key longer than its column (a peer's over-long dossier number
or payment reference) is kept, cut to fit and ended by a hash of the whole, and found again by the
whole key — by search, by the CLI and by erasure."""

from __future__ import annotations

import dataclasses

from sqlalchemy import select

from lienthong.audit.redact import redact_exchanges
from lienthong.audit.search import search_exchanges
from lienthong.exchange_log import BusRecorder, exchanges_for_key, record_key_stored
from lienthong.store import exchange_key

from .test_exchange_log_holding import _exchange

LONG = "000.00.03.H49-" + "9" * 300
LONG_TOO = "000.00.03.H49-" + "9" * 299 + "8"  # cut alike, another key
WITH_NUL = "000.00.03.H49-261120-0032\x00"  # PostgreSQL's text refuses NUL


def test_an_over_long_record_key_is_kept_and_found_by_the_whole_key(bus_store):
    recorder = BusRecorder(bus_store, "report_agreement", "run-1")
    recorder.record(dataclasses.replace(_exchange(1), record_keys=(LONG, "D-short")))
    recorder.record(dataclasses.replace(_exchange(2), record_keys=(LONG_TOO,)))
    recorder.record(dataclasses.replace(_exchange(3), record_keys=(WITH_NUL,)))
    with bus_store.engine.connect() as conn:
        stored = sorted(conn.execute(select(exchange_key.c.record_key)).scalars())
    assert len(stored) == 4 and all(len(k) <= 200 and "\x00" not in k for k in stored) and "D-short" in stored
    assert record_key_stored(LONG) != record_key_stored(LONG_TOO)
    assert record_key_stored(LONG).startswith(LONG[:150]) and record_key_stored("D-short") == "D-short"
    assert [r["id"] for r in exchanges_for_key(bus_store, LONG)] == [1]
    assert [r["id"] for r in exchanges_for_key(bus_store, LONG_TOO)] == [2]
    assert [r["id"] for r in exchanges_for_key(bus_store, WITH_NUL)] == [3]
    assert record_key_stored(WITH_NUL).startswith("000.00.03.H49-261120-0032\\0…")
    assert [r["id"] for r in search_exchanges(bus_store, key=LONG)] == [1]
    erased = redact_exchanges(bus_store, key=LONG, reason="erasure request", actor="dpo")
    assert erased.fields == 1  # exchange 1's phone number; exchange 2 untouched
