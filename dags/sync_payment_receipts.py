"""sync_payment_receipts — paid dossier fees: national payment platform → one-stop fee status and
the ministry receipt ledger, reconciled every run.

Thin by design: each task calls one function of ``lienthong.tasks``.

1. ``collect_payments`` lists the one-stop's payment requests (every one once a day, else the
   newest) and asks the payment platform (``QUERY``) about the unfinished ones that are due; paid
   ones get their receipt (``GET_BILL``, the PDF kept by hash). Every checksum is verified both
   ways; an answer that fails is dead-lettered.
2. ``update_onestop_fees`` records paid and failed transactions at the one-stop where the callback
   was lost (idempotent by transaction id: a fee is never marked paid twice). Amount mismatches
   and unknown dossiers are held for follow-up.
3. ``submit_receipts`` maps the receipts (platform → canonical → ledger) and submits them to the
   ministry ledger over SOAP; the ledger books each receipt number once. It runs after step 2,
   whose read of each dossier gives it the payer's name (one read per dossier, not one per step),
   and whatever step 2's outcome (``all_done``): a failed step 2 does not keep it from running; it
   then reads the dossiers step 2 did not reach itself.
4. ``reconcile_payments`` checks that the three systems agree, keeps the mismatches for follow-up
   and writes the reconciliation report (task log and ``$LIENTHONG_HOME/reports/payments-<run>.md``):
   every transaction in a full pass (the first run of each day, or a run triggered with
   ``full_reconciliation``), otherwise those changed since the last pass and those with open
   mismatches, so an hourly run's cost follows its new payments. It closes the run whatever
   happened before it (``all_done``), recording the outcome and which steps failed (``outcome``,
   ``failed_tasks``); after a failed step there is no pass (the next run's covers this run's
   changes) and the report says the run failed. ``fail_if_a_step_failed`` then keeps such a run
   failed. When its own pass fails for good (after its retry, or at once on an error not
   retried), its failure callback closes the run the same way, ``failed_tasks`` naming it (once:
   an attempt Airflow retries leaves the run to the retry).

Transport errors are retried by Airflow; data errors are dead-lettered (``lienthong deadletter
list --flow payment_receipts``) and never fail the run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from lienthong.dag_support import default_args, fail_if_a_step_failed, failed_steps, run_ids

DEFAULT_ARGS = default_args(retries=3, retry_delay=timedelta(minutes=2), max_retry_delay=timedelta(minutes=20),
                            execution_timeout=timedelta(minutes=50))


def close_failed_run(context) -> None:
    """``reconcile_payments`` failed for good (Airflow calls this only then, never for an attempt
    it retries): close the run as its success would have, with ``outcome`` failed and
    ``failed_tasks`` naming it (and any step that failed before it), and write the report saying
    the run failed, so its summary is not left open."""
    from connectors.hooks import airflow_connection_spec
    from lienthong import localenv, tasks

    ti = context["ti"]
    tasks.reconcile_payments(airflow_connection_spec, run_id=context["run_id"], task_id=ti.task_id,
                             report_dir=str(localenv.topology().home / "reports"),
                             failed_tasks={**failed_steps(context), ti.task_id: "failed"})


@dag(
    dag_id="sync_payment_receipts",
    description="Payment platform → one-stop fee status and ministry receipt ledger (SOAP), reconciled",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["lienthong", "payments", "payment_platform", "onestop", "ministry"],
    doc_md=__doc__,
    params={
        "full_reconciliation": Param(False, type="boolean",
                                     description="list every one-stop payment request and reconcile every transaction "
                                                 "now, not only the newest requests and what changed since the last "
                                                 "pass (both also run in full by themselves once a day)"),
    },
)
def sync_payment_receipts():
    @task(pool="payment_platform")
    def collect_payments() -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = run_ids()
        full = bool(get_current_context()["params"].get("full_reconciliation")) or None  # None: daily by itself
        return tasks.collect_payments(airflow_connection_spec, run_id=run_id, task_id=task_id, full_listing=full)

    @task(pool="onestop")
    def update_onestop_fees(collected: dict) -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = run_ids()
        return tasks.update_onestop_fees(airflow_connection_spec, run_id=run_id, task_id=task_id)

    @task(pool="ministry_ledger", trigger_rule="all_done")
    def submit_receipts() -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = run_ids()
        return tasks.submit_payment_receipts(airflow_connection_spec, run_id=run_id, task_id=task_id)

    @task(pool="ministry_ledger", retries=1, trigger_rule="all_done", on_failure_callback=close_failed_run)
    def reconcile_payments(fees: dict | None, receipts: dict | None) -> dict:  # None: that step failed
        from connectors.hooks import airflow_connection_spec
        from lienthong import localenv, tasks

        run_id, task_id = run_ids()
        full = bool(get_current_context()["params"].get("full_reconciliation")) or None  # None: daily by itself
        return tasks.for_xcom(tasks.reconcile_payments(airflow_connection_spec, run_id=run_id, task_id=task_id,
                                                       report_dir=str(localenv.topology().home / "reports"),
                                                       full=full, failed_tasks=failed_steps()))

    collected = collect_payments()
    fees = update_onestop_fees(collected)
    receipts = submit_receipts()
    fees >> receipts
    reconcile_payments(fees, receipts)
    [collected, fees, receipts] >> fail_if_a_step_failed()


sync_payment_receipts()
