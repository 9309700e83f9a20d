"""Every DAG parses, and each task is set up as the design asks (retries, timeouts, pools)."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.models import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "sync_dossier_status" in dagbag.dags


def test_tasks_have_retries_timeouts_and_known_pools(dagbag):
    pools = set(json.loads((REPO / "config" / "pools.json").read_text())) | {"default_pool"}
    for dag in dagbag.dags.values():
        for t in dag.tasks:
            assert t.retries >= 1, t.task_id
            assert t.execution_timeout is not None, t.task_id
            assert t.pool in pools, (t.task_id, t.pool)


def test_every_task_retries_what_may_pass_next_time_and_fails_at_once_on_the_rest(dagbag):
    """Design §5: transport errors (an unreadable answer among them: a gateway's error page, a body
    cut short) are retried with back-off; errors a retry cannot fix fail the task at once: a record
    refused (RecordRejected: the same record is refused again; the flows dead-letter it, so one that
    reaches Airflow is a bug to read, not to retry three times) among them."""
    from airflow.sdk import RetryAction

    from connectors.errors import (
        AuthenticationFailed,
        ChecksumMismatch,
        ConfigurationError,
        PeerUnavailable,
        PeerRejected,
        ProtocolError,
        RecordRejected,
        SessionExpired,
        UnreadableAnswer,
        UnsafeXml,
    )

    retried = [PeerUnavailable("p"), SessionExpired("s"), UnreadableAnswer("u"), RuntimeError("unexpected")]
    fatal = [AuthenticationFailed("a"), ProtocolError("p"), ChecksumMismatch("c"), UnsafeXml("x"),
             ConfigurationError("c"), RecordRejected("HS-1", ()), PeerRejected("HS-2", ())]
    for dag in dagbag.dags.values():
        for t in dag.tasks:
            def decide(exc: BaseException, t=t) -> RetryAction:
                return t.retry_policy.evaluate(exc, try_number=1, max_tries=t.retries + 1).action
            assert [decide(exc) for exc in retried] == [RetryAction.DEFAULT] * len(retried), t.task_id
            assert [decide(exc) for exc in fatal] == [RetryAction.FAIL] * len(fatal), t.task_id


def test_a_peers_retry_after_paces_the_retry(dagbag):
    """A 429/503 whose Retry-After is longer than the transport waits itself raises PeerUnavailable
    carrying it: the task is retried no sooner than the peer asked (at most an hour), and a shorter
    ask leaves the task's own back-off."""
    from datetime import timedelta

    from airflow.sdk import RetryAction

    from connectors.errors import PeerUnavailable, ProtocolError

    task = dagbag.dags["sync_dossier_status"].get_task("deliver_dossier_statuses")
    policy = task.retry_policy

    def asking(seconds):
        exc = PeerUnavailable("national_portal DongBoHoSoMC: HTTP 429")
        exc.retry_after = seconds
        return exc

    decision = policy.evaluate(asking(600), try_number=1, max_tries=4)
    assert decision.action is RetryAction.RETRY and decision.retry_delay == timedelta(seconds=600)
    assert "600 s" in decision.reason
    assert policy.evaluate(asking(86_400), try_number=1, max_tries=4).retry_delay == timedelta(hours=1)
    assert policy.evaluate(asking(5), try_number=1, max_tries=4).action is RetryAction.DEFAULT  # own 30 s back-off
    assert policy.evaluate(asking(None), try_number=1, max_tries=4).action is RetryAction.DEFAULT
    fatal = ProtocolError("p")
    fatal.retry_after = 600
    assert policy.evaluate(fatal, try_number=1, max_tries=4).action is RetryAction.FAIL


def test_dossier_dag_shape(dagbag):
    dag = dagbag.dags["sync_dossier_status"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "stage_dossier_changes", "deliver_dossier_statuses", "deliver_progress_entries", "summarize_run",
        "fail_if_a_step_failed"]
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.get_task("stage_dossier_changes").pool == "onestop"
    assert dag.get_task("deliver_dossier_statuses").pool == "national_portal"
    assert dag.get_task("deliver_progress_entries").pool == "national_portal"
    from datetime import timedelta

    assert dag.schedule == timedelta(minutes=5)
    assert set(dag.params.keys()) == {"batch_size", "feed_from", "resend_acknowledged", "window_from",
                                      "window_to"}


