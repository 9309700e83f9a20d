"""sync_procedure_catalogue — the national catalogue of administrative procedures to the one-stop
system and the ministry replica, as diffs.

Thin by design: each task calls one function of ``lienthong.tasks``. The pull normalises every
procedure and diffs it against the snapshot kept in the bus database; each destination then gets
only what it does not hold yet (one-stop over REST, ministry replica over SQL, one transaction
per batch). Malformed procedures are dead-lettered, never fail the run. The change report of each
run is in the summary task's log and under ``$LIENTHONG_HOME/reports``. The summary task closes
the run whatever happened before it, recording the outcome and which steps failed (``outcome``,
``failed_tasks``; the report says so at its top); ``fail_if_a_step_failed`` then keeps such a run
failed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from lienthong.dag_support import default_args, fail_if_a_step_failed, failed_steps, run_ids

DEFAULT_ARGS = default_args(retries=3, retry_delay=timedelta(minutes=1), max_retry_delay=timedelta(minutes=30),
                            execution_timeout=timedelta(hours=2))


@dag(
    dag_id="sync_procedure_catalogue",
    description="National TTHC catalogue → one-stop catalogue and ministry replica (diffs, change report)",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["lienthong", "catalogue", "national_portal", "ministry"],
    doc_md=__doc__,
)
def sync_procedure_catalogue():
    @task(pool="national_portal")
    def pull_catalogue() -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = run_ids()
        return tasks.pull_procedure_catalogue(airflow_connection_spec, run_id=run_id, task_id=task_id)

    @task(pool="onestop")
    def push_to_onestop(pulled: dict) -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = run_ids()
        return tasks.push_procedure_catalogue(airflow_connection_spec, run_id=run_id, task_id=task_id,
                                              destination="onestop")

    @task(pool="ministry_db")
    def push_to_ministry(pulled: dict) -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = run_ids()
        return tasks.push_procedure_catalogue(airflow_connection_spec, run_id=run_id, task_id=task_id,
                                              destination="ministry")

    @task(retries=1, trigger_rule="all_done")
    def summarize_catalogue_run(onestop: dict | None, ministry: dict | None) -> dict:  # None: that push failed
        from connectors.hooks import airflow_connection_spec
        from lienthong import localenv, tasks

        run_id, _ = run_ids()
        return tasks.for_xcom(tasks.catalogue_run_summary(airflow_connection_spec, run_id=run_id,
                                                          report_dir=str(localenv.topology().home / "reports"),
                                                          failed_tasks=failed_steps()))

    pulled = pull_catalogue()
    onestop, ministry = push_to_onestop(pulled), push_to_ministry(pulled)
    summarize_catalogue_run(onestop, ministry)
    [pulled, onestop, ministry] >> fail_if_a_step_failed()


sync_procedure_catalogue()
