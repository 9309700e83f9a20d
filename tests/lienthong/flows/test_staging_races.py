"""Staging while a worker delivers (PostgreSQL, READ COMMITTED): a newer snapshot of a dossier
supersedes the older one still waiting, and only while it waits. A snapshot that a worker
delivered after staging read it stays delivered."""

from __future__ import annotations

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


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_snapshot_delivered_after_staging_read_it_is_not_marked_superseded(bus_env, monkeypatch, backend):
    with _bus_database(backend, monkeypatch):
        tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
        staging, delivering = store(), store()
        assert staging.engine.dialect.name == backend
        with staging.begin() as conn:
            older = conn.execute(select(outbox).where(outbox.c.state == "pending").order_by(outbox.c.id)).first()
            conn.execute(update(outbox).where(outbox.c.state == "pending", outbox.c.id != older.id)
                         .values(state="superseded"))
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