def test_payment_dag_shape(dagbag):
    dag = dagbag.dags["sync_payment_receipts"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == ["collect_payments", "update_onestop_fees", "submit_receipts", "reconcile_payments",
                     "fail_if_a_step_failed"]
    # the ledger step takes the payers the fee step read, and runs whatever the fee step's outcome
    assert dag.get_task("submit_receipts").upstream_task_ids == {"update_onestop_fees"}
    assert dag.get_task("submit_receipts").trigger_rule == "all_done"
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.get_task("collect_payments").pool == "payment_platform"
    assert dag.get_task("update_onestop_fees").pool == "onestop"
    assert dag.get_task("submit_receipts").pool == "ministry_ledger"
    assert dag.get_task("reconcile_payments").upstream_task_ids == {"update_onestop_fees", "submit_receipts"}
    assert dag.schedule == "@hourly"


@pytest.mark.parametrize("dag_id, closer, steps", [
    ("sync_dossier_status", "summarize_run",
     {"stage_dossier_changes", "deliver_dossier_statuses", "deliver_progress_entries"}),
    ("sync_procedure_catalogue", "summarize_catalogue_run", {"pull_catalogue", "push_to_onestop", "push_to_ministry"}),
    ("sync_payment_receipts", "reconcile_payments", {"collect_payments", "update_onestop_fees", "submit_receipts"}),
])
def test_a_run_is_closed_whatever_its_steps_did_and_a_failed_step_fails_the_run(dagbag, dag_id, closer, steps):
    """The closing task only ran when every step before it succeeded, so a run whose step failed
    after its retries kept its summary open (no finished_at, nothing saying it failed). It runs
    whatever happened (all_done); the run's other last task, fail_if_a_step_failed, watches every
    step (one_failed) and fails the run when one failed, since the closer's success would make it green."""
    dag = dagbag.dags[dag_id]
    assert dag.get_task(closer).trigger_rule == "all_done"
    watcher = dag.get_task("fail_if_a_step_failed")
    assert watcher.trigger_rule == "one_failed" and watcher.upstream_task_ids == steps
    assert {t.task_id for t in dag.tasks if not t.downstream_task_ids} == {closer, "fail_if_a_step_failed"}
    assert set(dag.task_dict) == steps | {closer, "fail_if_a_step_failed"}


def test_report_dags_are_in_the_bag(dagbag):
    assert {"report_kpi", "report_agreement"} <= set(dagbag.dags)
    kpi, agreement = dagbag.dags["report_kpi"], dagbag.dags["report_agreement"]
    assert [t.task_id for t in kpi.topological_sort()] == ["refresh_dossier_facts", "write_kpi_report"]
    assert agreement.get_task("write_agreement_report").upstream_task_ids == {"check_dossier_status",
                                                                              "check_fee_payment"}
    assert agreement.get_task("check_dossier_status").pool == "national_portal"
    assert kpi.catchup is False and agreement.catchup is False


def test_summary_tasks_return_small_xcoms_however_many_records_were_refused(dagbag, monkeypatch):
    """The summary tasks returned the whole run summary to XCom: every rejection with its errors, and
    the reconciliation every open mismatch, so a run refusing thousands of records pushed megabytes
    through the Execution API into Airflow's database. They return each list as its length now; the
    records themselves are in the bus database, the task log and the report."""
    import inspect

    from lienthong import tasks

    rejection = {"record_key": "HS-1", "stage": "map", "errors": [{"field": "MaHoSo", "rule": "required",
                                                                   "message": "MaHoSo is required"}]}
    big = {"run_id": "r", "exchanges": 7, "report_path": "/tmp/r.md",
           "counts": {"staged": 3, "rejections": [rejection] * 5000, "progress_rejections": [rejection] * 10},
           "open_mismatches": [{"kind": "unpaid", "record_key": "T-1", "dossier_code": "HS-1",
                                "receipt_no": None}] * 5000}
    for name in ("dossier_run_summary", "catalogue_run_summary", "reconcile_payments"):
        monkeypatch.setattr(tasks, name, lambda *args, **kwargs: big)
    for dag_id, task_id in (("sync_dossier_status", "summarize_run"),
                            ("sync_procedure_catalogue", "summarize_catalogue_run"),
                            ("sync_payment_receipts", "reconcile_payments")):
        callable_ = dagbag.dags[dag_id].get_task(task_id).python_callable
        monkeypatch.setitem(callable_.__globals__, "run_ids", lambda: ("r", task_id))
        monkeypatch.setitem(callable_.__globals__, "failed_steps", lambda: {})
        monkeypatch.setitem(callable_.__globals__, "get_current_context",
                            lambda: {"params": {"full_reconciliation": False}})
        returned = callable_(*[{}] * len(inspect.signature(callable_).parameters))
        assert len(json.dumps(returned)) < 500, task_id
        assert returned["counts"] == {"staged": 3, "rejections": 5000, "progress_rejections": 10}, task_id
        assert returned["exchanges"] == 7 and returned["report_path"] == "/tmp/r.md", task_id
        assert returned["open_mismatches"] == 5000, task_id


def test_the_kpi_dags_ministry_writes_are_logged_under_its_run(dagbag, monkeypatch):
    """report_kpi's ministry upserts were recorded in the exchange log under 'kpi__<from>__<to>' with
    no task id, while its refresh step used the Airflow run id: `lienthong exchanges --run-id <run>`
    of a KPI run missed its writes. The write task passes its run and task ids on."""
    from lienthong.reports import tasks

    seen = {}
    monkeypatch.setattr(tasks, "kpi_report", lambda resolve, **kwargs: seen.update(kwargs) or {"flagged": 0})
    callable_ = dagbag.dags["report_kpi"].get_task("write_kpi_report").python_callable
    monkeypatch.setitem(callable_.__globals__, "run_ids", lambda: ("scheduled__2026-11-30", "write_kpi_report"))
    monkeypatch.setitem(callable_.__globals__, "get_current_context", lambda: {
        "run_id": "scheduled__2026-11-30", "params": {"date_from": None, "date_to": None, "thresholds": [0.5],
                                                      "out_dir": None}})
    callable_({})
    assert (seen["run_id"], seen["task_id"]) == ("scheduled__2026-11-30", "write_kpi_report")


def test_the_agreement_dags_ministry_writes_carry_its_task(dagbag, monkeypatch):
    """report_agreement's ministry writes were recorded under the run with no task id (the write task
    dropped the one run_ids gave it)."""
    from lienthong.reports import tasks

    seen = {}
    monkeypatch.setattr(tasks, "write_agreement_report", lambda resolve, **kwargs: seen.update(kwargs) or {})
    callable_ = dagbag.dags["report_agreement"].get_task("write_agreement_report").python_callable
    monkeypatch.setitem(callable_.__globals__, "run_ids", lambda: ("manual__2026-11-30", "write_agreement_report"))
    monkeypatch.setitem(callable_.__globals__, "get_current_context", lambda: {"params": {"out_dir": None}})
    callable_({}, {})
    assert (seen["run_id"], seen["task_id"]) == ("manual__2026-11-30", "write_agreement_report")
