"""sync_dossier_status — dossier statuses from the one-stop system to the national portal.

Thin by design: schedule, retries, pools and wiring only. Each task calls one function of
``lienthong.tasks``; connections are resolved by id through Airflow (``onestop_default``,
``national_portal_default``, ``lienthong_db``). Transport failures retry with back-off; errors a
retry cannot fix (bad credentials, misconfiguration) fail at once. Records the portal refuses
never fail the task: they go to dead letters.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, get_current_context, task

RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(exception="connectors.errors.FatalConnectorError", action=RetryAction.FAIL),
        RetryRule(exception="connectors.errors.ConfigurationError", action=RetryAction.FAIL),
    ]
)

DEFAULT_ARGS = {
    "owner": "lienthong",
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=30),
    "retry_policy": RETRY_POLICY,
}


def _ids() -> tuple[str, str]:
    ctx = get_current_context()
    return ctx["run_id"], ctx["ti"].task_id


@dag(
    dag_id="sync_dossier_status",
    description="One-stop dossiers → national portal DongBoHoSoMC (outbox, exactly-once effect, exchange log)",
    schedule=timedelta(minutes=10),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"batch_size": Param(50, type="integer", minimum=1, maximum=500,
                                description="dossiers per DongBoHoSoMC call")},
    tags=["lienthong", "dossier", "national_portal"],
    doc_md=__doc__,
)
def sync_dossier_status():
    @task(pool="onestop")
    def stage_dossier_changes() -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = _ids()
        return tasks.stage_dossier_changes(airflow_connection_spec, run_id=run_id, task_id=task_id)

    @task(pool="national_portal")
    def deliver_dossier_statuses(staged: dict) -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, task_id = _ids()
        batch_size = int(get_current_context()["params"]["batch_size"])
        return tasks.deliver_dossier_statuses(airflow_connection_spec, run_id=run_id, task_id=task_id,
                                              batch_size=batch_size)

    @task(retries=1)
    def summarize_run(delivered: dict) -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong import tasks

        run_id, _ = _ids()
        return tasks.dossier_run_summary(airflow_connection_spec, run_id=run_id)

    summarize_run(deliver_dossier_statuses(stage_dossier_changes()))


sync_dossier_status()
