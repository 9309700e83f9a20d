"""Progress entries are mapped when they are staged, and sent dossier by dossier, each dossier's in
time order (issue #8: a chunk's state changes then touch a few pages instead of one per entry)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from lienthong.flows import dossier_status
from lienthong.flows.dossier_status import ProgressReport, _Item, _next_chunk, _stage_progress
from lienthong.leases import Leases
from lienthong.mapping import load_mapping
from lienthong.store import content_hash, dead_letter, progress_outbox


D1, D2, DA, DB, DC = (f"000.00.02.H49-261106-00{n}" for n in ("01", "02", "11", "12", "13"))


def _entry(step: int, finished: str, **extra: Any) -> dict[str, Any]:
    return {"stepId": step, "actor": "Trần Văn Bình", "actorTitle": "Chuyên viên", "department": "Bộ phận một cửa",
            "action": "Tiếp nhận", "status": "processing", "startedAt": finished, "finishedAt": finished, **extra}


def _item(key: str, entries: list[dict[str, Any]]) -> _Item:
    source = {"dossierNo": key, "progress": entries}
    return _Item(outbox_id=0, key=key, version=1, source=source, record={}, digest="", attempts=0)


def _rows(store) -> list[Any]:
    with store.engine.connect() as conn:
        return conn.execute(select(progress_outbox).order_by(progress_outbox.c.id)).all()


def test_entries_are_staged_mapped_once(store):
    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    item = _item(D1, [_entry(1, "2026-11-06T08:00:00+07:00"), _entry(2, "2026-11-06T09:30:00+07:00"),
                         {**_entry(3, "2026-11-06T10:00:00+07:00"), "finishedAt": None}])  # under way: later
    with store.begin() as conn:
        _stage_progress(conn, mapping, [item], "run-1")
    rows = _rows(store)
    assert [r.entry_key for r in rows] == [f"{D1}#1", f"{D1}#2"]
    for row, when in zip(rows, ["20261106080000", "20261106093000"], strict=True):
        expected = mapping.apply({**row.source_payload})
        assert row.payload == expected and row.payload_hash == content_hash(expected)
        assert row.occurred_at == when == expected["ThoiDiemXuLy"]
        assert row.state == "pending" and row.staged_run_id == "run-1"

    # the same snapshot again (an unchanged dossier): nothing new, nothing re-mapped or rewritten
    class Refusing:
        def apply(self, record):
            raise AssertionError("an entry staged before was mapped again")

        def record_key(self, record):
            return mapping.record_key(record)

    with store.begin() as conn:
        _stage_progress(conn, Refusing(), [item], "run-2")  # type: ignore[arg-type]
    assert [(r.entry_key, r.staged_run_id) for r in _rows(store)] == [(f"{D1}#1", "run-1"), (f"{D1}#2", "run-1")]


def test_an_entry_the_mapping_refuses_is_staged_unmapped_and_dead_lettered_when_sent(store, monkeypatch):
    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    broken = {**_entry(2, "2026-11-06T09:30:00+07:00"), "finishedAt": "not a time", "startedAt": "not a time"}
    item = _item(D2, [_entry(1, "2026-11-06T08:00:00+07:00"), broken,
                      _entry(3, "2026-11-06T11:00:00+07:00")])
    with store.begin() as conn:
        _stage_progress(conn, mapping, [item], "run-1")
    rows = {r.entry_key: r for r in _rows(store)}
    unmapped = rows[f"{D2}#2"]
    assert unmapped.payload is None and unmapped.payload_hash is None and unmapped.occurred_at == ""
    assert rows[f"{D2}#1"].payload is not None and rows[f"{D2}#3"].payload is not None

    sent: list[list[dict[str, Any]]] = []

    class Portal:
        transport = None

        def update_progress(self, records):
            from connectors.national_portal.client import BatchResult

            sent.append(records)
            return BatchResult(accepted=list(range(len(records))), rejected={}, calls=1)

    report = dossier_status.deliver_progress(store, Portal(), run_id="run-1", mapping=mapping)  # type: ignore[arg-type]
    # dead-lettered with its original payload and the broken field, at the mapping stage; the
    # dossier's other entries wait with it until it is replayed (never sent around it)
    assert sent == []
    assert [(r["record_key"], r["stage"]) for r in report.rejected] == [(f"{D2}#2", "mapping")]
    assert {e["field"] for e in report.rejected[0]["errors"]} == {"ThoiDiemXuLy", "NgayBatDau"}
    with store.engine.connect() as conn:
        letter = conn.execute(select(dead_letter)).one()
    assert letter.source_payload == {**broken, "dossierNo": D2}
    states = {r.entry_key: r.state for r in _rows(store)}
    assert states == {f"{D2}#1": "held", f"{D2}#2": "rejected", f"{D2}#3": "held"}


def test_chunks_go_dossier_by_dossier_each_in_time_order(store):
    """Entries staged out of time order, for dossiers staged out of key order: each chunk holds
    whole dossiers where it can, and each dossier's entries in time order."""
    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    items = [
        _item(DB, [_entry(2, "2026-11-06T10:00:00+07:00"), _entry(1, "2026-11-06T08:00:00+07:00")]),
        _item(DA, [_entry(1, "2026-11-06T12:00:00+07:00"), _entry(2, "2026-11-06T07:00:00+07:00"),
                      _entry(3, "2026-11-06T07:00:00+07:00")]),
        _item(DC, [_entry(1, "2026-11-06T06:00:00+07:00")]),
    ]
    with store.begin() as conn:
        _stage_progress(conn, mapping, items, "run-1")
    leases = Leases(store, dossier_status.FLOW, "w")
    chunks = []
    while True:
        with store.begin() as conn:
            chunk = _next_chunk(conn, 4, ProgressReport(), leases)
        if not chunk:
            break
        chunks.append([c.entry_key for c in chunk])
        with store.begin() as conn:  # as if the portal accepted the chunk
            conn.execute(progress_outbox.update().where(progress_outbox.c.id.in_([c.id for c in chunk]))
                         .values(state="acked", done_at=datetime.now(UTC)))
    leases.release()
    a, b, c = (f"000.00.02.H49-261106-00{n}" for n in (11, 12, 13))
    assert chunks == [[f"{a}#2", f"{a}#3", f"{a}#1", f"{b}#1"], [f"{b}#2", f"{c}#1"]]
