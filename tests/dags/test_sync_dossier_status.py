"""sync_dossier_status through Airflow (dag.test on a migrated SQLite metadata DB) against the
stand-ins as real servers."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import select

from connectors.connection import connection_from_env
from lienthong import tasks
from lienthong.flows import dossier_status
from lienthong.mapping import load_mapping
from lienthong.store import exchange_log

pytestmark = pytest.mark.airflow
T = 10


@pytest.fixture(scope="module")
def dag():
    from pathlib import Path

    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    return bag.dags["sync_dossier_status"]


def _state(standins, path):
    return requests.get(standins.portal.url + path, timeout=T).json()


def test_two_runs_through_airflow_deliver_everything_once(airflow_db, dag, bus_env):
    first = dag.test()
    assert first.state == "success"
    assert {ti.task_id: ti.state for ti in first.get_task_instances()} == {
        "stage_dossier_changes": "success", "deliver_dossier_statuses": "success",
        "deliver_progress_entries": "success", "summarize_run": "success"}

    onestop = {d["dossierNo"]: d for d in requests.get(bus_env.onestop.url + "/_state/dossiers",
                                                       timeout=T).json()["dossiers"]}
    defective = {d["dossierNo"] for d in requests.get(bus_env.onestop.url + "/_state", timeout=T).json()["defective"]}
    mapping = load_mapping(dossier_status.MAPPING)
    expected = {c: mapping.apply(d) for c, d in onestop.items() if c not in defective}
    held = {d["MaHoSo"]: d for d in _state(bus_env, "/_state/dossiers")["dossiers"]}
    assert held == expected

    store = tasks.open_store(connection_from_env)
    summary = store.run_summary(dossier_status.FLOW, first.run_id)
    assert summary["counts"]["delivered_new"] == len(expected)
    assert summary["counts"]["rejected"] == len(defective)
    assert summary["finished_at"] is not None
    with store.engine.connect() as conn:
        rows = conn.execute(select(exchange_log.c.task_id, exchange_log.c.operation, exchange_log.c.peer)
                            .where(exchange_log.c.run_id == first.run_id)).all()
    assert summary["exchanges"] == len(rows) > 0
    # one exchange-log row per HTTP exchange: the portal counted exactly the calls we logged
    portal_calls = sum(n for outcomes in _state(bus_env, "/_state/calls").values() for n in outcomes.values())
    assert portal_calls == sum(1 for r in rows if r.peer == "national_portal")
    assert {r.task_id for r in rows} == {"stage_dossier_changes", "deliver_dossier_statuses",
                                         "deliver_progress_entries"}

    calls_before = _state(bus_env, "/_state/calls")
    second = dag.test()
    assert second.state == "success" and second.run_id != first.run_id
    assert _state(bus_env, "/_state/calls").get("DongBoHoSoMC") == calls_before.get("DongBoHoSoMC")
    counts = store.run_summary(dossier_status.FLOW, second.run_id)["counts"]
    assert counts["staged"] == 0 and counts["portal_calls"] == 0 and counts["progress_calls"] == 0

    moved = requests.post(bus_env.onestop.url + "/_admin/advance", json={"new": 0, "changes": 4}, timeout=T).json()
    changed = {c["dossierNo"] for c in moved["changed"]} - defective
    third = dag.test()
    assert third.state == "success"
    counts = store.run_summary(dossier_status.FLOW, third.run_id)["counts"]
    assert counts["delivered_update"] == len(changed) and counts["delivered_new"] == 0
    held = {d["MaHoSo"]: d for d in _state(bus_env, "/_state/dossiers")["dossiers"]}
    for code in changed:
        assert held[code] == mapping.apply(onestop_current(bus_env, code)), code


def onestop_current(standins, code):
    items = requests.get(standins.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]
    return next(d for d in items if d["dossierNo"] == code)


@pytest.mark.catalogue_size(200)
def test_catalogue_dag_through_airflow(airflow_db, bus_env, tmp_path, monkeypatch):
    from pathlib import Path

    from airflow.models import DagBag

    from connectors.ministry_db.replica import MinistryReplica
    from lienthong.flows import catalogue

    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags")).dags["sync_procedure_catalogue"]
    run = dag.test()
    assert run.state == "success"
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "pull_catalogue": "success", "push_to_onestop": "success", "push_to_ministry": "success",
        "summarize_catalogue_run": "success"}
    state = requests.get(bus_env.portal.url + "/_state/catalogue", timeout=T).json()
    published = state["counts"]["published"] - sum(1 for m in state["malformed"] if m["published"])
    counts = tasks.open_store(connection_from_env).run_summary(catalogue.FLOW, run.run_id)["counts"]
    assert counts["added"] == counts["onestop_upserted"] == counts["ministry_upserted"] == published
    replica = MinistryReplica.from_connection(connection_from_env("ministry_db_default"))
    assert len(replica.procedures(published_only=True)) == published
    replica.dispose()
    reports = list((tmp_path / "home" / "reports").glob("catalogue-*.md"))
    assert len(reports) == 1 and f"{published} added" in reports[0].read_text()
