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
            return {"SoTienDo": "2", "ThoiDiemXuLyCuoi": "20261106080200"}  # the time of entry 2

    report = ProgressReport()
    _reconcile_in_flight(store, Portal(), report, Leases(store, dossier_status.FLOW, "w"))
    assert _states(store) == ["acked", "acked", "pending"] and report.reconciled == 2


def _accepting_portal(sent: list[dict]) -> type:
    """A portal that accepts every progress entry, each appended to ``sent``."""
    from connectors.national_portal.client import BatchResult

    class Portal:
        transport = None

        def update_progress(self, records):
            sent.extend(records)
            return BatchResult(accepted=list(range(len(records))), calls=1)

    return Portal


def _two_steps(store):
    from lienthong.flows.dossier_status import _Item, _stage_progress
    from lienthong.mapping import load_mapping

    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    code = "000.00.02.H49-261106-0001"

    def entry(step: int, finished: str, **extra) -> dict:
        return {"stepId": step, "actor": "Trần Văn Bình", "actorTitle": "Chuyên viên", "department": "Bộ phận một cửa",
                "action": "Tiếp nhận", "status": "processing", "startedAt": finished, "finishedAt": finished, **extra}

    def stage(*entries) -> None:
        item = _Item(outbox_id=0, key=code, version=1, source={"dossierNo": code, "progress": list(entries)},
                     record={}, digest="", attempts=0)
        with store.begin() as conn:
            _stage_progress(conn, mapping, [item], "r")

    return code, entry, stage


def _chunk(store) -> list[str]:
    with store.begin() as conn:
        return [e.entry_key for e in _next_chunk(conn, 10, ProgressReport(), Leases(store, dossier_status.FLOW, "w"))]


def test_a_later_entry_waits_while_an_earlier_one_of_its_dossier_is_in_flight(store):
    """A dead worker's entry 1 is in flight (its lease gone, not reconciled by this run): entry 2
    must not go before it is known to have landed (found in review)."""
    code, entry, stage = _two_steps(store)
    stage(entry(1, "2026-11-06T08:00:00+07:00"), entry(2, "2026-11-06T09:00:00+07:00"))
    with store.begin() as conn:
        conn.execute(update(progress_outbox).where(progress_outbox.c.entry_key == f"{code}#1")
                     .values(state="in_flight", attempts=1))
    assert _chunk(store) == []
    with store.engine.connect() as conn:  # left pending, not held: nothing for an operator to replay
        assert dict(conn.execute(select(progress_outbox.c.entry_key, progress_outbox.c.state)).all()) == {
            f"{code}#1": "in_flight", f"{code}#2": "pending"}


def test_a_later_entry_waits_while_an_earlier_one_staged_meanwhile_is_not_mapped(store):
    """A dossier worker stages a snapshot whose first step does not map, after this progress step
    mapped its backlog: step 2 must wait until the next run maps or dead-letters step 1."""
    _, entry, stage = _two_steps(store)
    stage(entry(1, "2026-11-06T08:00:00+07:00", actor=""), entry(2, "2026-11-06T09:00:00+07:00"))
    assert _chunk(store) == []


def test_an_entry_is_held_only_if_still_behind_a_refused_one_when_the_hold_is_written(store):
    """A worker reads entry 2 as blocked by refused entry 1; an operator's replay commits before the
    worker writes the hold: entry 2 must stay pending (it was held with no dead letter left to
    replay it: found in review)."""
    from lienthong.flows.dossier_status import _HOLD, _PENDING

    code, entry, stage = _two_steps(store)
    stage(entry(1, "2026-11-06T08:00:00+07:00"), entry(2, "2026-11-06T09:00:00+07:00"))
    with store.begin() as conn:
        conn.execute(update(progress_outbox).where(progress_outbox.c.entry_key == f"{code}#1").values(state="rejected"))
        blocked = [r.id for r in conn.execute(_PENDING, {"b_limit": 10}) if r.blocked]
    assert len(blocked) == 1
    with store.begin() as conn:  # the replay: entry 1 back in line
        conn.execute(update(progress_outbox).where(progress_outbox.c.entry_key == f"{code}#1").values(state="pending"))
    with store.begin() as conn:  # the worker's hold, written after it
        assert conn.execute(_HOLD, {"b_ids": blocked}).rowcount == 0
    with store.engine.connect() as conn:
        assert set(conn.execute(select(progress_outbox.c.state)).scalars()) == {"pending"}


