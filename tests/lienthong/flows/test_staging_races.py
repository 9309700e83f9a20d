"""Staging while a worker delivers (PostgreSQL, READ COMMITTED): a newer snapshot of a dossier
supersedes the older one still waiting, and only while it waits. A snapshot that a worker
delivered after staging read it stays delivered."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, select, update

from connectors.connection import connection_from_env
from connectors.national_portal.client import NationalPortalClient
from lienthong import tasks
from lienthong.exchange_log import BusRecorder
from lienthong.flows import dossier_status
from lienthong.store import outbox, utcnow
from tests.lienthong.flows.test_delivery_stale_read import _bus_database
from tests.lienthong.flows.test_dossier_scenarios import store


def _one_waiting_snapshot(conn):
    """The first snapshot staging left waiting, every other one superseded: one dossier in play."""
    first = conn.execute(select(outbox).where(outbox.c.state == "pending").order_by(outbox.c.id)).first()
    conn.execute(update(outbox).where(outbox.c.state == "pending", outbox.c.id != first.id).values(state="superseded"))
    return first


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_snapshot_delivered_after_staging_read_it_is_not_marked_superseded(bus_env, monkeypatch, backend):
    with _bus_database(backend, monkeypatch):
        tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
        staging, delivering = store(), store()
        assert staging.engine.dialect.name == backend
        with staging.begin() as conn:
            older = _one_waiting_snapshot(conn)
        newer = {"flow": dossier_status.FLOW, "record_key": older.record_key, "source_seq": older.source_seq + 1000,
                 "source_version": (older.source_version or 0) + 1,
                 "source_payload": {**older.source_payload, "version": (older.source_version or 0) + 1},
                 "state": "pending", "attempts": 0, "staged_run_id": "run-2", "staged_at": utcnow()}
        portal = NationalPortalClient.from_connection(
            connection_from_env(tasks.NATIONAL_PORTAL_CONN_ID),
            recorder=BusRecorder(delivering, dossier_status.FLOW, "run-1"))
        delivered: list[dossier_status.DeliveryReport] = []

        @event.listens_for(staging.engine, "after_cursor_execute")
        def deliver_once_staging_has_read_the_waiting_snapshots(conn, cursor, statement, *args):
            if not delivered and statement.lstrip().startswith("SELECT") and "outbox.attempts" in statement:
                delivered.append(dossier_status.deliver_pending(delivering, portal, run_id="run-1"))

        report = dossier_status.StageReport()
        dossier_status._stage_rows(staging, [newer], "run-2", report)
        portal.close()
        assert delivered[0].delivered_new == 1, "the older snapshot was delivered while staging ran"
        with staging.engine.connect() as conn:
            states = dict(conn.execute(select(outbox.c.source_seq, outbox.c.state)
                                       .where(outbox.c.record_key == older.record_key,
                                              outbox.c.source_seq.in_((older.source_seq, newer["source_seq"])))).all())
        staging.dispose()
        delivering.dispose()
        assert states == {older.source_seq: "delivered", newer["source_seq"]: "pending"}
        assert report.superseded == 0


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_snapshot_whose_dead_letter_is_replayed_while_its_batch_is_read_is_not_held_for_good(
        bus_env, monkeypatch, backend):
    """Delivery reads the batch's blocked dossiers, then an operator's replay commits: the dossier
    is no longer blocked, so its waiting snapshot must not be held (nothing would release it)."""
    from lienthong.store import Store, dead_letter

    with _bus_database(backend, monkeypatch):
        tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
        delivering, operator = store(), store()
        assert delivering.engine.dialect.name == backend
        with operator.begin() as conn:
            refused = _one_waiting_snapshot(conn)
            conn.execute(update(outbox).where(outbox.c.id == refused.id).values(state="rejected"))
            Store.add_dead_letter(conn, flow=dossier_status.FLOW, record_key=refused.record_key,
                                  outbox_id=refused.id, run_id="run-1", stage="peer", error=RuntimeError("refused"),
                                  errors=[], source_payload=refused.source_payload)
            version = (refused.source_version or 0) + 1
            conn.execute(outbox.insert().values(
                flow=dossier_status.FLOW, record_key=refused.record_key, source_seq=refused.source_seq + 1000,
                source_version=version, source_payload={**refused.source_payload, "version": version},
                state="pending", attempts=0, staged_run_id="run-2", staged_at=utcnow()))
        replayed: list[object] = []
        replay = threading.Thread(target=lambda: replayed.append(
            dossier_status.replay(operator, record_key=refused.record_key)))

        @event.listens_for(delivering.engine, "after_cursor_execute")
        def replay_once_the_blocked_dossiers_are_read(conn, cursor, statement, *args):
            if not replay.is_alive() and not replayed and "FROM dead_letter" in statement:
                replay.start()
                replay.join(1.5)  # done at once, unless it waits for this batch

        portal = NationalPortalClient.from_connection(
            connection_from_env(tasks.NATIONAL_PORTAL_CONN_ID),
            recorder=BusRecorder(delivering, dossier_status.FLOW, "run-2"))
        first = dossier_status.deliver_pending(delivering, portal, run_id="run-2")
        replay.join(30)
        assert replayed[0].requeued == [refused.record_key]
        event.remove(delivering.engine, "after_cursor_execute", replay_once_the_blocked_dossiers_are_read)
        second = dossier_status.deliver_pending(delivering, portal, run_id="run-3")
        portal.close()
        with operator.engine.connect() as conn:
            states = dict(conn.execute(select(outbox.c.source_seq, outbox.c.state).where(
                outbox.c.record_key == refused.record_key,
                outbox.c.source_seq.in_((refused.source_seq, refused.source_seq + 1000)))).all())
            unresolved = conn.execute(select(dead_letter.c.id).where(dead_letter.c.resolved_at.is_(None))).all()
        operator.dispose()
        delivering.dispose()
        assert unresolved == []
        assert states == {refused.source_seq: "rejected", refused.source_seq + 1000: "delivered"}, \
            "the replayed dossier's snapshot is delivered, not held with no dead letter left to replay"
        assert first.delivered_new + second.delivered_new == 1
