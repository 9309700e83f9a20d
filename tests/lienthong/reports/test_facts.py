"""Dossier facts follow the outbox: newest version wins, reruns change nothing, the sync flows are untouched."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import select

from lienthong.reports.facts import FACTS_CURSOR, record_dossier_facts, refresh_dossier_facts
from lienthong.store import Store, dossier_fact, outbox, utcnow


def _snapshot(no: str, version: int, status: str, **extra) -> dict:
    return {"dossierNo": no, "version": version, "dossierStatus": status, "govAgencyCode": "000.00.01.H49",
            "govAgencyName": "Sở Tư pháp", "serviceCode": "1.000894.000.00.00.H49", "submissionChannel": "online",
            "submitDate": "2026-11-02T08:15:00+07:00", "receiveDate": None, "dueDate": None, "finishDate": None,
            "modifiedAt": f"2026-11-02T0{8 + version}:00:00+07:00", "progress": [{}] * version, **extra}


def _stage(store: Store, seq: int, snapshot: dict) -> None:
    with store.begin() as conn:
        conn.execute(outbox.insert().values(flow="dossier_status", record_key=snapshot["dossierNo"], source_seq=seq,
                                            source_version=snapshot["version"], source_payload=snapshot,
                                            state="pending", attempts=0, staged_at=utcnow()))


def _facts(store: Store) -> dict:
    with store.engine.connect() as conn:
        return {r.dossier_no: r for r in conn.execute(select(dossier_fact))}


def test_newest_version_wins_and_reruns_change_nothing(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    store.create_schema()
    _stage(store, 1, _snapshot("A-1", 1, "receiving"))
    _stage(store, 2, _snapshot("A-1", 2, "new", dueDate="2026-11-09T08:15:00+07:00"))
    _stage(store, 3, _snapshot("B-1", 1, "receiving"))
    assert refresh_dossier_facts(store) == 2
    assert refresh_dossier_facts(store) == 0  # nothing new: the bookmark covers every row
    facts = _facts(store)
    assert facts["A-1"].status == "new" and facts["A-1"].progress_count == 2
    assert facts["A-1"].due_at == datetime(2026, 11, 9, 1, 15, tzinfo=UTC)
    # a late, older snapshot (a backfill) never overwrites the newer fact
    _stage(store, -1, _snapshot("A-1", 1, "receiving"))
    assert refresh_dossier_facts(store) == 0
    assert _facts(store)["A-1"].status == "new"
    assert int(store.get_cursor(FACTS_CURSOR)) == 4
    # the hook form does the same for a flow that prefers to keep facts as it stages
    with store.begin() as conn:
        assert record_dossier_facts(conn, [{"record_key": "B-1", "source_payload": _snapshot("B-1", 3, "processing")},
                                           {"record_key": "<no dossierNo, seq 9>", "source_payload": {}}]) == 1
    assert _facts(store)["B-1"].status == "processing"
    # the outbox rows are left as the flow staged them
    with store.engine.connect() as conn:
        assert {r.state for r in conn.execute(select(outbox.c.state))} == {"pending"}


def test_a_lower_id_committed_after_a_higher_one_is_not_skipped(bus_store):
    """Two stagers at once (the DAG and a CLI backfill): on PostgreSQL the row that took the lower
    id can commit after the refresh has read the higher one. The bookmark must not pass it."""
    store = bus_store
    slow = store.engine.connect()
    slow.begin()
    slow.execute(outbox.insert().values(flow="dossier_status", record_key="SLOW-1", source_seq=1, source_version=1,
                                        source_payload=_snapshot("SLOW-1", 1, "receiving"), state="pending",
                                        attempts=0, staged_at=utcnow()))
    if store.engine.dialect.name == "sqlite":  # one writer at a time: the ids commit in order there
        slow.commit()
        slow.close()
        slow = None
    else:
        _stage(store, 2, _snapshot("FAST-1", 1, "receiving"))  # the higher id, committed first
    done: list[int] = []
    refresh = threading.Thread(target=lambda: done.append(refresh_dossier_facts(store)))
    refresh.start()
    if slow is not None:
        refresh.join(1.0)
        slow.commit()
        slow.close()
    refresh.join(30)
    assert not refresh.is_alive()
    refresh_dossier_facts(store)
    if store.engine.dialect.name == "sqlite":
        _stage(store, 2, _snapshot("FAST-1", 1, "receiving"))
        refresh_dossier_facts(store)
    assert set(_facts(store)) == {"SLOW-1", "FAST-1"}


def test_a_snapshot_with_an_over_long_code_does_not_stop_the_facts(bus_store, caplog):
    """The outbox keeps the one-stop's snapshots as they came (the mapping refuses bad ones only
    when it delivers them). A code longer than its dossier_fact column (channel 16, status 32,
    agency and procedure 64) failed the refresh on PostgreSQL at every run, the bookmark stuck
    before it: no KPI report again. The value is left out, named in the log; the dossier counts."""
    store = bus_store
    _stage(store, 1, _snapshot("LONG-1", 1, "receiving", submissionChannel="trực tuyến qua Cổng DVC quốc gia",
                               govAgencyCode="A" * 65, serviceCode="1." + "9" * 70))
    _stage(store, 2, _snapshot("OK-1", 1, "s" * 33))
    with caplog.at_level("WARNING", logger="lienthong.reports.facts"):
        assert refresh_dossier_facts(store) == 2
    facts = _facts(store)
    long, ok = facts["LONG-1"], facts["OK-1"]
    assert (long.channel, long.agency_code, long.procedure_code, long.status) == (None, None, None, "receiving")
    assert (ok.channel, ok.agency_code, ok.status) == ("online", "000.00.01.H49", None)
    assert int(store.get_cursor(FACTS_CURSOR)) == max(r.outbox_id for r in facts.values())
    logged = caplog.text
    assert "LONG-1: submissionChannel longer than 16 characters" in logged
    assert "OK-1: dossierStatus longer than 32 characters" in logged


def test_two_refreshes_at_once_keep_each_fact_once_and_both_succeed(bus_store):
    """Two refreshes at once (the DAG's task and `lienthong report kpi`) read the same bookmark and
    found the same facts missing; the second to insert failed on the key (IntegrityError on
    PostgreSQL and SQLite) and its report with it. The facts are one upsert now: the refresh that
    comes second changes nothing and succeeds."""
    from sqlalchemy import event

    for n in range(40):
        _stage(bus_store, n + 1, _snapshot(f"C-{n:02d}", 1, "receiving"))
    # both refreshes reach their first write of a fact before either makes it: each has read
    # what the other had not written yet
    barrier = threading.Barrier(2)
    waited = threading.local()

    def hold(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO DOSSIER_FACT") and not getattr(waited, "done", False):
            waited.done = True
            try:
                barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass

    stores = [Store(bus_store.url) for _ in range(2)]
    changed: list[int] = []
    errors: list[BaseException] = []

    def refresh(store: Store) -> None:
        try:
            changed.append(refresh_dossier_facts(store))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for s in stores:
        event.listen(s.engine, "before_cursor_execute", hold)
    try:
        threads = [threading.Thread(target=refresh, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for s in stores:
            s.dispose()
    assert not barrier.broken
    assert errors == []
    assert sorted(changed) == [0, 40]
    facts = _facts(bus_store)
    assert sorted(facts) == [f"C-{n:02d}" for n in range(40)]
    assert int(bus_store.get_cursor(FACTS_CURSOR)) == 40
