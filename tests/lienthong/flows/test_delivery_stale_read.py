"""Two workers and one dossier: a worker reads its batch, and before it leases the batch's dossiers
another worker (which held the lease) finishes sending one of them and gives the lease back. What
the first worker read of that dossier's outbox row is then out of date (pending, marked as sent):
it must not be sent again."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

from sqlalchemy import select, update

from connectors.connection import connection_from_env
from connectors.national_portal.client import NationalPortalClient
from lienthong import tasks
from lienthong.exchange_log import BusRecorder
from lienthong.flows import dossier_status
from lienthong.leases import Leases
from lienthong.store import outbox
from tests.conftest import postgres_database
from tests.lienthong.flows.test_dossier_scenarios import histories, store


@contextmanager
def _bus_database(backend: str, monkeypatch) -> Iterator[None]:
    """The bus database of the stand-in environment (SQLite), or a throw-away PostgreSQL one."""
    if backend == "sqlite":
        yield
        return
    with postgres_database("lienthong_stale") as url:
        parts = urlsplit(url.replace("postgresql+psycopg2", "postgresql"))
        monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({
            "conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": parts.username,
            "schema": parts.path.lstrip("/")}))
        yield


def _one_unversioned_dossier() -> str:
    """Leave one pending dossier, its snapshot without ``version`` (the one-stop may leave it out)."""
    bus = store()
    with bus.begin() as conn:
        row = conn.execute(select(outbox.c.id, outbox.c.record_key, outbox.c.source_payload)
                           .where(outbox.c.state == "pending").order_by(outbox.c.id)).first()
        conn.execute(update(outbox).where(outbox.c.state == "pending", outbox.c.id != row.id)
                     .values(state="superseded"))
        payload = {k: v for k, v in row.source_payload.items() if k != "version"}
        conn.execute(update(outbox).where(outbox.c.id == row.id).values(source_payload=payload, source_version=None))
    bus.dispose()
    return row.record_key


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_dossier_another_worker_sent_after_the_batch_was_read_is_not_sent_again(bus_env, monkeypatch, backend):
    with _bus_database(backend, monkeypatch):
        _race(bus_env, backend)


def _race(bus_env, backend: str) -> None:
    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    code = _one_unversioned_dossier()
    spec = connection_from_env(tasks.NATIONAL_PORTAL_CONN_ID)
    bus_a, bus_b = store(), store()
    assert bus_a.engine.dialect.name == backend
    portal_a = NationalPortalClient.from_connection(spec, recorder=BusRecorder(bus_a, dossier_status.FLOW, "run-1"))
    portal_b = NationalPortalClient.from_connection(spec, recorder=BusRecorder(bus_b, dossier_status.FLOW, "run-1"))
    b_sending, a_read, b_done = threading.Event(), threading.Event(), threading.Event()
    send = portal_b.sync_dossiers

    def send_once_a_has_read(records, *, is_updating):
        b_sending.set()
        assert a_read.wait(10)
        return send(records, is_updating=is_updating)

    portal_b.sync_dossiers = send_once_a_has_read

    class LeasingLate(Leases):
        def ensure(self, keys, conn=None):
            if not a_read.is_set():  # the batch is read; the other worker finishes before it is leased
                a_read.set()
                assert b_done.wait(20)
            return super().ensure(keys, conn)

    reports: dict[str, dossier_status.DeliveryReport] = {}

    def deliver(name, bus, portal, leases):
        reports[name] = dossier_status.deliver_pending(bus, portal, run_id="run-1", leases=leases)

    b = threading.Thread(target=deliver, args=("b", bus_b, portal_b, Leases(bus_b, dossier_status.FLOW, "b")))
    b.start()
    assert b_sending.wait(20)
    a = threading.Thread(target=deliver, args=("a", bus_a, portal_a, LeasingLate(bus_a, dossier_status.FLOW, "a")))
    a.start()
    b.join(30)
    b_done.set()
    a.join(30)
    for client in (portal_a, portal_b):
        client.close()
    for bus in (bus_a, bus_b):
        bus.dispose()
    assert reports["b"].delivered_new == 1
    assert (reports["a"].delivered_new, reports["a"].delivered_update, reports["a"].calls) == (0, 0, 0)
    assert [h["isUpdating"] for h in histories(bus_env, code)] == ["False"], "sent once, by the worker that held it"
    bus = store()
    with bus.engine.connect() as conn:
        assert conn.execute(select(outbox.c.state).where(outbox.c.record_key == code,
                                                         outbox.c.state != "superseded")).scalars().all() \
            == ["delivered"]
    bus.dispose()


def test_a_batch_holds_only_rows_still_pending_and_still_behind_a_dead_letter(bus_env, monkeypatch):
    """A batch's "held" update had no condition: it relied on blocked_keys' locks alone. Should what
    blocked_keys read be out of date when the update runs (a replay resolved the dead letter, another
    worker finished the row), a row was held with no dead letter left to release it, or a finished
    row put back in line. It is now held only if still pending and still behind an unresolved one."""
    from connectors.errors import RecordRejected
    from lienthong.store import Store, dead_letter, utcnow

    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    bus = store()
    with bus.begin() as conn:
        rows = conn.execute(select(outbox.c.id, outbox.c.record_key).where(outbox.c.state == "pending")
                            .order_by(outbox.c.id).limit(3)).all()
        for row in rows[:2]:  # freed by a replay meanwhile / really blocked
            Store.add_dead_letter(conn, flow=dossier_status.FLOW, record_key=row.record_key, outbox_id=None,
                                  run_id="run-0", stage="peer", error=RecordRejected(row.record_key, []),
                                  errors=[], source_payload={})
    freed, blocked, finished = (r.record_key for r in rows)
    real = dossier_status.blocked_keys

    def read_then_changed(conn, flow, keys):
        keys = list(keys)
        found = real(conn, flow, keys)
        if freed not in keys:  # a later batch
            return found
        assert {freed, blocked} <= found
        # what happens between the read and the hold when the locks do not hold it off
        conn.execute(dead_letter.update().where(dead_letter.c.record_key == freed)
                     .values(resolved_at=utcnow(), resolution="replayed by test"))
        conn.execute(update(outbox).where(outbox.c.record_key == finished).values(state="delivered"))
        return found | {finished}

    monkeypatch.setattr(dossier_status, "blocked_keys", read_then_changed)
    portal = NationalPortalClient.from_connection(connection_from_env(tasks.NATIONAL_PORTAL_CONN_ID))
    report = dossier_status.deliver_pending(bus, portal, run_id="run-1", batch_size=3)
    portal.close()
    assert report.held == 1
    with bus.engine.connect() as conn:
        states = dict(conn.execute(select(outbox.c.record_key, outbox.c.state)
                                   .where(outbox.c.id.in_([r.id for r in rows]))).all())
    bus.dispose()
    assert states == {freed: "pending", blocked: "held", finished: "delivered"}
