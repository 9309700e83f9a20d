"""Progress entries another worker settles while this one waits for their dossier's lease are not
sent again (issue #8/#9): ``_next_chunk`` and ``_reconcile_in_flight`` read the entries again once
the lease is held, instead of trusting what they read before it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update

from lienthong.flows import dossier_status
from lienthong.flows.dossier_status import PROGRESS_FLOW, ProgressReport, _next_chunk, _reconcile_in_flight
from lienthong.leases import Leases
from lienthong.store import Store, progress_outbox


def _stage(store: Store, state: str, entries: int = 3, dossier: str = "D-1") -> list[int]:
    now = datetime(2026, 11, 27, tzinfo=UTC)
    with store.begin() as conn:
        conn.execute(progress_outbox.insert(), [
            {"flow": PROGRESS_FLOW, "record_key": dossier, "entry_key": f"{dossier}#{i}", "step_id": i,
             "occurred_at": f"2026110608{i:02d}00", "source_payload": {"stepId": i}, "payload": {"MaHoSo": dossier},
             "payload_hash": f"h{i}", "state": state, "attempts": 1 if state == "in_flight" else 0,
             "staged_at": now} for i in range(1, entries + 1)])
        return list(conn.execute(select(progress_outbox.c.id).order_by(progress_outbox.c.id)).scalars())


class _LateLeases(Leases):
    """Leases that, just before leasing, let "another worker" finish the dossier's entries and give
    its lease back (what can happen between an unlocked read and the lease)."""

    def __init__(self, store: Store, finish_as: str):
        super().__init__(store, dossier_status.FLOW, "late")
        self.finish_as = finish_as
        self.finished = False

    def ensure(self, keys, conn=None):
        if not self.finished:
            self.finished = True
            with self.store.begin() as other:
                other.execute(update(progress_outbox).values(state=self.finish_as))
        return super().ensure(keys, conn)


def _states(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(progress_outbox.c.state).order_by(progress_outbox.c.id)).scalars())


def test_entries_acknowledged_by_another_worker_before_the_lease_are_not_chosen(store):
    _stage(store, "pending")
    leases = _LateLeases(store, finish_as="acked")
    with store.begin() as conn:
        chunk = _next_chunk(conn, 10, ProgressReport(), leases)
    assert chunk == [] and _states(store) == ["acked"] * 3


def test_entries_settled_by_another_worker_before_the_lease_are_not_reset_to_pending(store):
    _stage(store, "in_flight")

    class Portal:
        def lookup_dossier(self, key):
            return {"SoTienDo": "3"}  # the other worker's entries landed (and it recorded them as acked)

    report = ProgressReport()
    _reconcile_in_flight(store, Portal(), report, _LateLeases(store, finish_as="acked"))
    assert _states(store) == ["acked"] * 3 and report.reconciled == 0


def test_entries_still_in_flight_after_the_lease_are_reconciled_by_count(store):
    _stage(store, "in_flight")

    class Portal:
        def lookup_dossier(self, key):
            return {"SoTienDo": "2"}

    report = ProgressReport()
    _reconcile_in_flight(store, Portal(), report, Leases(store, dossier_status.FLOW, "w"))
    assert _states(store) == ["acked", "acked", "pending"] and report.reconciled == 2
