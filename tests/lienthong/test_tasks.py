"""The task functions' run summary: what a step did is counted once, also when it failed half-way."""

from __future__ import annotations

import pytest
import requests

T = 10


def test_run_summary_counts_what_a_failed_attempt_delivered_before_airflow_retried_it(bus_env, monkeypatch):
    """Each task function 'adds its counts to the run summary', which summarize_run logs and the demo
    prints. The counts were added only when the step returned, so what an attempt delivered before a
    transport error (then retried by Airflow, dag_support's rule) was never counted."""
    from connectors.connection import connection_from_env
    from connectors.errors import PeerUnavailable
    from connectors.national_portal.client import NationalPortalClient
    from lienthong import tasks

    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    real = NationalPortalClient.sync_dossiers
    calls = {"n": 0}

    def flaky(self, records, *, is_updating):
        calls["n"] += 1
        if calls["n"] == 3:  # the portal goes away after two batches
            raise PeerUnavailable("national_portal DongBoHoSoMC: HTTP 503")
        return real(self, records, is_updating=is_updating)

    monkeypatch.setattr(NationalPortalClient, "sync_dossiers", flaky)
    with pytest.raises(PeerUnavailable):  # attempt 1
        tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver", batch_size=5)
    partial = tasks.open_store(connection_from_env).run_summary("dossier_status", "run-1")["counts"]
    assert partial["delivered_new"] == 10 and partial["portal_calls"] >= 2  # two batches of 5
    retry = tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver", batch_size=5)
    summary = tasks.dossier_run_summary(connection_from_env, run_id="run-1")

    held = requests.get(bus_env.portal.url + "/_state/dossiers", timeout=T).json()["dossiers"]
    assert summary["counts"]["delivered_new"] == len(held), (summary["counts"]["delivered_new"], len(held))
    assert summary["counts"]["delivered_new"] == partial["delivered_new"] + retry["delivered_new"]


def test_a_step_is_counted_once_whether_it_returns_or_fails(store):
    from dataclasses import dataclass

    from lienthong.tasks import _counted

    @dataclass
    class Report:
        sent: int = 0

        def counts(self):
            return {"sent": self.sent, "rejections": [f"r{self.sent}"]}

    def step(fail_after: int | None, report: Report | None = None):
        report = report if report is not None else Report()
        for _ in range(3):
            if report.sent == fail_after:
                raise OSError("the peer went away")
            report.sent += 1
        return report

    assert _counted(store, "f", "run", Report(), lambda r: step(None, r)) == {"sent": 3, "rejections": ["r3"]}
    with pytest.raises(OSError):
        _counted(store, "f", "run", Report(), lambda r: step(2, r))
    with pytest.raises(OSError):  # a step counted only when it finishes (the catalogue pull, a reconciliation)
        _counted(store, "f", "run", None, lambda r: step(1, r))
    assert store.run_summary("f", "run")["counts"] == {"sent": 5, "rejections": ["r3", "r2"]}
