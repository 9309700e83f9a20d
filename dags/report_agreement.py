"""report_agreement — do the systems agree? Dossiers (one-stop ↔ national portal) and paid fees
(payment platform ↔ one-stop ↔ ministry ledger), with every difference's age and last exchange.

Thin by design: each task calls one function of ``lienthong.reports.tasks``. Each check keeps its
result in the bus database under the run id (a retry replaces it); a check whose peers are not
configured records why instead of failing. The last task writes the run's results to the ministry
database (``ds_doi_soat_*``), as an HTML report and as CSV under ``$LIENTHONG_HOME/reports``.
The report's own look-ups are in the exchange log under the flow ``report_agreement``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from lienthong.dag_support import default_args, run_ids

DEFAULT_ARGS = default_args(retries=3, retry_delay=timedelta(seconds=30), max_retry_delay=timedelta(minutes=10),
                            execution_timeout=timedelta(hours=1))


@dag(
    dag_id="report_agreement",
    description="Cross-system agreement: dossier status/progress and paid fees, differences with age → ministry DB, HTML, CSV",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "out_dir": Param(None, type=["null", "string"], description="directory for HTML and CSV (default $LIENTHONG_HOME/reports)"),
    },
    tags=["lienthong", "report", "national_portal", "payment_platform", "ministry"],
    doc_md=__doc__,
)
def report_agreement():
    @task(pool="national_portal")
    def check_dossier_status() -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong.reports import tasks

        run_id, task_id = run_ids()
        return tasks.check_agreement(airflow_connection_spec, run_id=run_id, task_id=task_id, check="dossier_status")

    @task(pool="payment_platform")
    def check_fee_payment() -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong.reports import tasks

        run_id, task_id = run_ids()
        return tasks.check_agreement(airflow_connection_spec, run_id=run_id, task_id=task_id, check="fee_payment")

    @task(pool="ministry_db")
    def write_agreement_report(dossiers: dict, fees: dict) -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong.reports import tasks

        run_id, task_id = run_ids()
        return tasks.write_agreement_report(airflow_connection_spec, run_id=run_id, task_id=task_id,
                                            out_dir=get_current_context()["params"]["out_dir"])

    write_agreement_report(check_dossier_status(), check_fee_payment())


report_agreement()
