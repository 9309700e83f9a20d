"""The cost of taking the next progress chunk follows the chunk, not the outbox (issue #8): on
PostgreSQL before its first ANALYZE of a growing table — a first sync — the "is this dossier
blocked" probe written as ``state IN ('rejected', 'held')`` read every entry of the flow for each
entry of the chunk (24 ms per chunk at 4,677 entries, found by ``python -m bench --postgres``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, text

from lienthong.flows.dossier_status import _PENDING, PROGRESS_FLOW, ProgressReport, _next_chunk
from lienthong.leases import Leases
from lienthong.store import Store, insert_ignore, progress_outbox
from tests.conftest import postgres_database

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def _stage(store: Store, dossiers: range, *, state: str = "pending") -> None:
    rows = [{"flow": PROGRESS_FLOW, "record_key": f"D-{d:06d}", "entry_key": f"D-{d:06d}#{i}", "step_id": i,
             "occurred_at": f"2026110608{i:02d}00", "source_payload": {"stepId": i},
             "payload": {"MaHoSo": f"D-{d:06d}"}, "payload_hash": f"h{i}", "state": state, "attempts": 0,
             "staged_at": NOW} for d in dossiers for i in range(1, 6)]
    with store.begin() as conn:
        for start in range(0, len(rows), 5000):
            insert_ignore(conn, progress_outbox, rows[start:start + 5000], "uq_progress_entry")


def _blocks_read(store: Store) -> int:
    """Buffers PostgreSQL touched to take the first chunk of 50 (the plan's own count: exact, no timer)."""
    with store.engine.connect() as conn:
        sql = str(_PENDING.limit(50).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        plan: Any = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql).scalar()
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def test_taking_a_chunk_on_postgresql_reads_a_few_blocks_per_entry_whatever_the_outbox_size() -> None:
    """Never analyzed, as in a first sync. Probed the old way, PostgreSQL's plan depended on the
    table's size: for a chunk of 50 it read 1,459 blocks at 2,500 entries and 5,409 at 10,000 (the
    flow's whole index, once per entry), and at 50,000 it switched to hashing the blocked entries. Each probe is now an exact
    index prefix: about two to three blocks per probe (one more as the index grows a level), four
    probes per entry (blocked: rejected, held; waits: in flight, not mapped), whatever the size
    (459, 459 and 660 blocks for a chunk of 50 at 2,500, 10,000 and 50,000 entries)."""
    with postgres_database("lienthong_scale") as url:
        store = Store(url)
        try:
            store.create_schema()
            read, staged = {}, 0
            for dossiers in (500, 2_000, 10_000):  # 2,500, 10,000 and 50,000 entries
                _stage(store, range(staged, dossiers))
                staged = dossiers
                read[dossiers * 5] = _blocks_read(store)
            assert all(blocks <= 16 * 50 for blocks in read.values()), read
        finally:
            store.dispose()


@pytest.mark.parametrize("blocked_as", ["rejected", "held"])
def test_a_dossier_behind_a_rejected_or_held_entry_is_still_passed_over(bus_store, blocked_as: str) -> None:
    """The probe's two halves each still block: the dossier's other entries are held, the rest go."""
    _stage(bus_store, range(3))
    with bus_store.begin() as conn:
        conn.execute(progress_outbox.update().where(progress_outbox.c.entry_key == "D-000001#1")
                     .values(state=blocked_as))
    report = ProgressReport()
    with bus_store.begin() as conn:
        chosen = _next_chunk(conn, 50, report, Leases(bus_store, "dossier_status", "w1"))
    assert sorted(e.entry_key for e in chosen) == [f"D-{d:06d}#{i}" for d in (0, 2) for i in range(1, 6)]
    assert report.held == 4
    with bus_store.engine.connect() as conn:
        states = dict(conn.execute(select(progress_outbox.c.entry_key, progress_outbox.c.state)).all())
    assert [states[f"D-000001#{i}"] for i in range(1, 6)] == [blocked_as, "held", "held", "held", "held"]


def test_tables_grown_since_their_statistics_are_analyzed_once_and_plans_follow() -> None:
    """``Store.keep_statistics``: a table that grew past the threshold since its last ANALYZE is
    analyzed (this machine's PostgreSQL runs no autovacuum, as a busy server may not get to it
    during a first sync), one that did not is left alone; with statistics the "already staged?"
    lookup of a batch's progress entries probes ``uq_progress_entry`` instead of reading every entry
    of the flow (2,646 blocks at 100,000 entries before)."""
    from lienthong.flows.dossier_status import _STAGED_ENTRIES

    with postgres_database("lienthong_stats") as url:
        store = Store(url)
        try:
            store.create_schema()
            _stage(store, range(100))  # 500 rows: under the threshold
            assert store.keep_statistics([progress_outbox]) == []
            _stage(store, range(100, 10_000))  # 50,000 rows
            assert store.keep_statistics([progress_outbox]) == ["progress_outbox"]
            assert store.keep_statistics([progress_outbox]) == []  # nothing changed since
            keys = [f"D-{d:06d}#{i}" for d in range(4_975, 5_025) for i in range(1, 6)]
            with store.engine.connect() as conn:
                analyzed = conn.execute(text("SELECT analyze_count FROM pg_stat_user_tables "
                                             "WHERE relname = 'progress_outbox'")).scalar()
                sql = str(_STAGED_ENTRIES.params(b_keys=keys).compile(
                    dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                plan: Any = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql).scalar()
                found = conn.exec_driver_sql(sql).scalars().all()
                # a small sample (Store.ANALYZE_STATISTICS_TARGET, not the server's 100): histograms
                # of at most target + 1 bounds; record_key has 10,000 distinct values, enough for 101
                bounds = conn.execute(text(
                    "SELECT max(array_length(histogram_bounds::text::text[], 1)) FROM pg_stats "
                    "WHERE tablename = 'progress_outbox' AND schemaname = current_schema()")).scalar()
            assert analyzed == 1
            assert bounds == Store.ANALYZE_STATISTICS_TARGET + 1
            assert sorted(found) == sorted(keys)
            top = plan[0]["Plan"]
            assert int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"]) <= 4 * len(keys), top
        finally:
            store.dispose()


def test_keeping_statistics_is_nothing_on_sqlite(store: Store) -> None:
    _stage(store, range(1_000))
    assert store.keep_statistics([progress_outbox]) == []
