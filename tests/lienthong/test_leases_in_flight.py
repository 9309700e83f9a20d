"""A batch whose call to the portal outlives the leases' ``ttl``: the worker keeps its dossiers
leased while it waits for the answer, so another worker never takes them over and sends them again
(one delivery, one exchange-log record of it)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import func, select, update

from connectors.connection import connection_from_env
from connectors.national_portal.client import NationalPortalClient
from lienthong import tasks
from lienthong.exchange_log import BusRecorder
from lienthong.flows import dossier_status
from lienthong.leases import Leases
from lienthong.store import exchange_key, exchange_log, outbox
from tests.lienthong.flows.test_dossier_scenarios import histories, post, store

TTL = timedelta(seconds=0.6)


def test_a_batch_answered_after_its_leases_ttl_is_not_sent_again_by_another_worker(bus_env):
    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    bus_a, bus_b = store(), store()
    with bus_a.begin() as conn:  # one dossier in play
        first = conn.execute(select(outbox).where(outbox.c.state == "pending").order_by(outbox.c.id)).first()
        conn.execute(update(outbox).where(outbox.c.state == "pending", outbox.c.id != first.id)
                     .values(state="superseded"))
    code = first.record_key
    # the portal answers a dossier batch after 2 s: more than three times the leases' life
    post(bus_env, "portal", "/_admin/faults", {"latency_ms": 2000, "operations": ["DongBoHoSoMC"]})
    spec = connection_from_env(tasks.NATIONAL_PORTAL_CONN_ID)
    portal_a = NationalPortalClient.from_connection(spec, recorder=BusRecorder(bus_a, dossier_status.FLOW, "run-a"))
    portal_b = NationalPortalClient.from_connection(spec, recorder=BusRecorder(bus_b, dossier_status.FLOW, "run-b"))
    sending = threading.Event()
    send = portal_a.sync_dossiers

    def sending_slowly(records, *, is_updating):
        sending.set()
        return send(records, is_updating=is_updating)

    portal_a.sync_dossiers = sending_slowly
    reports: dict[str, dossier_status.DeliveryReport] = {}
    a = threading.Thread(target=lambda: reports.__setitem__("a", dossier_status.deliver_pending(
        bus_a, portal_a, run_id="run-a", leases=Leases(bus_a, dossier_status.FLOW, "a", ttl=TTL))))
    a.start()
    try:
        assert sending.wait(20)
        time.sleep(1.0)  # worker a's batch is in flight, its lease's first life long over
        reports["b"] = dossier_status.deliver_pending(bus_b, portal_b, run_id="run-b",
                                                      leases=Leases(bus_b, dossier_status.FLOW, "b", ttl=TTL))
    finally:
        a.join(30)
        post(bus_env, "portal", "/_admin/faults", {})
        for client in (portal_a, portal_b):
            client.close()
    assert (reports["a"].delivered_new, reports["a"].delivered_update) == (1, 0)
    assert (reports["b"].delivered_new, reports["b"].delivered_update, reports["b"].looked_up, reports["b"].calls,
            reports["b"].leased_elsewhere) == (0, 0, 0, 0, 1)
    assert [h["isUpdating"] for h in histories(bus_env, code)] == ["False"], "sent once"
    with bus_a.engine.connect() as conn:
        sent = conn.execute(select(func.count()).select_from(exchange_log.join(
            exchange_key, exchange_key.c.exchange_id == exchange_log.c.id)).where(
            exchange_key.c.record_key == code, exchange_log.c.operation == "DongBoHoSoMC")).scalar()
        state = conn.execute(select(outbox.c.state).where(outbox.c.id == first.id)).scalar()
    bus_a.dispose()
    bus_b.dispose()
    assert sent == 1, "one delivery in the exchange log"
    assert state == "delivered"
