"""sync_dossier_status — dossier statuses and progress from the one-stop system to the national portal.

Thin by design: schedule, retries, pools and wiring only. Each task calls one function of
``lienthong.tasks``; connections are resolved by id through Airflow (``onestop_default``,
``national_portal_default``, ``lienthong_db``). Transport failures retry with back-off; errors a
retry cannot fix (bad credentials, misconfiguration) fail at once. Records the portal refuses
never fail the task: they go to dead letters (``lienthong deadletter list|show|replay``).

Backfill: trigger with ``feed_from="beginning"`` (or a cursor) to re-read the one-stop change
feed — events staged before go back in line and payloads the portal acknowledged are not re-sent —
and ``resend_acknowledged=true`` to send everything again after the portal lost data;
``window_from``/``window_to`` stage the current snapshot of every dossier modified in that window.

``summarize_run`` closes the run's summary in the bus database whatever happened before it (a
step that failed after its retries included), recording the outcome and which steps failed
(``outcome``, ``failed_tasks``); ``fail_if_a_step_failed`` then keeps such a run failed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from lienthong.dag_support import default_args, fail_if_a_step_failed, failed_steps, run_ids

DEFAULT_ARGS = default_args(retries=3, retry_delay=timedelta(seconds=30), max_retry_delay=timedelta(minutes=10),
                            execution_timeout=timedelta(minutes=30))


@dag(
    dag_id="sync_dossier_status",
    description="One-stop dossiers → national portal DongBoHoSoMC (outbox, exactly-once effect, exchange log)",
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "batch_size": Param(None, type=["null", "integer"], minimum=1, maximum=500,
                            description="dossiers per DongBoHoSoMC call (default: the connection's extra.batch_size, else 50)"),
        "feed_from": Param(None, type=["null", "string"],
                           description='backfill: "beginning" or a cursor to re-read the change feed from'),
        "resend_acknowledged": Param(False, type="boolean",
                                     description="backfill: re-send payloads the portal already acknowledged"),
        "window_from": Param(None, type=["null", "string"],
                             description="backfill window: dossiers modified from (ISO 8601 with offset, inclusive)"),
        "window_to": Param(None, type=["null", "string"],
                           description="backfill window: dossiers modified before (ISO 8601 with offset, exclusive)"),
    },
    tags=["lienthong", "dossier", "national_portal"],
    doc_md=__doc__,
)
def sync_dossier_status():
    @task(pool="onestop")
    def stage_dossier_changes() -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = run_ids()
        params = get_current_context()["params"]
        return tasks.stage_dossier_changes(airflow_connection_spec, run_id=run_id, task_id=task_id,
                                           feed_from=params["feed_from"], window_from=params["window_from"],
                                           window_to=params["window_to"])

    @task(pool="national_portal")
    def deliver_dossier_statuses(staged: dict) -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = run_ids()
        params = get_current_context()["params"]
        return tasks.deliver_dossier_statuses(airflow_connection_spec, run_id=run_id, task_id=task_id,
                                              batch_size=params["batch_size"],
                                              resend_acknowledged=params["resend_acknowledged"])

    @task(pool="national_portal")
    def deliver_progress_entries(delivered: dict) -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = run_ids()
        return tasks.deliver_dossier_progress(airflow_connection_spec, run_id=run_id, task_id=task_id)

    @task(retries=1, trigger_rule="all_done")
    def summarize_run(progress: dict | None) -> dict:  # None: the progress step did not succeed
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, _ = run_ids()
        return tasks.for_xcom(tasks.dossier_run_summary(airflow_connection_spec, run_id=run_id,
                                                        failed_tasks=failed_steps()))

    staged = stage_dossier_changes()
    delivered = deliver_dossier_statuses(staged)
    progress = deliver_progress_entries(delivered)
    summarize_run(progress)
    [staged, delivered, progress] >> fail_if_a_step_failed()


sync_dossier_status()