def test_a_refused_step_the_one_stop_corrected_is_sent_corrected_after_replay(store):
    """Step 1's actor is too long and the portal never gets it; the one-stop corrects it in its next
    snapshot; replay must send the corrected step (it re-mapped the refused copy, refused it again,
    and the dossier's later steps stayed held for good: found in review)."""
    from lienthong.mapping import load_mapping

    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    code, entry, stage = _two_steps(store)
    sent: list[dict] = []
    Portal = _accepting_portal(sent)  # noqa: N806 - a class

    stage(entry(1, "2026-11-06T08:00:00+07:00", actor="Nguyễn " * 20))  # over the 50 characters
    first = dossier_status.deliver_progress(store, Portal(), run_id="r1", mapping=mapping)
    assert [r["record_key"] for r in first.rejected] == [f"{code}#1"] and sent == []
    stage(entry(1, "2026-11-06T08:00:00+07:00", actor="Nguyễn Văn A"), entry(2, "2026-11-06T09:00:00+07:00"))
    dossier_status.replay(store, flow=dossier_status.PROGRESS_FLOW)
    dossier_status.deliver_progress(store, Portal(), run_id="r2", mapping=mapping)
    assert [e["NguoiXuLy"] for e in sent] == ["Nguyễn Văn A", "Trần Văn Bình"]
    (letter,) = store.dead_letters(dossier_status.PROGRESS_FLOW, unresolved_only=False)
    assert letter["source_payload"]["actor"] == "Nguyễn " * 20  # the dead letter keeps the refused copy


def test_replay_by_dossier_code_releases_the_dossier_held_behind_a_refused_step(store):
    """``deadletter replay --record <dossier code>`` (its help: "every unresolved dead letter of
    this record key (dossier code, ...)"): a refused step's dead letter is keyed by the entry
    (``<code>#<stepId>``), so replaying by the dossier code matched nothing and its later steps
    stayed held. A dossier code whose text holds LIKE wildcards matches only its own entries."""
    from lienthong.mapping import load_mapping

    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    code, entry, stage = _two_steps(store)
    sent: list[dict] = []
    Portal = _accepting_portal(sent)  # noqa: N806 - a class

    stage(entry(1, "2026-11-06T08:00:00+07:00", actor="Nguyễn " * 20), entry(2, "2026-11-06T09:00:00+07:00"))
    first = dossier_status.deliver_progress(store, Portal(), run_id="r1", mapping=mapping)
    assert [r["record_key"] for r in first.rejected] == [f"{code}#1"] and first.held == 1 and sent == []
    other = code.replace("-0001", "-0002")
    with store.begin() as conn:  # another dossier's refused step, whose code differs in one character
        Store.add_dead_letter(conn, flow=PROGRESS_FLOW, record_key=f"{other}#1", outbox_id=None, run_id="r1",
                              stage="peer", error=ValueError("x"), errors=[], source_payload={}, attempts=1)
    stage(entry(1, "2026-11-06T08:00:00+07:00", actor="Nguyễn Văn A"), entry(2, "2026-11-06T09:00:00+07:00"))
    assert dossier_status.replay(store, record_key=code[:-1] + "_").dead_letters == []  # no wildcard match
    result = dossier_status.replay(store, record_key=code)
    assert result.requeued == [f"{code}#1"] and len(result.dead_letters) == 1
    dossier_status.deliver_progress(store, Portal(), run_id="r2", mapping=mapping)
    assert [e["NguoiXuLy"] for e in sent] == ["Nguyễn Văn A", "Trần Văn Bình"]
    assert [d["record_key"] for d in store.dead_letters(PROGRESS_FLOW)] == [f"{other}#1"]  # still unresolved
