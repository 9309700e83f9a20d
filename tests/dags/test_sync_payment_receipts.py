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
