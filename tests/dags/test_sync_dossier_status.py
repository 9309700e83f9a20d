"""sync_dossier_status through Airflow (dag.test on a migrated SQLite metadata DB) against the
stand-ins as real servers."""

from __future__ import annotations

from pathlib import Path

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
        "deliver_progress_entries": "success", "summarize_run": "success", "fail_if_a_step_failed": "skipped"}

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
    assert (summary["counts"]["outcome"], summary["counts"]["failed_tasks"]) == ("succeeded", {})
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


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failing_fast(dag_id: str):
    """The DAG with every retry taken away: a step that fails, fails the run at once."""
    from pathlib import Path

    from airflow.models import DagBag

    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags")).dags[dag_id]
    for t in dag.tasks:
        t.retries = 0
    return dag


def test_a_run_whose_delivery_fails_is_closed_with_its_failed_steps_and_stays_failed(airflow_db, bus_env,
                                                                                     monkeypatch):
    """The portal does not answer (a closed port) and the delivery step fails after its retries: the
    run summary is closed all the same, with what the run did (the events it staged, the failed
    attempt in the exchange log) and which steps failed, and the DAG run stays failed."""
    import json

    portal = bus_env.connections(Path("unused"))["national_portal_default"]
    portal["port"] = closed_port()
    portal["extra"] = {**portal["extra"], "max_attempts": 1}
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps(portal))

    run = failing_fast("sync_dossier_status").test()
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "stage_dossier_changes": "success", "deliver_dossier_statuses": "failed",
        "deliver_progress_entries": "upstream_failed", "summarize_run": "success",
        "fail_if_a_step_failed": "failed"}
    assert run.state == "failed"

    store = tasks.open_store(connection_from_env)
    summary = store.run_summary(dossier_status.FLOW, run.run_id)
    assert summary["finished_at"] is not None
    assert summary["counts"]["outcome"] == "failed"
    assert summary["counts"]["failed_tasks"] == {"deliver_dossier_statuses": "failed",
                                                 "deliver_progress_entries": "upstream_failed"}
    # what it did before: the feed staged (the seeded world's 40 dossiers), the two defective ones
    # rejected by the mapping before the portal was called, nothing delivered
    counts = summary["counts"]
    assert (counts["staged"], counts["considered"], counts["rejected"], counts["delivered_new"]) == (84, 40, 2, 0)
    with store.engine.connect() as conn:
        rows = conn.execute(select(exchange_log.c.task_id, exchange_log.c.peer, exchange_log.c.outcome)
                            .where(exchange_log.c.run_id == run.run_id)).all()
    portal_rows = [r for r in rows if r.peer == "national_portal"]
    assert len(portal_rows) == 1 and portal_rows[0].task_id == "deliver_dossier_statuses"
    assert summary["exchanges"] == len(rows)


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
        "summarize_catalogue_run": "success", "fail_if_a_step_failed": "skipped"}
    state = requests.get(bus_env.portal.url + "/_state/catalogue", timeout=T).json()
    published = state["counts"]["published"] - sum(1 for m in state["malformed"] if m["published"])
    counts = tasks.open_store(connection_from_env).run_summary(catalogue.FLOW, run.run_id)["counts"]
    assert counts["added"] == counts["onestop_upserted"] == counts["ministry_upserted"] == published
    replica = MinistryReplica.from_connection(connection_from_env("ministry_db_default"))
    assert len(replica.procedures(published_only=True)) == published
    replica.dispose()
    reports = list((tmp_path / "home" / "reports").glob("catalogue-*.md"))
    assert len(reports) == 1 and f"{published} added" in reports[0].read_text()


@pytest.mark.catalogue_size(200)
def test_a_catalogue_run_whose_pull_fails_is_closed_and_reported_failed(airflow_db, bus_env, tmp_path, monkeypatch):
    """The national portal does not answer: the pull fails, neither push runs, and the run is
    closed all the same, its change report saying it failed and why; the DAG run stays failed."""
    import json

    from lienthong.flows import catalogue

    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    portal = bus_env.connections(Path("unused"))["national_portal_default"]
    portal["port"] = closed_port()
    portal["extra"] = {**portal["extra"], "max_attempts": 1}
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps(portal))

    run = failing_fast("sync_procedure_catalogue").test()
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "pull_catalogue": "failed", "push_to_onestop": "upstream_failed", "push_to_ministry": "upstream_failed",
        "summarize_catalogue_run": "success", "fail_if_a_step_failed": "failed"}
    assert run.state == "failed"
    summary = tasks.open_store(connection_from_env).run_summary(catalogue.FLOW, run.run_id)
    assert summary["finished_at"] is not None
    assert summary["counts"] == {"outcome": "failed", "failed_tasks": {
        "pull_catalogue": "failed", "push_to_ministry": "upstream_failed", "push_to_onestop": "upstream_failed"}}
    assert summary["exchanges"] == 1  # the log-in the portal never answered
    (report,) = (tmp_path / "home" / "reports").glob("catalogue-*.md")
    assert ("**This run failed**: pull_catalogue failed, push_to_ministry did not run (a step before it failed), "
            "push_to_onestop did not run (a step before it failed).") in report.read_text()
