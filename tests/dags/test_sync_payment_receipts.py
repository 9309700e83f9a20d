"""sync_payment_receipts through Airflow (dag.test on a migrated SQLite metadata DB) against the
one-stop, payment-platform and ledger stand-ins as real servers: the first run's reconciliation is
a full pass, the next one's a pass over what changed, and the ``full_reconciliation`` param forces
a full one."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select

from connectors.connection import connection_from_env
from lienthong import tasks
from lienthong.flows import payment_receipts
from lienthong.store import exchange_log
from tests.lienthong.flows.test_payment_receipts import (
    Peers,
    assert_three_systems_agree,
)

pytestmark = pytest.mark.airflow


@pytest.fixture
def peers(tmp_path, monkeypatch):
    peers = Peers(tmp_path / "mocks")
    for conn_id, conn in peers.connections(tmp_path).items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    try:
        yield peers
    finally:
        peers.stop()


def test_the_payment_dag_reconciles_fully_first_then_what_changed_then_fully_when_asked(airflow_db, peers,
                                                                                        monkeypatch):
    from pathlib import Path

    from airflow.models import DagBag

    # a pass re-checks the changes of the 2 s before the latest the last pass saw; these runs follow
    # each other within a second (dag.test runs the tasks in this process)
    monkeypatch.setattr(payment_receipts, "RECHECK_OVERLAP", timedelta(0))

    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags")).dags["sync_payment_receipts"]
    store = tasks.open_store(connection_from_env)

    def counts(run) -> dict:
        assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
        return store.run_summary(payment_receipts.FLOW, run.run_id)["counts"]

    run = dag.test()
    first = counts(run)
    assert (first["reconciled_scope"], first["reconciled_paid"], first["mismatches"]) == ("full", 12, 0)
    assert_three_systems_agree(peers)
    # the ledger step ran after the fee step and took the payers it read: one read per dossier
    with store.engine.connect() as conn:
        asked = Counter(conn.execute(select(exchange_log.c.operation).where(exchange_log.c.run_id == run.run_id))
                        .scalars())
    assert asked["dossier"] == first["fees_updated"] == 20 and asked["fees"] == 0
    peers.settle(3, outcome="paid")
    second = counts(dag.test())
    assert second["reconciled_scope"] == "changed" and second["found_paid"] == 3
    assert second["reconciled_paid"] == 3 and second["mismatches"] == 0
    third = counts(dag.test(run_conf={"full_reconciliation": True}))
    assert (third["reconciled_scope"], third["reconciled_paid"], third["mismatches"]) == ("full", 15, 0)
    assert_three_systems_agree(peers)


def test_a_payment_run_whose_ledger_step_fails_is_closed_unreconciled_and_the_next_run_reconciles(
        airflow_db, peers, tmp_path, monkeypatch):
    """The ministry ledger does not answer (a closed port): the ledger step fails, and the closing
    task, which would have failed on the ledger too, closes the run all the same with what it did
    and which step failed, without a pass (its report says the run failed); the DAG run stays
    failed. The next run, the ledger back, books the receipts and reconciles in full: nothing lost."""
    import socket

    from tests.dags.test_sync_dossier_status import failing_fast

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    ledger = peers.connections(tmp_path)["ministry_ledger_default"]
    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_LEDGER_DEFAULT",
                       json.dumps({**ledger, "port": closed, "extra": {**ledger["extra"], "max_attempts": 1}}))

    dag = failing_fast("sync_payment_receipts")
    run = dag.test()
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "collect_payments": "success", "update_onestop_fees": "success", "submit_receipts": "failed",
        "reconcile_payments": "success", "fail_if_a_step_failed": "failed"}
    assert run.state == "failed"
    store = tasks.open_store(connection_from_env)
    summary = store.run_summary(payment_receipts.FLOW, run.run_id)
    counts = summary["counts"]
    assert summary["finished_at"] is not None
    assert (counts["outcome"], counts["failed_tasks"]) == ("failed", {"submit_receipts": "failed"})
    assert counts["fees_updated"] == 20 and counts.get("receipts_accepted", 0) == 0
    assert "reconciled_scope" not in counts  # no pass
    (report,) = (tmp_path / "home" / "reports").glob("payments-*.md")
    text = report.read_text()
    assert "**This run failed**: submit_receipts failed. The three systems were not reconciled" in text
    assert "Paid transactions checked" not in text

    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_LEDGER_DEFAULT", json.dumps(ledger))
    again = dag.test()
    assert again.state == "success", {ti.task_id: ti.state for ti in again.get_task_instances()}
    counts = store.run_summary(payment_receipts.FLOW, again.run_id)["counts"]
    assert (counts["outcome"], counts["failed_tasks"]) == ("succeeded", {})
    assert (counts["reconciled_scope"], counts["reconciled_paid"], counts["mismatches"]) == ("full", 12, 0)
    assert_three_systems_agree(peers)


def test_a_payment_run_whose_own_reconciliation_fails_is_closed_failed_once(airflow_db, peers, tmp_path,
                                                                             monkeypatch):
    """Every step succeeds but the closing task's own pass fails (the ledger goes away just then):
    the run failed, yet its summary stayed open (finished_at empty, no outcome) and no report was
    written. Its failure callback now closes it, failed_tasks naming reconcile_payments, and writes
    the report saying so, once; an attempt Airflow retries closes nothing (the retry closes the run,
    as succeeded, once)."""
    from connectors.errors import PeerUnavailable
    from tests.dags.test_sync_dossier_status import failing_fast

    real = payment_receipts.reconcile
    closes: list[tuple[str, dict]] = []
    close = tasks._close_run
    monkeypatch.setattr(tasks, "_close_run", lambda store, flow, run_id, failed: (
        closes.append((run_id, dict(failed or {}))), close(store, flow, run_id, failed))[-1])
    fail = {"times": 1}

    def reconcile(*args, **kwargs):
        if fail["times"]:
            fail["times"] -= 1
            raise PeerUnavailable("ministry_ledger lookup: connection failed", peer="ministry_ledger",
                                  operation="lookup")
        return real(*args, **kwargs)

    monkeypatch.setattr(payment_receipts, "reconcile", reconcile)
    run = failing_fast("sync_payment_receipts").test()
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "collect_payments": "success", "update_onestop_fees": "success", "submit_receipts": "success",
        "reconcile_payments": "failed", "fail_if_a_step_failed": "skipped"}
    assert run.state == "failed"
    store = tasks.open_store(connection_from_env)
    summary = store.run_summary(payment_receipts.FLOW, run.run_id)
    counts = summary["counts"]
    assert summary["finished_at"] is not None
    assert (counts["outcome"], counts["failed_tasks"]) == ("failed", {"reconcile_payments": "failed"})
    assert counts["fees_updated"] == 20 and "reconciled_scope" not in counts
    assert closes == [(run.run_id, {"reconcile_payments": "failed"})]
    (report,) = (tmp_path / "home" / "reports").glob("payments-*.md")
    assert "**This run failed**: reconcile_payments failed. The three systems were not reconciled" in \
        report.read_text()

    # with its retry: the first attempt fails, nothing is closed then; the retry's pass closes it once
    closes.clear()
    fail["times"] = 1
    dag = failing_fast("sync_payment_receipts")
    dag.get_task("reconcile_payments").retries = 1
    dag.get_task("reconcile_payments").retry_delay = timedelta(0)
    again = dag.test()
    assert again.state == "success", {ti.task_id: ti.state for ti in again.get_task_instances()}
    counts = store.run_summary(payment_receipts.FLOW, again.run_id)["counts"]
    assert (counts["outcome"], counts["failed_tasks"], counts["reconciled_scope"]) == ("succeeded", {}, "full")
    assert closes == [(again.run_id, {})]
